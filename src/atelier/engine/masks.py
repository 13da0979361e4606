"""Inpainting masks: preparing, cropping, filling and pasting back, the way AUTOMATIC1111 does it.

Follows A1111's ``modules/masking.py`` and the mask handling in ``StableDiffusionProcessingImg2Img.init`` /
``apply_overlay`` (``modules/processing.py``). White (255) means "regenerate", black (0) means "keep".

The product guarantee lives in :func:`composite_over_original` and :func:`paste_region`: wherever the prepared
mask is 0, the result's pixels are exactly the original's, whatever the model generated.

A typical "only masked" inpaint::

    check_same_size(image, user_mask)
    mask = prepare_mask(user_mask, image.size, blur=4)
    region = expand_crop_region(get_crop_region(mask, pad=32), width, height, *image.size)
    init_image = crop_to_region(image, region, (width, height))
    init_mask = crop_to_region(mask, region, (width, height))
    generated = pipeline(image=init_image, mask_image=init_mask, ...)
    result = paste_region(image, generated, region, mask)

For "whole picture" A1111 composites with :func:`whole_picture_overlay_mask` of the prepared mask instead.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageFilter, ImageOps

from atelier.errors import AtelierError

Region = tuple[int, int, int, int]
"""``(left, top, right, bottom)`` in pixels, right and bottom exclusive, as PIL's ``crop`` takes it."""

# A1111's create_binary_mask: a pixel is masked when brighter than this.
BINARY_THRESHOLD = 128

# A1111's masking.fill: (blur radius, times composited), from the widest smear down to the known pixels.
_FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def check_same_size(image: Image.Image, mask: Image.Image) -> None:
    """Refuse a mask that does not cover the image pixel for pixel."""
    if image.size != mask.size:
        raise AtelierError(
            f"mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}; "
            "they must be the same size",
            field="mask",
        )


def blur_kernel_size(blur: int) -> int:
    """A1111's Gaussian kernel width for a mask blur of ``blur`` pixels (the blur is the sigma)."""
    return 2 * int(2.5 * blur + 0.5) + 1


def prepare_mask(mask: Image.Image, size: tuple[int, int], blur: int, invert: bool = False) -> Image.Image:
    """A user's mask as A1111 prepares it: greyscale at ``size``, black/white, optionally inverted, blurred.

    A mask with transparency is read from its alpha channel (painted strokes on a transparent layer), any
    other mask from its brightness. A1111 only rounds alpha masks to black and white; Atelier rounds every
    mask, so a soft-edged upload behaves like a painted one and ``blur`` alone sets the transition width.
    The mask is resized to ``size`` before blurring, so ``blur`` is in pixels of ``size``.
    """
    if blur < 0:
        raise AtelierError(f"mask blur must be 0 or more, got {blur}", field="mask_blur")

    if mask.mode == "P" and "transparency" in mask.info:
        mask = mask.convert("RGBA")
    if "A" in mask.getbands() and mask.getchannel("A").getextrema() != (255, 255):
        grey = mask.getchannel("A")
    else:
        grey = mask.convert("L")
    width, height = size
    if grey.size != (width, height):
        grey = grey.resize((width, height), Image.Resampling.LANCZOS)

    pixels: np.ndarray = np.where(np.asarray(grey) > BINARY_THRESHOLD, 255, 0).astype(np.uint8)
    if invert:
        pixels = 255 - pixels
    if blur > 0:
        # Horizontal then vertical pass, as A1111 does to allow separate x and y blur amounts.
        kernel = blur_kernel_size(blur)
        pixels = cv2.GaussianBlur(pixels, (kernel, 1), blur)
        pixels = cv2.GaussianBlur(pixels, (1, kernel), blur)
    return Image.fromarray(pixels)


def get_crop_region(mask: Image.Image, pad: int = 0) -> Region:
    """The smallest box holding every masked (non-zero) pixel, grown by ``pad`` and kept inside the mask."""
    box = mask.convert("L").getbbox()
    if box is None:
        raise AtelierError("mask is empty: paint over the area to regenerate", field="mask")
    left, top, right, bottom = box
    return (
        max(left - pad, 0),
        max(top - pad, 0),
        min(right + pad, mask.width),
        min(bottom + pad, mask.height),
    )


