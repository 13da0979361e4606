"""Expand (outpaint) a picture to another shape or size: the new area generated, the original kept exactly.

1. :func:`fit` places the original in the new frame at the largest scale that shows all of it (no crop), at an
   anchor (``center``, ``top``, ``bottom-left``, ...).
2. :func:`expand_canvas` makes the frame: the original in its box, the new area pre-filled by smearing the
   original's edge colours outward (the engine's A1111 "fill"), and the mask of the new area: 255 = generate,
   0 over every original pixel, with the seam feathered over ``feather`` pixels on the new side only.
3. The new area is generated at a work size (:func:`work_size`: the new shape, large enough that the original
   is not reduced, at most ``max_side`` pixels long) through a batch backend.
4. :func:`recomposite` brings the generation to the final size and lays the original back through the mask:
   inside its box the result is the original (resized by the fit scale: itself when that scale is 1), and the
   generated area fades in from the seam.

Channel sizes (square 1080x1080, story 1080x1920, banner 1200x628, ...) are data: ``channels.toml`` beside this
module, or a file of the same form.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from atelier.campaign.ad.spec import MAX_CHANNEL_SIDE, MIN_CHANNEL_SIDE, Channel, parse_channel
from atelier.campaign.batch import Backend
from atelier.campaign.product.inpaint import InpaintSettings, generate
from atelier.campaign.product.placement import Box
from atelier.config_models import closest, unknown_key_error
from atelier.engine import composite_over_original, fill_masked
from atelier.errors import AtelierError, NotFoundError
from atelier.files import read_toml

CHANNELS_FILE = Path(__file__).with_name("channels.toml")
CHANNEL_KEYS = ("width", "height", "use")
ANCHORS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "top": (0.5, 0.0),
    "bottom": (0.5, 1.0),
    "left": (0.0, 0.5),
    "right": (1.0, 0.5),
    "top-left": (0.0, 0.0),
    "top-right": (1.0, 0.0),
    "bottom-left": (0.0, 1.0),
    "bottom-right": (1.0, 1.0),
}
DEFAULT_FEATHER = 16
MAX_FEATHER = 256
DEFAULT_MAX_WORK_SIDE = 1024
SIZE_STEP = 8  # Stable Diffusion's latent grid
_CUSTOM_SIZE = re.compile(r"\d+\s*x\s*\d+")


def load_channels(path: str | os.PathLike[str] | None = None) -> dict[str, Channel]:
    """Channel presets by name from ``path`` (default: the shipped ``channels.toml``)."""
    source = Path(path) if path is not None else CHANNELS_FILE
    data = read_toml(source, what="channels file", field="channels")
    channels = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise AtelierError(
                f"{source.name}: {name} must be a table with width and height", field="channels"
            )
        for key in table:
            if key not in CHANNEL_KEYS:
                raise unknown_key_error(key, CHANNEL_KEYS, where=f"channel {name!r}", field="channels")
        width, height = table.get("width"), table.get("height")
        for side in (width, height):
            if (
                isinstance(side, bool)
                or not isinstance(side, int)
                or not MIN_CHANNEL_SIDE <= side <= MAX_CHANNEL_SIDE
            ):
                raise AtelierError(
                    f"{source.name}: channel {name!r} needs width and height from {MIN_CHANNEL_SIDE} to "
                    f"{MAX_CHANNEL_SIDE} pixels",
                    field="channels",
                )
        assert isinstance(width, int) and isinstance(height, int)
        channels[name] = Channel(name, width, height)
    return channels


def channel(value: str, channels: dict[str, Channel] | None = None) -> Channel:
    """A channel by preset name (``story``) or as ``WxH`` (``1080x1920``)."""
    presets = load_channels() if channels is None else channels
    name = value.strip().lower() if isinstance(value, str) else value
    if name in presets:
        return presets[name]
    if isinstance(name, str) and _CUSTOM_SIZE.fullmatch(name):
        return parse_channel(name)  # its own error for a side out of range
    guess = closest(str(value), presets)
    hint = f"did you mean {guess!r}? " if guess else ""
    raise NotFoundError(
        f"unknown channel {value!r}: {hint}use one of {', '.join(presets)} or a size like '1080x1920'",
        field="channels",
    )


@dataclass(frozen=True)
class Placement:
    """Where a picture of ``source`` size sits in a frame of ``canvas`` size."""

    source: tuple[int, int]
    canvas: tuple[int, int]
    box: Box

    @property
    def scale(self) -> tuple[float, float]:
        return (self.box[2] - self.box[0]) / self.source[0], (self.box[3] - self.box[1]) / self.source[1]

    @property
    def offset(self) -> tuple[int, int]:
        return self.box[0], self.box[1]


def fit(source: tuple[int, int], canvas: tuple[int, int], *, anchor: str = "center") -> Placement:
    """``source`` at the largest scale that fits ``canvas`` without a crop, placed at ``anchor``."""
    if anchor not in ANCHORS:
        raise AtelierError(f"unknown anchor {anchor!r}: use one of {', '.join(ANCHORS)}", field="anchor")
    scale = min(canvas[0] / source[0], canvas[1] / source[1])
    width = min(canvas[0], max(1, round(source[0] * scale)))
    height = min(canvas[1], max(1, round(source[1] * scale)))
    across, down = ANCHORS[anchor]
    left = round((canvas[0] - width) * across)
    top = round((canvas[1] - height) * down)
    return Placement(source, canvas, (left, top, left + width, top + height))


def work_size(
    target: tuple[int, int], source: tuple[int, int], *, max_side: int = DEFAULT_MAX_WORK_SIDE
) -> tuple[int, int]:
    """The size to generate ``target``'s shape at: ``source`` fits without being reduced, the long side at most
    ``max_side``, both sides multiples of 8 (at least 64)."""
    if isinstance(max_side, bool) or not isinstance(max_side, int) or not 64 <= max_side <= MAX_CHANNEL_SIDE:
        raise AtelierError(
            f"work size must be 64 to {MAX_CHANNEL_SIDE} pixels, got {max_side!r}", field="max_work_side"
        )
    scale = max(source[0] / target[0], source[1] / target[1])
    scale = min(scale, max_side / max(target))
    return tuple(max(64, round(side * scale / SIZE_STEP) * SIZE_STEP) for side in target)  # type: ignore[return-value]


@dataclass(frozen=True)
class ExpandCanvas:
    """A frame to generate: the original placed, the new area pre-filled, and the new area's feathered mask."""

    image: Image.Image
    mask: Image.Image
    placement: Placement

    @property
    def has_new_area(self) -> bool:
        return self.placement.box != (0, 0, *self.placement.canvas)


