"""Inpainting masks behave like A1111's, and pixels outside the mask always come back untouched."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from atelier.engine.masks import (
    blur_kernel_size,
    check_same_size,
    composite_over_original,
    crop_to_region,
    expand_crop_region,
    fill_masked,
    get_crop_region,
    paste_region,
    prepare_mask,
    whole_picture_overlay_mask,
)
from atelier.errors import AtelierError


def _random_image(rng: np.random.Generator, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels)


def _random_blob_mask(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A user-painted looking mask: a few ellipses and strokes somewhere in the image."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    width, height = size
    for _ in range(int(rng.integers(1, 4))):
        w = int(rng.integers(max(4, width // 6), width // 3 + 1))
        h = int(rng.integers(max(4, height // 6), height // 3 + 1))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        draw.ellipse((x, y, x + w, y + h), fill=255)
    x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
    draw.line((x, y, x + int(rng.integers(-20, 20)), y + int(rng.integers(-20, 20))), fill=255, width=3)
    return mask


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int32)


def test_check_same_size_names_both_sizes() -> None:
    check_same_size(Image.new("RGB", (64, 32)), Image.new("L", (64, 32)))
    with pytest.raises(AtelierError) as excinfo:
        check_same_size(Image.new("RGB", (512, 512)), Image.new("L", (512, 400)))
    assert excinfo.value.field == "mask"
    assert "512x400" in str(excinfo.value)
    assert "512x512" in str(excinfo.value)


def test_prepare_mask_binarises_at_a1111s_threshold() -> None:
    grey = Image.fromarray(np.array([[0, 100, 128, 129, 200, 255]], dtype=np.uint8))
    prepared = prepare_mask(grey.convert("RGB"), grey.size, blur=0)
    assert prepared.mode == "L"
    assert np.asarray(prepared).tolist() == [[0, 0, 0, 255, 255, 255]]


def test_prepare_mask_inverts() -> None:
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (2, 2, 6, 6))
    inverted = np.asarray(prepare_mask(mask, mask.size, blur=0, invert=True))
    assert inverted[3, 3] == 0
    assert inverted[0, 0] == 255
    assert (inverted + np.asarray(mask) == 255).all()


def test_prepare_mask_reads_painted_strokes_from_the_alpha_channel() -> None:
    # A transparent layer with black strokes: brightness says nothing, the alpha channel is the mask.
    layer = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    layer.paste((0, 0, 0, 255), (4, 4, 12, 12))
    prepared = np.asarray(prepare_mask(layer, layer.size, blur=0))
    assert prepared[8, 8] == 255
    assert prepared[0, 0] == 0
    # An opaque RGBA image is read by brightness instead.
    opaque = Image.new("RGBA", (4, 4), (255, 255, 255, 255))
    assert np.asarray(prepare_mask(opaque, opaque.size, blur=0)).min() == 255


def test_prepare_mask_resizes_to_the_target_size() -> None:
    mask = Image.new("L", (32, 16), 0)
    mask.paste(255, (0, 0, 16, 16))
    prepared = prepare_mask(mask, (64, 32), blur=0)
    assert prepared.size == (64, 32)
    pixels = np.asarray(prepared)
    assert pixels[:, :30].min() == 255
    assert pixels[:, 34:].max() == 0


def test_blur_spreads_about_the_radius_and_stays_zero_far_away() -> None:
    blur = 8
    mask = Image.new("L", (200, 200), 0)
    mask.paste(255, (60, 60, 140, 140))  # masked columns 60..139
    row = np.asarray(prepare_mask(mask, mask.size, blur=blur))[100]
    reach = blur_kernel_size(blur) // 2
    assert reach == int(2.5 * blur + 0.5)
    assert row[100] == 255  # the middle of the square stays fully masked
    assert 100 < row[139] < 255 and 100 < row[60] < 255  # the edge is softened
    assert row[139 + blur] > 0 and row[60 - blur] > 0  # one blur radius out is still partly masked
    assert row[139 + reach + 1 :].max() == 0  # beyond the kernel nothing leaks
    assert row[: 60 - reach].max() == 0


def test_negative_blur_is_refused() -> None:
    with pytest.raises(AtelierError) as excinfo:
        prepare_mask(Image.new("L", (4, 4)), (4, 4), blur=-1)
    assert excinfo.value.field == "mask_blur"


def test_crop_region_of_simple_masks() -> None:
    mask = Image.new("L", (100, 80), 0)
    mask.paste(255, (10, 20, 30, 50))
    assert get_crop_region(mask) == (10, 20, 30, 50)
    assert get_crop_region(mask, pad=5) == (5, 15, 35, 55)
    assert get_crop_region(mask, pad=40) == (0, 0, 70, 80)  # padding stays inside the image
    single = Image.new("L", (10, 10), 0)
    single.putpixel((9, 9), 1)
    assert get_crop_region(single) == (9, 9, 10, 10)


def test_empty_mask_has_no_crop_region() -> None:
    with pytest.raises(AtelierError) as excinfo:
        get_crop_region(Image.new("L", (16, 16), 0))
    assert excinfo.value.field == "mask"


def test_expand_crop_region_matches_the_processing_aspect() -> None:
    # A1111's docstring example: a 128x32 region processed at 512x512 grows to 128x128.
    assert expand_crop_region((100, 100, 228, 132), 512, 512, 1024, 1024) == (100, 52, 228, 180)
    # A tall region for a wide processing size grows sideways.
    assert expand_crop_region((100, 100, 132, 164), 768, 512, 1024, 1024) == (68, 100, 164, 164)


def test_expand_crop_region_shifts_back_inside_the_image() -> None:
    assert expand_crop_region((0, 0, 128, 32), 512, 512, 1024, 1024) == (0, 0, 128, 128)
    assert expand_crop_region((896, 1000, 1024, 1024), 512, 512, 1024, 1024) == (896, 896, 1024, 1024)
    # Larger than the image along the growing side: clamped to the image.
    assert expand_crop_region((0, 10, 400, 30), 512, 256, 400, 100) == (0, 0, 400, 100)


def test_expanded_regions_keep_the_processing_aspect_when_there_is_room() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        left, top = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        region = (left, top, left + int(rng.integers(8, 200)), top + int(rng.integers(8, 200)))
        target_w, target_h = int(rng.integers(8, 17)) * 64, int(rng.integers(8, 17)) * 64
        x1, y1, x2, y2 = expand_crop_region(region, target_w, target_h, 1000, 1000)
        assert x1 <= region[0] and y1 <= region[1] and x2 >= region[2] and y2 >= region[3]
        assert abs((x2 - x1) / (y2 - y1) - target_w / target_h) < 0.02


def test_fill_changes_only_masked_pixels() -> None:
    rng = np.random.default_rng(2)
    image = Image.new("RGB", (96, 64), (200, 30, 30))
    image.paste((30, 30, 200), (48, 0, 96, 64))
    noisy = Image.fromarray(
        np.clip(_pixels(image) + rng.integers(-5, 6, (64, 96, 3)), 0, 255).astype(np.uint8)
    )
    mask = Image.new("L", noisy.size, 0)
    mask.paste(255, (10, 20, 30, 40))  # a hole inside the red half
    filled = fill_masked(noisy, mask)

    outside = np.asarray(mask) == 0
    assert (_pixels(filled)[outside] == _pixels(noisy)[outside]).all()
    hole = _pixels(filled)[20:40, 10:30]
    assert (hole != _pixels(noisy)[20:40, 10:30]).any()
    # The hole takes the colour of its surroundings: red, not blue.
    assert hole[..., 0].mean() > 150 and hole[..., 2].mean() < 80


def test_composite_keeps_the_original_exactly_outside_the_mask() -> None:
    rng = np.random.default_rng(3)
    for size in [(64, 48), (77, 53)]:
        original = _random_image(rng, size)
        generated = _random_image(rng, size)
        mask = prepare_mask(_random_blob_mask(rng, size), size, blur=int(rng.integers(0, 6)))
        result = composite_over_original(original, generated, mask)

        weights = np.asarray(mask)
        kept, new, out = _pixels(original), _pixels(generated), _pixels(result)
        assert result.size == original.size
        assert (out[weights == 0] == kept[weights == 0]).all()
        assert (out[weights == 255] == new[weights == 255]).all()
        partial = (weights > 0) & (weights < 255)
        low, high = np.minimum(kept, new), np.maximum(kept, new)
        assert ((out[partial] >= low[partial]) & (out[partial] <= high[partial])).all()


def test_composite_keeps_the_originals_alpha_outside_the_mask() -> None:
    rng = np.random.default_rng(4)
    original = _random_image(rng, (32, 32), "RGBA")
    mask = prepare_mask(_random_blob_mask(rng, (32, 32)), (32, 32), blur=2)
    result = composite_over_original(original, _random_image(rng, (32, 32)), mask)
    assert result.mode == "RGBA"
    outside = np.asarray(mask) == 0
    assert (_pixels(result)[outside] == _pixels(original)[outside]).all()


def test_composite_rejects_mismatched_sizes() -> None:
    with pytest.raises(ValueError):
        composite_over_original(Image.new("RGB", (8, 8)), Image.new("RGB", (8, 9)), Image.new("L", (8, 8)))


def test_whole_picture_overlay_doubles_the_mask() -> None:
    mask = Image.fromarray(np.array([[0, 1, 64, 127, 128, 200, 255]], dtype=np.uint8))
    assert np.asarray(whole_picture_overlay_mask(mask)).tolist() == [[0, 2, 128, 254, 255, 255, 255]]


def test_whole_picture_inpaint_keeps_unmasked_pixels() -> None:
    rng = np.random.default_rng(5)
    original = _random_image(rng, (64, 64))
    mask = prepare_mask(_random_blob_mask(rng, (64, 64)), (64, 64), blur=4)
    overlay = whole_picture_overlay_mask(mask)
    result = composite_over_original(original, _random_image(rng, (64, 64)), overlay)
    outside = np.asarray(mask) == 0
    assert (_pixels(result)[outside] == _pixels(original)[outside]).all()


@pytest.mark.parametrize("seed", range(6))
def test_only_masked_round_trip_keeps_every_pixel_outside_the_mask(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(90, 160)), int(rng.integers(90, 160)))
    processing = (64, 96) if seed % 2 else (96, 64)
    original = _random_image(rng, size)
    mask = prepare_mask(_random_blob_mask(rng, size), size, blur=int(rng.integers(0, 5)))

    region = expand_crop_region(get_crop_region(mask, pad=int(rng.integers(0, 12))), *processing, *size)
    init_image = crop_to_region(original, region, processing)
    init_mask = crop_to_region(mask, region, processing)
    assert init_image.size == processing and init_mask.size == processing

    generated = _random_image(rng, processing)  # whatever the model returns
    result = paste_region(original, generated, region, mask)

    assert result.size == original.size
    weights = np.asarray(mask)
    outside = weights == 0
    assert (_pixels(result)[outside] == _pixels(original)[outside]).all()
    # Fully masked pixels show the generated patch, resized back into the region.
    left, top, right, bottom = region
    patch = _pixels(generated.resize((right - left, bottom - top), Image.Resampling.LANCZOS))
    inside = weights[top:bottom, left:right] == 255
    assert inside.any()
    assert (_pixels(result)[top:bottom, left:right][inside] == patch[inside]).all()


def test_crop_region_contains_the_whole_blurred_mask() -> None:
    rng = np.random.default_rng(7)
    mask = prepare_mask(_random_blob_mask(rng, (120, 100)), (120, 100), blur=6)
    left, top, right, bottom = get_crop_region(mask)
    outside_region = np.asarray(mask).copy()
    outside_region[top:bottom, left:right] = 0
    assert outside_region.max() == 0