def expand_crop_region(region: Region, target_w: int, target_h: int, image_w: int, image_h: int) -> Region:
    """Grow ``region`` to the aspect ratio of the processing size, shifting it back inside the image.

    Only one side grows: the height when the region is wider than the processing size, else the width. A
    region that would need to be larger than the image is clamped to the image on that side (as A1111 does).
    """
    left, top, right, bottom = region
    region_ratio = (right - left) / (bottom - top)
    target_ratio = target_w / target_h
    if region_ratio > target_ratio:
        growth = int((right - left) / target_ratio - (bottom - top))
        top, bottom = _grow_span(top, bottom, growth, image_h)
    else:
        growth = int((bottom - top) * target_ratio - (right - left))
        left, right = _grow_span(left, right, growth, image_w)
    return left, top, right, bottom


def _grow_span(start: int, end: int, growth: int, limit: int) -> tuple[int, int]:
    start -= growth // 2
    end += growth - growth // 2
    if end > limit:
        start -= end - limit
        end = limit
    if start < 0:
        end -= start
        start = 0
    return start, min(end, limit)


def crop_to_region(image: Image.Image, region: Region, size: tuple[int, int]) -> Image.Image:
    """``image`` cut to ``region`` and resized to the processing ``size`` (for "only masked" inpainting)."""
    cropped = image.crop(region)
    width, height = size
    if cropped.size != (width, height):
        cropped = cropped.resize((width, height), Image.Resampling.LANCZOS)
    return cropped


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill" masked content: masked pixels replaced by smeared colours of the unmasked ones.

    The known pixels are blurred ever less widely and layered over each other, so each masked pixel takes
    the colour of its nearest surroundings. Pixels where ``mask`` is 0 keep their exact value.
    """
    check_same_size(image, mask)
    known_alpha = ImageOps.invert(mask.convert("L"))
    # Premultiplied alpha ("RGBa") so that blurring weighs colours by how much of each pixel is known.
    known = Image.new("RGBa", image.size)
    known.paste(image.convert("RGB").convert("RGBA").convert("RGBa"), mask=known_alpha)

    filled = Image.new("RGBA", image.size)
    for radius, times in _FILL_PASSES:
        layer = known.filter(ImageFilter.GaussianBlur(radius)) if radius else known
        layer = layer.convert("RGBA")
        for _ in range(times):
            filled.alpha_composite(layer)
    return filled.convert("RGB")


def whole_picture_overlay_mask(mask: Image.Image) -> Image.Image:
    """The mask A1111 composites with in "whole picture" mode: the prepared mask doubled and clipped.

    The sampler regenerates where the blurred mask is at least half on, so doubling shows those pixels fully
    generated and spends the blend only on the outer half of the blur. Zero stays zero.
    """
    doubled = np.clip(np.asarray(mask.convert("L"), dtype=np.uint16) * 2, 0, 255).astype(np.uint8)
    return Image.fromarray(doubled)


def composite_over_original(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """``generated`` shown through ``mask`` over ``original``: exactly the original where the mask is 0.

    Each pixel is ``original * (255 - m) / 255 + generated * m / 255`` in integers, so m = 0 gives the
    original's value and m = 255 the generated one, bit for bit. The result keeps the original's alpha band
    if it has one.
    """
    if not original.size == generated.size == mask.size:
        raise ValueError(
            f"original {original.size}, generated {generated.size} and mask {mask.size} must be the same size"
        )
    mode = "RGBA" if "A" in original.getbands() else "RGB"
    kept = np.asarray(original.convert(mode), dtype=np.uint32)
    new = np.asarray(generated.convert(mode), dtype=np.uint32)
    weight = np.asarray(mask.convert("L"), dtype=np.uint32)[..., np.newaxis]
    blended = (kept * (255 - weight) + new * weight + 127) // 255
    return Image.fromarray(blended.astype(np.uint8))


def paste_region(
    original: Image.Image, generated: Image.Image, region: Region, mask: Image.Image
) -> Image.Image:
    """Put an "only masked" result back: ``generated`` resized into ``region``, composited through ``mask``.

    ``mask`` is the full-size prepared mask. Outside the region, and wherever the mask is 0, the original's
    pixels come back unchanged.
    """
    left, top, right, bottom = region
    mode = "RGBA" if "A" in original.getbands() else "RGB"
    placed = original.convert(mode)
    patch = generated.convert(mode)
    if patch.size != (right - left, bottom - top):
        patch = patch.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    placed.paste(patch, (left, top))
    return composite_over_original(original, placed, mask)
