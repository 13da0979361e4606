"""`atelier generate --control ...` and `atelier models create-tiny --arch controlnet-*`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from atelier.cli import main
from atelier.engine.infotext import parse_infotext


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    monkeypatch.delenv("ATELIER_PREPROCESSOR_MODELS", raising=False)
    torch.set_num_threads(1)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_models):
    """A models folder whose controlnet/ subfolder holds the tiny SD 1.5 ControlNet, made by the CLI."""
    root = tmp_path_factory.mktemp("cli-models")
    code = main(["models", "create-tiny", "--arch", "controlnet-sd15", str(root / "controlnet" / "outline")])
    assert code == 0
    return root


@pytest.fixture()
def sketch(tmp_path):
    path = tmp_path / "sketch.png"
    image = Image.new("RGB", (96, 64), "white")
    ImageDraw.Draw(image).rectangle((20, 10, 70, 50), outline="black", width=3)
    image.save(path)
    return path


def _generate(capsys, tiny_models, models_dir, out, *extra):
    return _run(
        capsys, "generate", "a leather bag", "--model", tiny_models("sd15"), "--models-dir", models_dir,
        "--steps", "2", "--width", "64", "--height", "64", "--seed", "5", "--out", out, *extra,
    )  # fmt: skip


def test_create_tiny_controlnet(models_dir):
    config = json.loads((models_dir / "controlnet" / "outline" / "config.json").read_text())
    assert config["_class_name"] == "ControlNetModel"
    assert config["cross_attention_dim"] == 32
    assert (models_dir / "controlnet" / "outline" / "atelier_demo.json").is_file()


def test_generate_with_two_controls_writes_maps_and_infotext(
    capsys, tmp_path, tiny_models, models_dir, sketch
):
    code, out, err = _generate(
        capsys, tiny_models, models_dir, tmp_path / "out",
        "--control", f"canny:{sketch}:0.8", "--control-model", "outline",
        "--control", f"invert:{sketch}:1:0:0.5", "--control-model", models_dir / "controlnet" / "outline",
        "--control-mode", "prompt", "--control-resize", "fill", "--control-preview", tmp_path / "maps",
    )  # fmt: skip
    assert code == 0, err
    (image,) = (tmp_path / "out").glob("*.png")
    info = parse_infotext(Image.open(image).info["parameters"])
    assert info["ControlNet 0"].startswith("Module: canny, Model: outline [")
    assert "Weight: 0.8, Resize Mode: Resize and Fill" in info["ControlNet 0"]
    assert "Guidance End: 0.5" in info["ControlNet 1"]
    assert info["ControlNet 1"].endswith("Control Mode: My prompt is more important")
    canny = np.asarray(Image.open(tmp_path / "maps" / "control-0-canny.png"))
    assert canny.shape == (64, 64, 3)
    # Resize and Fill: the 96x64 sketch fits at 64x43, black bands above and below.
    assert canny[:8].max() == 0 and canny[20:44].max() == 255
    assert "control-1-invert.png" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--control", "canny:{sketch}"], "give one model per control"),
        (["--control", "canny:{sketch}:0.5:0.2", "--control-model", "outline"], "expected MODULE:IMAGE"),
        (["--control", "canny:{sketch}", "--control-model", "depth"], "unknown ControlNet model 'depth'"),
        (["--control", "pose:{sketch}", "--control-model", "outline"], "unknown ControlNet module 'pose'"),
        (["--control", "depth:{sketch}", "--control-model", "outline"], "ATELIER_PREPROCESSOR_MODELS"),
        (["--control", "canny:missing.png", "--control-model", "outline"], "control image not found"),
        (["--control", "canny:{sketch}:2.5", "--control-model", "outline"], "controlnet_units[0].weight"),
        (["--control", "canny:{sketch}", "--control-model", "scribble"], "refusing to load scribble.ckpt"),
        (
            [
                "--control",
                "canny:{sketch}",
                "--control-model",
                "outline",
                "--control-mode",
                "a",
                "--control-mode",
                "b",
            ],
            "once for all units",
        ),
    ],
)
def test_control_errors_are_one_line(capsys, tmp_path, tiny_models, models_dir, sketch, extra, message):
    (models_dir / "controlnet" / "scribble.ckpt").write_bytes(b"\x80\x04 pickle")
    argv = [arg.replace("{sketch}", str(sketch)) for arg in extra]
    code, _, err = _generate(capsys, tiny_models, models_dir, tmp_path / "out", *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert message in err
