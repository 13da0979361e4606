"""Upscaling a finished picture: the engine's upscalers (Lanczos today), optionally refined tile by tile.

The refinement is img2img over overlapping tiles at a low denoising strength, through a batch backend, merged
with the engine's linear cross-fades: it adds detail the resampler cannot, one tile at a time so any size fits the
model's working size. Product shots lay their exact product back afterwards (:func:`~.shot.upscale_shot`).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from atelier.campaign.batch import Backend
from atelier.campaign.product.inpaint import InpaintSettings, generate
from atelier.engine import check_upscaler_name, merge_tiles, tile_boxes, upscale
from atelier.errors import AtelierError
from atelier.images import DEFAULT_MAX_PIXELS, check_pixels

MAX_SCALE = 8.0
SIZE_STEP = 8


@dataclass(frozen=True)
class TileRefinement:
    """Tiled img2img after the resampler: ``strength`` is the denoising strength of each ``tile``-pixel tile."""

    strength: float = 0.3
    tile: int = 512
    overlap: int = 64

    def check(self) -> None:
        if isinstance(self.strength, bool) or not isinstance(self.strength, int | float):
            raise AtelierError(
                f"refine strength must be a number, got {self.strength!r}", field="refine_strength"
            )
        if not 0.0 < self.strength <= 1.0:
            raise AtelierError(
                f"refine strength must be above 0 and at most 1, got {self.strength}", field="refine_strength"
            )
        if not isinstance(self.tile, int) or not 64 <= self.tile <= 2048 or self.tile % SIZE_STEP:
            raise AtelierError(
                f"tile must be a multiple of 8 from 64 to 2048, got {self.tile!r}", field="tile"
            )
        if not isinstance(self.overlap, int) or not 0 <= self.overlap <= self.tile // 2:
            raise AtelierError(
                f"tile overlap must be 0 to half the tile, got {self.overlap!r}", field="overlap"
            )


def upscaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The size ``scale`` makes of ``size``, checked against the pixel limit."""
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 1.0 <= scale <= MAX_SCALE:
        raise AtelierError(f"upscale factor must be from 1 to {MAX_SCALE:g}, got {scale!r}", field="scale")
    # The engine's upscaler truncates (A1111's extras do): the same rule here, so boxes map onto its result.
    width, height = max(1, int(size[0] * scale)), max(1, int(size[1] * scale))
    check_pixels(width, height, DEFAULT_MAX_PIXELS, label="the upscaled picture", field="scale")
    return width, height


def upscale_picture(
    image: Image.Image,
    scale: float,
    *,
    upscaler: str = "Lanczos",
    refinement: TileRefinement | None = None,
    backend: Backend | None = None,
    prompt: str = "",
    negative: str = "",
    settings: InpaintSettings | None = None,
    seed: int = -1,
) -> Image.Image:
    """``image`` upscaled by ``scale`` with ``upscaler``, then refined tile by tile when ``refinement`` is given."""
    check_upscaler_name(upscaler, field="upscaler")
    upscaled_size(image.size, scale)
    if refinement is not None:
        refinement.check()
        if backend is None:
            raise AtelierError("refining an upscale needs a model to generate with", field="refine_strength")
    big = upscale(image.convert("RGB"), upscaler, scale=scale)
    if refinement is None or backend is None:
        return big
    return refine_tiles(
        big,
        backend,
        refinement,
        prompt=prompt,
        negative=negative,
        settings=settings or InpaintSettings(),
        seed=seed,
    )


def refine_tiles(
    image: Image.Image,
    backend: Backend,
    refinement: TileRefinement,
    *,
    prompt: str,
    negative: str,
    settings: InpaintSettings,
    seed: int,
) -> Image.Image:
    """img2img over overlapping tiles of ``image``, merged back with cross-fades (same size as ``image``)."""
    tiles = []
    for box in tile_boxes(image.size, (refinement.tile, refinement.tile), refinement.overlap):
        piece = image.crop(box)
        # An edge tile of a picture smaller than one tile can have any size; the model needs multiples of 8.
        work = (_step_up(piece.width), _step_up(piece.height))
        if work != piece.size:
            piece = piece.resize(work, Image.Resampling.LANCZOS)
        request = settings.request(
            piece, prompt=prompt, negative=negative, seed=seed, denoising_strength=refinement.strength
        )
        tiles.append((box, generate(backend, request).image))
    return merge_tiles(image.size, tiles, refinement.overlap)


def _step_up(side: int) -> int:
    return max(64, -(-side // SIZE_STEP) * SIZE_STEP)
