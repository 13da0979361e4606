"""A product shot: an exact product in a newly generated scene, grounded by a shadow, in every channel's shape.

The flow (:func:`product_shots` runs all of it; each step is a function of its own):

1. the product's mask (:func:`~.mask.product_mask`: the user's mask, the photo's alpha, or SAM) and the
   cut-out (:func:`~.placement.cut_out`);
2. :func:`shoot`: a frame at the work size with the product placed (``product_fraction`` of the frame on its
   tighter side, a little below the middle), and an inpaint request whose mask is everything but the product,
   reaching ``edge_band`` pixels into it so the model redraws the edge together with the scene; then, in order:
   the light of the band around the product matched to the scene (:mod:`.light`), the shadow under the product
   (:mod:`.shadow`), and the exact product laid over it all through its mask;
3. :func:`shot_to_channel`: the shot expanded to a channel's shape (:mod:`.expand`);
4. :func:`upscale_shot`: the shot upscaled (:mod:`.upscale`).

The product is exact in every output: after each step it is laid again from the photo (never from an earlier
output) into its box at that output's size, so wherever an output's ``mask`` is 255 its pixels are the photo's,
resized once to the box. When the box is larger than the photo's product, the product is enlarged from the photo
with Lanczos (as sharp as the photo allows) and the output's ``note`` says so and by how much.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from atelier.campaign.ad.spec import MAX_CHANNEL_SIDE, Channel
from atelier.campaign.batch import Backend
from atelier.campaign.product.expand import DEFAULT_FEATHER, DEFAULT_MAX_WORK_SIDE, expand_image
from atelier.campaign.product.inpaint import InpaintSettings, generate
from atelier.campaign.product.light import check_light, match_edge_light
from atelier.campaign.product.mask import MaskRefinement, product_mask
from atelier.campaign.product.placement import (
    Box,
    Cutout,
    cut_out,
    enlargement,
    lay_product,
    map_box,
    place_product,
    product_layer,
)
from atelier.campaign.product.presets import ScenePreset
from atelier.campaign.product.segmentation import SamSegmenter
from atelier.campaign.product.shadow import ShadowParams, apply_shadow
from atelier.campaign.product.upscale import TileRefinement, upscale_picture, upscaled_size
from atelier.errors import AtelierError

MAX_SHOTS = 16
MAX_EDGE_BAND = 32
# Under the product, in the frame sent to the generator; "fill" replaces it with the product's smeared colours.
CANVAS_GREY = (127, 127, 127)


@dataclass(frozen=True)
class ShotSettings:
    """How a shot is made. ``size``: the work size (multiples of 8; 512 or 768 suit SD 1.5, 1024 SDXL)."""

    size: tuple[int, int] = (1024, 1024)
    product_fraction: float = 0.65
    position: tuple[float, float] = (0.5, 0.55)
    edge_band: int = 3
    count: int = 1
    shadow: ShadowParams | None = field(default_factory=ShadowParams)
    light_band: int = 6
    light_strength: float = 0.6  # 0 leaves the edge band as generated
    inpaint: InpaintSettings = field(default_factory=InpaintSettings)

    def check(self) -> None:
        """Raise AtelierError naming the first bad setting (before any model runs)."""
        for name, side in zip(("width", "height"), self.size, strict=True):
            if isinstance(side, bool) or not isinstance(side, int) or not 64 <= side <= MAX_CHANNEL_SIDE:
                raise AtelierError(
                    f"shot {name} must be 64 to {MAX_CHANNEL_SIDE} pixels, got {side!r}", field=name
                )
            if side % 8:
                raise AtelierError(f"shot {name} must be a multiple of 8, got {side}", field=name)
        if (
            isinstance(self.count, bool)
            or not isinstance(self.count, int)
            or not 1 <= self.count <= MAX_SHOTS
        ):
            raise AtelierError(f"count must be 1 to {MAX_SHOTS}, got {self.count!r}", field="count")
        if not isinstance(self.edge_band, int) or not 0 <= self.edge_band <= MAX_EDGE_BAND:
            raise AtelierError(
                f"edge band must be 0 to {MAX_EDGE_BAND} pixels, got {self.edge_band!r}", field="edge_band"
            )
        if self.shadow is not None:
            self.shadow.check()
        place_product((1, 1), self.size, fraction=self.product_fraction, centre=self.position)
        check_light(self.light_band, self.light_strength)
        self.inpaint.check()


@dataclass(frozen=True)
class ProductShot:
    """One output. Where ``mask`` is 255, ``image`` is the photo's product resized to ``box``, pixel for pixel."""

    image: Image.Image
    mask: Image.Image
    box: Box
    seed: int | None
    infotext: str = ""
    note: str = ""


@dataclass(frozen=True)
class ProductShots:
    """Everything :func:`product_shots` made: the mask found (to preview and edit), the shots and their variants."""

    mask: Image.Image
    cutout: Cutout
    shots: list[ProductShot]
    channels: dict[str, list[ProductShot]]
    upscaled: list[ProductShot]


