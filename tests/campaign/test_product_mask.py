"""The product's mask: alpha cut-outs exactly, users' masks as given, refinement, and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from atelier.campaign.product import MaskRefinement, alpha_mask, cut_out, product_mask, refine_mask
from atelier.errors import AtelierError
from product_helpers import cutout_photo, opaque_photo, product_pixels


def test_a_cut_out_png_is_its_own_mask_soft_edge_included() -> None:
    photo, alpha = cutout_photo((96, 80))
    found = product_mask(photo)
    assert found.mode == "L"
    assert np.array_equal(np.asarray(found), np.asarray(alpha))
    values = set(np.unique(np.asarray(found)))
    assert {0, 255} <= values and len(values) > 2  # the retoucher's soft rim is kept, not rounded


def test_a_webp_cut_out_keeps_its_alpha(tmp_path) -> None:
    photo, alpha = cutout_photo((96, 80), soft_edge=False)
    photo.save(tmp_path / "product.webp", lossless=True)
    with Image.open(tmp_path / "product.webp") as reopened:
        assert np.array_equal(np.asarray(product_mask(reopened)), np.asarray(alpha))


def test_a_palette_png_with_a_transparent_colour_is_a_cut_out() -> None:
    pixels = np.zeros((32, 32), np.uint8)
    pixels[8:24, 10:20] = 1
    photo = Image.fromarray(pixels, "P")
    photo.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    photo.info["transparency"] = 0
    expected = np.where(pixels == 1, 255, 0)
    assert np.array_equal(np.asarray(product_mask(photo)), expected)


def test_an_opaque_alpha_channel_is_not_a_mask() -> None:
    photo, _ = opaque_photo()
    assert alpha_mask(photo.convert("RGBA")) is None
    assert alpha_mask(photo) is None


def test_an_opaque_photo_without_a_segmentation_model_says_what_to_do() -> None:
    photo, _ = opaque_photo()
    with pytest.raises(AtelierError) as caught:
        product_mask(photo.convert("RGBA"))
    message = str(caught.value)
    assert "models/segmentation/" in message and "PNG with transparency" in message
    assert "\n" not in message
    assert caught.value.field == "segmentation_model"


def test_a_photo_with_no_product_is_refused() -> None:
    empty = Image.new("RGBA", (64, 64), (200, 0, 0, 0))
    with pytest.raises(AtelierError, match="no product found in the photo") as caught:
        product_mask(empty)
    assert caught.value.field == "photo"
    with pytest.raises(AtelierError, match="no product found"):
        product_mask(Image.new("RGB", (64, 64)), mask=Image.new("L", (64, 64), 0))


def test_a_users_mask_is_used_as_given() -> None:
    photo, true_mask = opaque_photo()
    soft = true_mask.resize((48, 40)).resize(true_mask.size, Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(product_mask(photo, mask=soft)), np.asarray(soft))
    painted = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    painted.putalpha(true_mask)  # strokes on a transparent layer, as the mask editor exports them
    assert np.array_equal(np.asarray(product_mask(photo, mask=painted)), np.asarray(true_mask))


def test_a_mask_of_another_size_is_refused() -> None:
    photo, true_mask = opaque_photo()
    with pytest.raises(AtelierError, match="same size") as caught:
        product_mask(photo, mask=true_mask.resize((10, 10)))
    assert caught.value.field == "mask"


def test_a_tiny_photo_is_refused() -> None:
    with pytest.raises(AtelierError, match="at least 16 pixels") as caught:
        product_mask(Image.new("RGBA", (8, 40)))
    assert caught.value.field == "photo"


def _blob_mask() -> Image.Image:
    pixels = np.zeros((60, 80), np.uint8)
    pixels[10:50, 20:60] = 255  # the product
    pixels[25:30, 35:40] = 0  # a hole in it
    pixels[2:6, 2:6] = 255  # a stray speck
    return Image.fromarray(pixels)


def test_refinement_keeps_the_largest_part_and_can_fill_holes() -> None:
    kept = np.asarray(refine_mask(_blob_mask(), MaskRefinement(feather=0)))
    assert kept[2:6, 2:6].max() == 0  # the speck is gone
    assert kept[25:30, 35:40].max() == 0  # holes stay by default: they may be real openings
    assert kept[10:50, 20:60].sum() == 255 * (40 * 40 - 25)
    filled = np.asarray(refine_mask(_blob_mask(), MaskRefinement(fill_holes=True, feather=0)))
    assert filled[10:50, 20:60].min() == 255
    everything = np.asarray(refine_mask(_blob_mask(), MaskRefinement(keep_largest=False, feather=0)))
    assert everything[2:6, 2:6].min() == 255


def test_feathering_ramps_inward_only() -> None:
    hard = np.asarray(refine_mask(_blob_mask(), MaskRefinement(fill_holes=True, feather=0)))
    soft = np.asarray(refine_mask(_blob_mask(), MaskRefinement(fill_holes=True, feather=4)))
    assert np.all(soft[hard == 0] == 0)  # nothing outside the product
    assert soft[30, 40] == 255  # the middle is solid
    row = soft[30, 20:30]
    assert list(row) == sorted(row) and row[0] < 255 and row[-1] == 255


def test_feather_must_be_sensible() -> None:
    with pytest.raises(AtelierError) as caught:
        refine_mask(_blob_mask(), MaskRefinement(feather=-1))
    assert caught.value.field == "feather"


def test_the_cut_out_is_the_photo_cropped_to_the_product() -> None:
    photo, alpha = cutout_photo((96, 80))
    cutout = cut_out(photo, product_mask(photo))
    box = alpha.getbbox()
    assert box is not None and cutout.size == (box[2] - box[0], box[3] - box[1])
    assert cutout.image.mode == "RGB" and cutout.mask.mode == "L"
    assert np.array_equal(
        np.asarray(cutout.image), product_pixels((96, 80))[box[1] : box[3], box[0] : box[2]]
    )
    assert np.array_equal(np.asarray(cutout.mask), np.asarray(alpha.crop(box)))
