"""`atelier product PHOTO ...`: product shots from the command line, on the tiny SD 1.5 model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

import atelier.cli
from atelier.engine import COMPOSITE, source_type_of
from product_helpers import cutout_photo, opaque_photo, write_tiny_sam


@pytest.fixture
def models_dir(tmp_path, tiny_models):
    folder = tmp_path / "models"
    shutil.copytree(tiny_models("sd15"), folder / "tiny")
    return folder


def _run(capsys, *argv):
    code = atelier.cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_cutout_becomes_shots_channels_and_upscales_with_the_product_exact(tmp_path, models_dir, capsys):
    photo, alpha = cutout_photo((64, 64), soft_edge=False)
    photo.save(tmp_path / "bottle.png")
    out = tmp_path / "shots"
    code, printed, err = _run(
        capsys,
        "product", str(tmp_path / "bottle.png"), "--model", "tiny", "--models-dir", str(models_dir),
        "--scene", "marble", "--product", "a glass bottle", "--size", "64x64", "--steps", "2", "--seed", "5",
        "--count", "2", "--channels", "64x96", "--upscale", "2", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    names = sorted(path.name for path in out.iterdir())
    assert names == sorted(
        [
            "shot-0.png",
            "shot-1.png",
            "64x96-0.png",
            "64x96-1.png",
            "upscaled-0.png",
            "upscaled-1.png",
            "mask.png",
        ]
    )
    assert "shot-0.png  seed=5" in printed and "shot-1.png  seed=6" in printed
    with Image.open(out / "mask.png") as mask:
        assert np.array_equal(np.asarray(mask), np.asarray(alpha))
    for name in ("shot-0.png", "64x96-0.png", "upscaled-1.png"):
        with Image.open(out / name) as picture:
            assert source_type_of(picture) == COMPOSITE
            assert picture.info["parameters"].startswith("a glass bottle, ")
    with Image.open(out / "64x96-0.png") as channel, Image.open(out / "upscaled-0.png") as bigger:
        assert channel.size == (64, 96) and bigger.size == (128, 128)


def test_jpeg_output_keeps_the_disclosure(tmp_path, models_dir, capsys):
    photo, _alpha = cutout_photo((64, 64))
    photo.save(tmp_path / "bottle.webp", lossless=True)
    out = tmp_path / "shots"
    code, _printed, err = _run(
        capsys,
        "product", str(tmp_path / "bottle.webp"), "--model", "tiny", "--models-dir", str(models_dir),
        "--size", "64x64", "--steps", "2", "--no-shadow", "--format", "jpeg", "--quality", "92", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    with Image.open(out / "shot-0.jpg") as picture:
        assert picture.format == "JPEG" and source_type_of(picture) == COMPOSITE


def test_an_opaque_photo_is_cut_out_by_a_sam_model_in_the_models_folder(tmp_path, models_dir, capsys):
    photo, _mask = opaque_photo((120, 80))
    photo.save(tmp_path / "bottle.jpg", quality=95)
    code, _printed, err = _run(
        capsys, "product", str(tmp_path / "bottle.jpg"), "--model", "tiny", "--models-dir", str(models_dir),
        "--size", "64x64", "--steps", "2", "--out", str(tmp_path / "shots"),
    )  # fmt: skip
    assert (
        code == 2 and "segmentation" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    )
    write_tiny_sam(models_dir / "segmentation" / "tiny-sam", license_note='license = "apache-2.0"\n')
    photo.save(tmp_path / "bottle.png")
    code, printed, err = _run(
        capsys, "product", str(tmp_path / "bottle.png"), "--model", "tiny", "--models-dir", str(models_dir),
        "--size", "64x64", "--steps", "2", "--out", str(tmp_path / "shots"),
    )  # fmt: skip
    assert code == 0, err
    assert "cutting out the product with tiny-sam (licence: apache-2.0)" in printed
    with Image.open(tmp_path / "shots" / "mask.png") as mask:
        assert mask.size == (120, 80) and np.asarray(mask).max() == 255


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scene", "moon"], "unknown scene"),
        (["--channels", "square,12x"], "channel"),
        (["--size", "100x64"], "multiple of 8"),
        (["--shadow-opacity", "2"], "opacity"),
        (["--model", "nope"], "nope"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, models_dir, capsys, extra, message):
    photo, _alpha = cutout_photo((64, 64))
    photo.save(tmp_path / "bottle.png")
    args = ["product", str(tmp_path / "bottle.png"), "--models-dir", str(models_dir), "--size", "64x64"]
    args += ["--model", "tiny", "--out", str(tmp_path / "shots"), *extra]
    code, _printed, err = _run(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_list_scenes(capsys):
    code, printed, _err = _run(capsys, "product", "--list-scenes")
    assert code == 0 and "marble" in printed and "story 1080x1920" in printed


def test_expand_only_keeps_the_picture_exact(tmp_path, models_dir, capsys):
    rng = np.random.default_rng(2)
    picture = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    picture.save(tmp_path / "shot.png")
    out = tmp_path / "wide"
    code, printed, err = _run(
        capsys, "product", str(tmp_path / "shot.png"), "--expand-only", "--channels", "128x64",
        "--model", "tiny", "--models-dir", str(models_dir), "--steps", "2", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    with Image.open(out / "128x64.png") as wide:
        pixels = np.asarray(wide.convert("RGB"))
        assert pixels.shape == (64, 128, 3) and source_type_of(wide) == COMPOSITE
    assert np.array_equal(pixels[:, 32:96], np.asarray(picture))
    code, _printed, err = _run(
        capsys, "product", str(tmp_path / "shot.png"), "--expand-only", "--model", "tiny",
        "--models-dir", str(models_dir), "--out", str(out),
    )  # fmt: skip
    assert code == 2 and "--channels" in err
