"""The product's mask, found automatically: 255 where the photo is the product, 0 where it is background.

In order of trust:

1. a mask the user gave (painted, or a cut-out edited in the mask editor) is used as given;
2. a photo with real transparency (PNG, WebP, ...) is its own cut-out: its alpha is the mask, soft edges
   included, so a catalog's existing cut-outs come out exactly as their retoucher made them;
3. otherwise a segmentation model cuts the product out (:class:`~.segmentation.SamSegmenter`: SAM through
   transformers; see that module for why SAM and where the model folders and their licences live), and its
   hard mask is refined: the largest part kept, holes optionally filled, the edge feathered inward.

Values between 0 and 255 are the product's soft edge: the product is laid over the new scene with the mask as its
alpha, so wherever the mask is 255 the output equals the photo exactly and nowhere else does the photo's old
background show more than the mask says.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from atelier.campaign.product.segmentation import SamSegmenter
from atelier.engine import check_same_size
from atelier.errors import AtelierError

PRODUCT = 255
MIN_PHOTO_SIDE = 16
MAX_FEATHER = 64
NO_MODEL_HINT = "put a SAM model folder in models/segmentation/ or upload a PNG with transparency"


@dataclass(frozen=True)
class MaskRefinement:
    """How a segmentation model's hard mask is cleaned up (never applied to alpha cut-outs or users' masks).

    ``fill_holes`` is off by default: a real opening (a mug's handle, a bag's strap) would be filled with the
    photo's old backdrop, which shows far more than a speck the scene generator paints over. ``keep_largest``
    drops stray blobs a model finds in the background. ``feather`` ramps the edge over that many pixels *inside*
    the product, so the old background never bleeds outward.
    """

    fill_holes: bool = False
    keep_largest: bool = True
    feather: int = 2

    def check(self) -> None:
        if isinstance(self.feather, bool) or not isinstance(self.feather, int):
            raise AtelierError(
                f"feather must be a whole number of pixels, got {self.feather!r}", field="feather"
            )
        if not 0 <= self.feather <= MAX_FEATHER:
            raise AtelierError(
                f"feather must be between 0 and {MAX_FEATHER}, got {self.feather}", field="feather"
            )


def product_mask(
    photo: Image.Image,
    *,
    mask: Image.Image | None = None,
    segmenter: SamSegmenter | None = None,
    refinement: MaskRefinement | None = None,
) -> Image.Image:
    """The product's mask (mode ``L``, photo size) from the user's mask, the photo's alpha, or the segmenter."""
    check_photo(photo)
    if mask is not None:
        found = read_mask(mask, photo)
    else:
        alpha = alpha_mask(photo)
        if alpha is not None:
            found = alpha
        elif segmenter is None:
            raise AtelierError(
                f"the photo has no transparency and no segmentation model is set up: {NO_MODEL_HINT}",
                field="segmentation_model",
            )
        else:
            found = refine_mask(segmenter.segment(photo), refinement or MaskRefinement())
    check_not_empty(found)
    return found


def check_photo(photo: Image.Image) -> None:
    if min(photo.size) < MIN_PHOTO_SIDE:
        raise AtelierError(
            f"the photo is {photo.width}x{photo.height}; it needs at least {MIN_PHOTO_SIDE} pixels a side",
            field="photo",
        )


def check_not_empty(mask: Image.Image) -> None:
    if mask.getextrema()[1] == 0:
        raise AtelierError("no product found in the photo", field="photo")


def alpha_mask(photo: Image.Image) -> Image.Image | None:
    """The photo's alpha channel when it has real transparency; None for an opaque photo."""
    if photo.mode == "P" and "transparency" in photo.info:
        photo = photo.convert("RGBA")
    if "A" not in photo.getbands() and "a" not in photo.getbands():
        return None
    alpha = photo.convert("RGBA").getchannel("A")
    if alpha.getextrema() == (255, 255):
        return None  # an alpha channel that is opaque everywhere says nothing about the product
    return alpha


def read_mask(mask: Image.Image, photo: Image.Image) -> Image.Image:
    """A user's mask as the product mask: its alpha when it has transparency, else its brightness."""
    check_same_size(photo, mask)
    alpha = alpha_mask(mask)
    return alpha if alpha is not None else mask.convert("L")


def product_colours(photo: Image.Image) -> Image.Image:
    """The photo's colours (``RGB``), without its alpha: what is laid over the scene through the mask."""
    if photo.mode == "P" and "transparency" in photo.info:
        photo = photo.convert("RGBA")
    if photo.mode == "RGBa":  # premultiplied: bring the colours back to straight alpha first
        photo = photo.convert("RGBA")
    return photo.convert("RGB")


def refine_mask(mask: Image.Image, refinement: MaskRefinement) -> Image.Image:
    """Clean a hard mask: keep its largest part, fill its holes, feather its edge inward (see MaskRefinement)."""
    refinement.check()
    solid = (np.asarray(mask.convert("L")) >= 128).astype(np.uint8)
    if refinement.keep_largest:
        solid = _largest_component(solid)
    if refinement.fill_holes:
        solid = _filled(solid)
    if refinement.feather == 0 or not solid.any():
        return Image.fromarray(solid * 255, "L")
    # Distance of each product pixel to the nearest background pixel: 1 on the edge, growing inward.
    distance = cv2.distanceTransform(solid, cv2.DIST_L2, 5)
    ramp = np.clip((distance - 0.5) / refinement.feather, 0.0, 1.0)
    return Image.fromarray(np.round(ramp * 255).astype(np.uint8), "L")


def _largest_component(solid: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=8)
    if count <= 2:  # background only, or one part
        return solid
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == largest).astype(np.uint8)


def _filled(solid: np.ndarray) -> np.ndarray:
    """``solid`` with every background region that does not reach the border made product."""
    height, width = solid.shape
    # Flood the background from a one-pixel frame around the picture; what the flood misses is a hole.
    framed = np.zeros((height + 2, width + 2), np.uint8)
    framed[1:-1, 1:-1] = solid
    flood_mask = np.zeros((height + 4, width + 4), np.uint8)
    cv2.floodFill(framed, flood_mask, (0, 0), 2)
    return (framed[1:-1, 1:-1] != 2).astype(np.uint8)