def expand_canvas(
    image: Image.Image, size: tuple[int, int], *, anchor: str = "center", feather: int = DEFAULT_FEATHER
) -> ExpandCanvas:
    """The frame of ``size`` around ``image`` (see the module text, step 2)."""
    if isinstance(feather, bool) or not isinstance(feather, int) or not 0 <= feather <= MAX_FEATHER:
        raise AtelierError(f"feather must be 0 to {MAX_FEATHER} pixels, got {feather!r}", field="feather")
    placement = fit(image.size, size, anchor=anchor)
    left, top, right, bottom = placement.box
    placed = image.convert("RGB")
    if placed.size != (right - left, bottom - top):
        placed = placed.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", size)
    canvas.paste(placed, (left, top))
    new_area = np.full((size[1], size[0]), 255, np.uint8)
    new_area[top:bottom, left:right] = 0
    if not new_area.any():
        return ExpandCanvas(canvas, Image.fromarray(new_area, "L"), placement)
    canvas = fill_masked(canvas, Image.fromarray(new_area, "L"))
    if feather == 0:
        return ExpandCanvas(canvas, Image.fromarray(new_area, "L"), placement)
    # Distance of each new pixel to the original's box: the ramp rises from the seam outward, never inward.
    distance = cv2.distanceTransform(new_area, cv2.DIST_L2, 5)
    ramp = np.clip(distance / feather, 0.0, 1.0)
    return ExpandCanvas(canvas, Image.fromarray(np.round(ramp * 255).astype(np.uint8), "L"), placement)


def recomposite(generated: Image.Image, canvas: ExpandCanvas) -> Image.Image:
    """``generated`` (any size, brought to the canvas's) with the original laid back exactly (module text, 4)."""
    size = canvas.placement.canvas
    if generated.size != size:
        generated = generated.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    return composite_over_original(canvas.image, generated.convert("RGB"), canvas.mask)


@dataclass(frozen=True)
class Expanded:
    """An expanded picture: ``image`` at the target size, where the original went, and the generation's seed."""

    image: Image.Image
    placement: Placement
    seed: int | None
    infotext: str = ""


def expand_image(
    image: Image.Image,
    size: tuple[int, int],
    backend: Backend,
    *,
    prompt: str,
    negative: str = "",
    settings: InpaintSettings | None = None,
    seed: int | None = None,
    anchor: str = "center",
    feather: int = DEFAULT_FEATHER,
    max_work_side: int = DEFAULT_MAX_WORK_SIDE,
) -> Expanded:
    """``image`` expanded to ``size``, the new area generated from ``prompt`` (the whole flow of the module text).

    A picture that already has the target's shape gets no generation: it is resized, and ``seed`` is None.
    """
    settings = settings or InpaintSettings()
    width, height = size
    for name, side in (("width", width), ("height", height)):
        if (
            isinstance(side, bool)
            or not isinstance(side, int)
            or not MIN_CHANNEL_SIDE <= side <= MAX_CHANNEL_SIDE
        ):
            raise AtelierError(
                f"expanded {name} must be {MIN_CHANNEL_SIDE} to {MAX_CHANNEL_SIDE} pixels, got {side!r}",
                field=name,
            )
    final = expand_canvas(image, size, anchor=anchor, feather=feather)
    if not final.has_new_area:
        return Expanded(final.image, final.placement, None)
    work = expand_canvas(image, work_size(size, image.size, max_side=max_work_side), anchor=anchor, feather=0)
    # The canvas is pre-filled already: the generator starts from it rather than filling it a second time.
    request = dataclasses.replace(settings, inpainting_fill="original").request(
        work.image,
        prompt=prompt,
        negative=negative,
        mask=work.mask,
        seed=settings.seed if seed is None else seed,
    )
    generated = generate(backend, request)
    return Expanded(recomposite(generated.image, final), final.placement, generated.seed, generated.infotext)
