"""Expanding a picture to another shape: placement, the canvas and its mask, exact recompositing, channel data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from atelier.campaign.ad.spec import CHANNEL_PRESETS
from atelier.campaign.product import channel, expand_canvas, fit, load_channels, recomposite, work_size
from atelier.errors import AtelierError
from product_helpers import product_pixels


def test_the_shipped_channels_include_the_ad_composers_with_the_same_sizes() -> None:
    channels = load_channels()
    for name, size in CHANNEL_PRESETS.items():
        assert channels[name].size == size
    assert channels["landscape"].size == (1920, 1080)
    assert channel("story").size == (1080, 1920)
    assert channel(" Banner ").size == (1200, 628)
    assert channel("640x480").size == (640, 480)


def test_an_unknown_channel_lists_the_known_ones() -> None:
    with pytest.raises(AtelierError, match="did you mean 'story'") as caught:
        channel("stroy")
    assert caught.value.field == "channels"
    assert "landscape" in str(caught.value)
    with pytest.raises(AtelierError, match="each side must be"):
        channel("10x5000")


def test_a_channels_file_is_checked(tmp_path) -> None:
    (tmp_path / "channels.toml").write_text("[tall]\nwidth = 600\nheigth = 900\n", encoding="utf-8")
    with pytest.raises(AtelierError, match="did you mean 'height'"):
        load_channels(tmp_path / "channels.toml")
    (tmp_path / "channels.toml").write_text("[huge]\nwidth = 600\nheight = 9000\n", encoding="utf-8")
    with pytest.raises(AtelierError, match="64 to 4096"):
        load_channels(tmp_path / "channels.toml")
    (tmp_path / "channels.toml").write_text(
        '[tall]\nwidth = 600\nheight = 904\nuse = "x"\n', encoding="utf-8"
    )
    assert load_channels(tmp_path / "channels.toml")["tall"].size == (600, 904)


@pytest.mark.parametrize(
    ("anchor", "box"),
    [
        ("center", (0, 40, 100, 140)),
        ("top", (0, 0, 100, 100)),
        ("bottom-right", (0, 80, 100, 180)),
    ],
)
def test_fit_places_without_a_crop(anchor, box) -> None:
    placement = fit((100, 100), (100, 180), anchor=anchor)
    assert placement.box == box
    assert placement.scale == (1.0, 1.0)
    scaled = fit((200, 100), (100, 180))
    assert scaled.box == (0, 65, 100, 115) and scaled.scale == (0.5, 0.5)
    with pytest.raises(AtelierError) as caught:
        fit((1, 1), (2, 2), anchor="middle")
    assert caught.value.field == "anchor"


def test_work_size_keeps_the_shape_in_multiples_of_eight() -> None:
    assert work_size((1080, 1920), (512, 512)) == (512, 912)  # the shot is not reduced
    assert work_size((1080, 1920), (1024, 1024)) == (576, 1024)  # but at most 1024 long
    assert work_size((1200, 628), (512, 512), max_side=768) == (768, 400)
    for size in (work_size((1500, 500), (300, 300)), work_size((728, 90), (64, 64))):
        assert all(side % 8 == 0 and side >= 64 for side in size)


def test_the_canvas_mask_is_zero_over_the_original_and_feathered_on_the_new_side() -> None:
    original = Image.fromarray(product_pixels((64, 64)))
    canvas = expand_canvas(original, (64, 128), feather=8)
    left, top, right, bottom = canvas.placement.box
    assert (left, top, right, bottom) == (0, 32, 64, 96)
    mask = np.asarray(canvas.mask)
    assert mask[top:bottom].max() == 0  # not one original pixel is to be generated
    assert mask[:top].min() > 0 and mask[bottom:].min() > 0
    column = mask[:top, 10][::-1]  # from the seam outward
    assert list(column) == sorted(column) and column[0] < 64 and column[-1] == 255 and column[8] == 255
    pixels = np.asarray(canvas.image)
    assert np.array_equal(pixels[top:bottom], np.asarray(original))
    # The new area is pre-filled from the original's edge colours, not left black.
    assert (
        pixels[:top].mean() > 20 and np.abs(pixels[top - 1].astype(int) - pixels[top].astype(int)).mean() < 40
    )


def test_recomposite_keeps_the_original_exact_whatever_was_generated() -> None:
    original = Image.fromarray(product_pixels((64, 48)))
    canvas = expand_canvas(original, (120, 48), feather=6, anchor="left")
    generated = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 60, 3), dtype=np.uint8))
    result = np.asarray(recomposite(generated, canvas))  # generated at half size: brought to the canvas first
    assert result.shape == (48, 120, 3)
    assert np.array_equal(result[:, :64], np.asarray(original))
    resized = np.asarray(generated.resize((120, 48), Image.Resampling.LANCZOS))
    assert np.array_equal(result[:, 64 + 6 :], resized[:, 64 + 6 :])  # past the feather: all generated


def test_a_picture_of_the_right_shape_has_nothing_to_generate() -> None:
    original = Image.fromarray(product_pixels((50, 50)))
    canvas = expand_canvas(original, (100, 100))
    assert not canvas.has_new_area
    assert np.asarray(canvas.mask).max() == 0


def test_expanding_checks_its_settings() -> None:
    original = Image.fromarray(product_pixels((50, 50)))
    with pytest.raises(AtelierError) as caught:
        expand_canvas(original, (100, 60), feather=-2)
    assert caught.value.field == "feather"
    with pytest.raises(AtelierError) as caught:
        work_size((100, 100), (50, 50), max_side=10)
    assert caught.value.field == "max_work_side"