def shoot(
    cutout: Cutout,
    backend: Backend,
    scene: ScenePreset,
    *,
    product: str = "",
    settings: ShotSettings | None = None,
) -> list[ProductShot]:
    """``settings.count`` shots of the product in ``scene`` at the work size (step 2 of the module text)."""
    settings = settings or ShotSettings()
    settings.check()
    box = place_product(
        cutout.size, settings.size, fraction=settings.product_fraction, centre=settings.position
    )
    _, mask = product_layer(cutout, box, settings.size)
    canvas = lay_product(Image.new("RGB", settings.size, CANVAS_GREY), cutout, box)
    generate_mask = _scene_mask(mask, settings.edge_band)
    shadow = settings.shadow
    if shadow is not None and shadow.direction is None:
        shadow = dataclasses.replace(shadow, direction=scene.shadow_direction)
    shots = []
    for index in range(settings.count):
        first = settings.inpaint.seed
        request = settings.inpaint.request(
            canvas,
            prompt=scene.prompt_for(product),
            negative=scene.negative,
            mask=generate_mask,
            seed=first if first == -1 else first + index,
        )
        generated = generate(backend, request)
        picture = generated.image.convert("RGB")
        if settings.light_strength > 0:
            picture = match_edge_light(
                picture, mask, band=settings.light_band, strength=settings.light_strength
            )
        if shadow is not None:
            picture = apply_shadow(picture, mask, shadow)
        picture = lay_product(picture, cutout, box)
        shots.append(
            ProductShot(picture, mask, box, generated.seed, generated.infotext, _product_note(cutout, box))
        )
    return shots


def shot_to_channel(
    shot: ProductShot,
    cutout: Cutout,
    target: Channel,
    backend: Backend,
    scene: ScenePreset,
    *,
    product: str = "",
    settings: InpaintSettings | None = None,
    anchor: str = "center",
    feather: int = DEFAULT_FEATHER,
    max_work_side: int = DEFAULT_MAX_WORK_SIDE,
) -> ProductShot:
    """``shot`` expanded to ``target``'s size, the new area generated in ``scene``, the product laid again."""
    expanded = expand_image(
        shot.image,
        target.size,
        backend,
        prompt=scene.prompt_for(product),
        negative=scene.negative,
        settings=settings,
        seed=shot.seed,
        anchor=anchor,
        feather=feather,
        max_work_side=max_work_side,
    )
    box = map_box(shot.box, expanded.placement.scale, expanded.placement.offset)
    return _relaid(expanded.image, cutout, box, expanded.seed, expanded.infotext)


def upscale_shot(
    shot: ProductShot,
    cutout: Cutout,
    scale: float,
    *,
    upscaler: str = "Lanczos",
    refinement: TileRefinement | None = None,
    backend: Backend | None = None,
    scene: ScenePreset | None = None,
    product: str = "",
    settings: InpaintSettings | None = None,
) -> ProductShot:
    """``shot`` upscaled by ``scale`` (optionally refined tile by tile), the product laid again from the photo."""
    width, height = upscaled_size(shot.image.size, scale)
    big = upscale_picture(
        shot.image,
        scale,
        upscaler=upscaler,
        refinement=refinement,
        backend=backend,
        prompt=scene.prompt_for(product) if scene else product,
        negative=scene.negative if scene else "",
        settings=settings,
        seed=shot.seed if shot.seed is not None else -1,
    )
    box = map_box(shot.box, (width / shot.image.width, height / shot.image.height))
    return _relaid(big, cutout, box, shot.seed, shot.infotext)


def product_shots(
    photo: Image.Image,
    backend: Backend,
    scene: ScenePreset,
    *,
    product: str = "",
    mask: Image.Image | None = None,
    segmenter: SamSegmenter | None = None,
    refinement: MaskRefinement | None = None,
    settings: ShotSettings | None = None,
    channels: tuple[Channel, ...] = (),
    upscale_by: float | None = None,
    upscaler: str = "Lanczos",
    tile_refinement: TileRefinement | None = None,
) -> ProductShots:
    """The whole flow of the module text: shots, each expanded to ``channels`` and upscaled by ``upscale_by``."""
    settings = settings or ShotSettings()
    settings.check()
    if upscale_by is not None:
        upscaled_size(settings.size, upscale_by)  # a bad factor fails before anything is generated
    found = product_mask(photo, mask=mask, segmenter=segmenter, refinement=refinement)
    cutout = cut_out(photo, found)
    shots = shoot(cutout, backend, scene, product=product, settings=settings)
    in_channels = {
        target.name: [
            shot_to_channel(shot, cutout, target, backend, scene, product=product, settings=settings.inpaint)
            for shot in shots
        ]
        for target in channels
    }
    upscaled = []
    if upscale_by is not None:
        upscaled = [
            upscale_shot(
                shot,
                cutout,
                upscale_by,
                upscaler=upscaler,
                refinement=tile_refinement,
                backend=backend,
                scene=scene,
                product=product,
                settings=settings.inpaint,
            )
            for shot in shots
        ]
    return ProductShots(found, cutout, shots, in_channels, upscaled)


def _scene_mask(product: Image.Image, edge_band: int) -> Image.Image:
    """What the generator may paint: everything but the product's solid part, shrunk by ``edge_band`` pixels."""
    solid = (np.asarray(product) == 255).astype(np.uint8)
    if edge_band > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * edge_band + 1, 2 * edge_band + 1))
        solid = cv2.erode(solid, kernel)
    return Image.fromarray(np.where(solid == 1, 0, 255).astype(np.uint8), "L")


def _relaid(image: Image.Image, cutout: Cutout, box: Box, seed: int | None, infotext: str) -> ProductShot:
    _, mask = product_layer(cutout, box, image.size)
    return ProductShot(lay_product(image, cutout, box), mask, box, seed, infotext, _product_note(cutout, box))


def _product_note(cutout: Cutout, box: Box) -> str:
    factor = enlargement(cutout, box)
    width, height = cutout.size
    if factor <= 1.0:
        return f"product laid from the photo ({width}x{height} px, reduced {1 / factor:.2f}x): full detail"
    return (
        f"the photo's product is only {width}x{height} px, so it is enlarged {factor:.2f}x with Lanczos: as sharp "
        "as the photo allows; a larger photo gives a sharper product"
    )
