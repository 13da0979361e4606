"""Where the product goes in a frame, and laying it there exactly.

A :class:`Cutout` is the product photo cropped to its mask: the colours and the mask, at the photo's own
resolution. Every output (the shot, each channel, each upscale) lays the product from the cut-out, resized once
from the photo straight to its box in that output, never from an earlier output. So within the mask's 255 area
an output equals the photo resized to the box (the photo itself when the box has the cut-out's size), whatever
was generated around it.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from atelier.campaign.product.mask import check_not_empty, product_colours
from atelier.engine import check_same_size, composite_over_original
from atelier.errors import AtelierError

Box = tuple[int, int, int, int]
"""``(left, top, right, bottom)`` in pixels, right and bottom exclusive, as PIL's ``crop`` takes it."""

MIN_PRODUCT_FRACTION = 0.1
MAX_PRODUCT_FRACTION = 1.0


@dataclass(frozen=True)
class Cutout:
    """The product: the photo's colours (``RGB``) and the product mask (``L``), cropped to the mask's extent."""

    image: Image.Image
    mask: Image.Image

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def cut_out(photo: Image.Image, mask: Image.Image) -> Cutout:
    """The product cropped out of ``photo`` by ``mask`` (255 = product), for laying into frames."""
    check_same_size(photo, mask)
    grey = mask.convert("L")
    check_not_empty(grey)
    extent = grey.getbbox()
    assert extent is not None  # check_not_empty found a product pixel
    return Cutout(product_colours(photo).crop(extent), grey.crop(extent))


def place_product(
    product_size: tuple[int, int],
    canvas_size: tuple[int, int],
    *,
    fraction: float = 0.65,
    centre: tuple[float, float] = (0.5, 0.55),
) -> Box:
    """The box of a product scaled to ``fraction`` of the frame on its tighter side, centred at ``centre``.

    ``centre`` is a fraction of the canvas (``(0.5, 0.55)``: middle, a little low, as a product stands on a
    surface); the box is moved back inside the canvas if it would cross an edge.
    """
    if not MIN_PRODUCT_FRACTION <= fraction <= MAX_PRODUCT_FRACTION:
        raise AtelierError(
            f"product size must be between {MIN_PRODUCT_FRACTION} and {MAX_PRODUCT_FRACTION} of the frame, "
            f"got {fraction}",
            field="product_fraction",
        )
    for value in centre:
        if not 0.0 <= value <= 1.0:
            raise AtelierError(
                f"product position must be fractions from 0 to 1, got {centre}", field="position"
            )
    width, height = product_size
    canvas_width, canvas_height = canvas_size
    scale = fraction * min(canvas_width / width, canvas_height / height)
    box_width = min(canvas_width, max(1, round(width * scale)))
    box_height = min(canvas_height, max(1, round(height * scale)))
    left = min(max(round(centre[0] * canvas_width - box_width / 2), 0), canvas_width - box_width)
    top = min(max(round(centre[1] * canvas_height - box_height / 2), 0), canvas_height - box_height)
    return (left, top, left + box_width, top + box_height)


def map_box(box: Box, scale: tuple[float, float], offset: tuple[float, float] = (0.0, 0.0)) -> Box:
    """``box`` in a picture that was scaled by ``scale`` (x, y) and then placed at ``offset`` in another."""
    left, top, right, bottom = box
    return (
        round(offset[0] + left * scale[0]),
        round(offset[1] + top * scale[1]),
        round(offset[0] + right * scale[0]),
        round(offset[1] + bottom * scale[1]),
    )


def product_layer(cutout: Cutout, box: Box, canvas_size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    """The product resized into ``box`` on a canvas: its colours (``RGB``, black elsewhere) and its mask."""
    colours, mask = _fitted(cutout, box)
    canvas_colours = Image.new("RGB", canvas_size)
    canvas_mask = Image.new("L", canvas_size, 0)
    canvas_colours.paste(colours, box[:2])
    canvas_mask.paste(mask, box[:2])
    return canvas_colours, canvas_mask


def lay_product(scene: Image.Image, cutout: Cutout, box: Box) -> Image.Image:
    """``scene`` with the product laid into ``box`` through its mask: exactly the product where the mask is 255."""
    colours, mask = _fitted(cutout, box)
    result = scene.convert("RGB")
    region = result.crop(box)
    result.paste(composite_over_original(region, colours, mask), box[:2])
    return result


def relay_product(picture: Image.Image, photo: Image.Image, mask: Image.Image) -> Image.Image:
    """``picture``, made from the whole ``photo`` brought to its size (a catalog batch's inpainting), with the
    product laid again from the photo: exact wherever the product's ``mask`` (photo size) is 255."""
    extent = mask.convert("L").getbbox()
    if extent is None:
        raise AtelierError("no product found in the photo", field="photo")
    scale = (picture.width / photo.width, picture.height / photo.height)
    return lay_product(picture, cut_out(photo, mask), map_box(extent, scale))


def enlargement(cutout: Cutout, box: Box) -> float:
    """How many times the photo's product is enlarged to fill ``box`` (below 1: it is reduced)."""
    return max((box[2] - box[0]) / cutout.size[0], (box[3] - box[1]) / cutout.size[1])


def _fitted(cutout: Cutout, box: Box) -> tuple[Image.Image, Image.Image]:
    size = (box[2] - box[0], box[3] - box[1])
    if size == cutout.size:
        return cutout.image, cutout.mask
    # Colours with Lanczos (sharp); the mask with a triangle filter, which never overshoots: after resizing it is
    # 255 only where the product covered every source pixel around it.
    colours = cutout.image.resize(size, Image.Resampling.LANCZOS)
    mask = cutout.mask.resize(size, Image.Resampling.BILINEAR)
    return colours, mask
