"""ControlNet preprocessors: maps as sd-webui-controlnet makes them, and the three resize modes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from atelier.engine import preprocessors
from atelier.engine.preprocessors import (
    MODULES,
    PREPROCESSOR_MODELS_ENV,
    canonical_module,
    fit_map,
    pixel_perfect_resolution,
    preprocess,
    preview,
)
from atelier.errors import AtelierError, NotFoundError, UnsafeFileError


@pytest.fixture(autouse=True)
def _no_configured_models(monkeypatch):
    monkeypatch.delenv(PREPROCESSOR_MODELS_ENV, raising=False)
    torch.set_num_threads(1)


def _drawing(size=(64, 64)) -> Image.Image:
    image = Image.new("RGB", size, (230, 220, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 10, 40, 50), fill=(30, 60, 150))
    draw.rectangle((36, 4, 60, 30), outline=(200, 20, 20), width=3)
    draw.line((0, 63, 63, 40), fill=(10, 10, 10), width=2)
    return image


@pytest.mark.parametrize(("low", "high"), [(100, 200), (20, 60)])
def test_canny_equals_opencv(low, high):
    image = _drawing()
    detected = preprocess(image, "canny", processor_res=64, threshold_a=low, threshold_b=high)
    expected = cv2.Canny(np.asarray(image), low, high)
    assert detected.shape == (64, 64, 3)
    for channel in range(3):
        assert np.array_equal(detected[:, :, channel], expected)


def test_canny_defaults_are_the_extension_thresholds_at_512():
    image = _drawing()
    detected = preprocess(image, "canny")
    assert detected.shape == (512, 512, 3)
    upscaled = cv2.resize(np.asarray(image), (512, 512), interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(detected[:, :, 0], cv2.Canny(upscaled, 100, 200))


def test_canny_works_on_the_short_side_and_keeps_the_aspect_ratio():
    detected = preprocess(_drawing((160, 96)), "canny", processor_res=48)
    assert detected.shape == (48, 80, 3)
    assert set(np.unique(detected)) <= {0, 255}


def test_none_passes_the_map_and_invert_turns_black_lines_white():
    drawing = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    ImageDraw.Draw(drawing).line((0, 16, 31, 16), fill=(0, 0, 0, 255), width=2)
    assert np.array_equal(preprocess(_drawing(), "none"), np.asarray(_drawing()))
    inverted = preprocess(drawing, "invert (from white bg & black line)")
    # Transparent paper counts as white, so the line comes out white on black.
    assert (inverted[16, :] == 255).all()
    assert (inverted[0, :] == 0).all()


def test_sixteen_bit_maps_are_stretched_not_clipped():
    depth = np.linspace(0, 4000, 64 * 64, dtype=np.uint16).reshape(64, 64)
    detected = preprocess(Image.fromarray(depth), "none")
    assert detected.shape == (64, 64, 3)
    assert detected.min() == 0 and detected.max() == 255 and len(np.unique(detected)) > 200


def test_lineart_standard_finds_dark_lines_on_paper():
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).line((32, 0, 32, 63), fill="black", width=2)
    detected = preprocess(image, "lineart_standard", processor_res=64)
    line = np.asarray(image)[:, :, 0] < 128
    assert detected[line, 0].min() > 100
    assert detected[~line].max() == 0


def _stripes() -> np.ndarray:
    """128x64: red, green, blue vertical stripes 32, 64 and 32 pixels wide."""
    stripes = np.zeros((64, 128, 3), dtype=np.uint8)
    stripes[:, :32] = (255, 0, 0)
    stripes[:, 32:96] = (0, 255, 0)
    stripes[:, 96:] = (0, 0, 255)
    return stripes


def _colour_columns(image: np.ndarray, row: int) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in pixel) for pixel in image[row]]


def test_just_resize_stretches():
    fitted = fit_map(_stripes(), "Just Resize", 64, 64)
    columns = _colour_columns(fitted, 32)
    assert columns[:16] == [(255, 0, 0)] * 16
    assert columns[16:48] == [(0, 255, 0)] * 32
    assert columns[48:] == [(0, 0, 255)] * 16


def test_crop_and_resize_covers_and_keeps_the_middle():
    fitted = fit_map(_stripes(), "Crop and Resize", 64, 64)
    assert (fitted == (0, 255, 0)).all()


def test_resize_and_fill_fits_and_pads_with_the_border_colour():
    fitted = fit_map(_stripes(), 2, 64, 64)
    # The whole picture at half size in rows 16..47; the border's median colour (black) above and below.
    assert (fitted[:16] == 0).all() and (fitted[48:] == 0).all()
    columns = _colour_columns(fitted, 32)
    assert columns[:16] == [(255, 0, 0)] * 16 and columns[16:48] == [(0, 255, 0)] * 32


def test_pixel_perfect_resolution_follows_the_resize_mode():
    assert pixel_perfect_resolution((128, 64), 64, 64, "Crop and Resize") == 64
    assert pixel_perfect_resolution((128, 64), 64, 64, "Resize and Fill") == 32
    assert pixel_perfect_resolution((1024, 768), 512, 512, "Just Resize") == 512


def test_preview_is_the_map_at_the_output_size():
    image = _drawing((96, 64))
    shown = preview(image, "canny", width=64, height=48, resize_mode="Just Resize", pixel_perfect=True)
    assert shown.size == (64, 48) and shown.mode == "RGB"
    values = set(np.unique(np.asarray(shown)))
    assert values <= {0, 255} and values == {0, 255}


def test_module_names_and_aliases():
    assert canonical_module("hed") == "softedge_hed"
    assert canonical_module("depth") == "depth_midas"
    assert canonical_module("lineart") == "lineart_realistic"
    assert set(MODULES) >= {"none", "canny", "invert", "depth_midas", "depth_anything", "softedge_hed"}
    with pytest.raises(AtelierError, match="unknown ControlNet module 'openpose'"):
        canonical_module("openpose")


@pytest.mark.parametrize("module", ["depth_anything", "lineart_realistic", "softedge_hed"])
def test_modules_with_models_say_how_to_provide_one(module):
    with pytest.raises(AtelierError, match=PREPROCESSOR_MODELS_ENV):
        preprocess(_drawing(), module)


def test_a_missing_or_pickled_model_folder_is_named(tmp_path):
    with pytest.raises(NotFoundError, match="softedge_hed"):
        preprocess(_drawing(), "softedge_hed", models_dir=tmp_path)
    (tmp_path / "softedge_hed").mkdir()
    (tmp_path / "softedge_hed" / "ControlNetHED.pth").write_bytes(b"\x80\x04 pickle")
    with pytest.raises(UnsafeFileError):
        preprocess(_drawing(), "softedge_hed", models_dir=tmp_path)


def test_depth_runs_a_local_transformers_model(tmp_path):
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    config = DPTConfig(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 8, 8, 8],
        fusion_hidden_size=8,
        reassemble_factors=[4, 2, 1, 0.5],
    )
    folder = tmp_path / "depth_midas"
    DPTForDepthEstimation(config).save_pretrained(str(folder))
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(str(folder))
    shown = preview(_drawing(), "depth", width=64, height=64, processor_res=64, models_dir=tmp_path)
    depth = np.asarray(shown)
    assert depth.shape == (64, 64, 3)
    assert (depth[:, :, 0] == depth[:, :, 2]).all()
    assert depth.min() == 0 and depth.max() == 255


@pytest.mark.parametrize(("module", "kind"), [("lineart_coarse", "lineart"), ("softedge_hed", "hed")])
def test_line_models_run_from_safetensors(tmp_path, module, kind):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    network = preprocessors._lineart_network() if kind == "lineart" else preprocessors._hed_network()
    (tmp_path / module).mkdir()
    save_file(
        {k: v.contiguous() for k, v in network.state_dict().items()},
        str(tmp_path / module / "model.safetensors"),
    )
    detected = preprocess(_drawing((96, 64)), module, processor_res=64, models_dir=tmp_path)
    assert detected.shape == (64, 96, 3)
    assert (detected[:, :, 0] == detected[:, :, 1]).all()
    other = "softedge_hed" if kind == "lineart" else "lineart_coarse"
    (tmp_path / other).mkdir()
    (tmp_path / other / "model.safetensors").write_bytes(
        (tmp_path / module / "model.safetensors").read_bytes()
    )
    with pytest.raises(AtelierError, match="does not hold"):
        preprocess(_drawing(), other, processor_res=64, models_dir=tmp_path)
