"""`atelier train ... --caption-missing [MODEL]`: images without a caption are captioned by a tiny BLIP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atelier.cli import main

FAST = [
    "--resolution",
    "64",
    "--min-bucket-reso",
    "32",
    "--max_bucket_reso",
    "128",
    "--bucket-reso-steps",
    "32",
    "--network-dim",
    "4",
    "--max-train-steps",
    "2",
    "--max-data-loader-n-workers",
    "0",
    "--seed",
    "1",
]


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def models_dir(tmp_path: Path, tiny_captioner: Path) -> Path:
    shutil.copytree(tiny_captioner, tmp_path / "models" / "captioning" / "tiny-blip")
    return tmp_path / "models"


def _photos(folder: Path) -> Path:
    """A kohya folder "10_oue bag": bag0 has no caption, bag1 one, bag2 an empty caption file."""
    images = folder / "10_oue bag"
    images.mkdir(parents=True)
    for index, size in enumerate([(64, 64), (96, 64), (64, 96)]):
        pixels = np.random.default_rng(index).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"bag{index}.png")
    (images / "bag1.txt").write_text("oue bag on a marble table\n")
    (images / "bag2.txt").write_text("")
    return folder


def test_images_without_a_caption_are_captioned_in_the_runs_copy(
    tiny_models, models_dir: Path, tmp_path: Path, capsys
) -> None:
    data = _photos(tmp_path / "data")
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(data),
            "--caption-missing",
            "--models-dir",
            str(models_dir),
            "--base",
            str(tiny_models("sd15")),
            "--out",
            str(out),
            *FAST,
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    copy = out / "dataset" / "10_oue bag"
    assert f"captions written by tiny-blip: 2, in {out / 'dataset'}" in printed.out
    assert "captioning 2 image(s) without a caption with tiny-blip" in printed.out
    written = {name: (copy / f"{name}.txt").read_text() for name in ("bag0", "bag2")}
    for caption in written.values():
        # The folder's class tokens (the trigger word) first, then the model's words, on one line.
        assert caption.startswith("oue bag, ") and caption.endswith("\n") and caption.count("\n") == 1
        assert len(caption.split(", ", 1)[1].split()) >= 1
    assert written["bag0"] != written["bag2"]  # two different photos
    assert (copy / "bag1.txt").read_text() == "oue bag on a marble table\n"  # a caption is kept as it is
    # The user's folder is left as it was.
    source = data / "10_oue bag"
    assert not (source / "bag0.txt").exists() and (source / "bag2.txt").read_text() == ""
    # The run trained on the new captions (kohya's tag counts read them).
    tags = json.loads((out / "summary.json").read_text())["dataset"]["tag_frequency"]["10_oue bag"]
    assert tags["oue bag"] == 2 and tags["oue bag on a marble table"] == 1
    assert "LoRA (A1111 / ComfyUI / kohya):" in printed.out


def test_without_the_flag_the_users_folder_is_used_in_place(
    tiny_models, models_dir: Path, tmp_path: Path, capsys
) -> None:
    data = _photos(tmp_path / "data")
    out = tmp_path / "run"
    code = main(["train", str(data), "--base", str(tiny_models("sd15")), "--out", str(out), *FAST])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "captions written" not in printed.out and "captioning" not in printed.out
    assert "2 image(s) in" in printed.out and "are captioned 'oue bag'" in printed.out  # today's warning
    assert not (out / "dataset").exists()
    assert not (data / "10_oue bag" / "bag0.txt").exists()
    tags = json.loads((out / "summary.json").read_text())["dataset"]["tag_frequency"]["10_oue bag"]
    assert tags == {"oue bag": 2, "oue bag on a marble table": 1}  # the class tokens, as before


def test_caption_missing_errors_are_one_line(tiny_models, models_dir: Path, tmp_path: Path, capsys) -> None:
    data = _photos(tmp_path / "data")
    base = str(tiny_models("sd15"))

    # No captioning model: the error says where to put one.
    empty = tmp_path / "no-models"
    code = main(["train", str(data), "--caption-missing", "--models-dir", str(empty), "--base", base])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"no captioning model in {empty / 'captioning'}/" in err and "config.json" in err

    # A name that is not there: the ones that are.
    code = main(["train", str(data), "--caption-missing", "blip-large", "--models-dir", str(models_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "the captioning models are tiny-blip" in err

    # A dataset.toml alone names folders anywhere: captions are only written into a run's copy of DATA.
    toml = tmp_path / "dataset.toml"
    toml.write_text(
        f"[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = '{data / '10_oue bag'}'\n"
    )
    out = tmp_path / "run-toml"
    code = main(
        ["train", "--dataset-config", str(toml), "--caption-missing", "--models-dir", str(models_dir)]
        + ["--base", base, "--out", str(out), *FAST]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs the training data as a folder or .zip" in err
    assert not out.exists()

    # A pickle-only model is refused before any training, and the run folder is not left behind.
    folder = models_dir / "captioning" / "tiny-blip"
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    out = tmp_path / "run"
    args = [
        "train",
        str(data),
        "--caption-missing=tiny-blip",
        "--models-dir",
        str(models_dir),
        "--base",
        base,
    ]
    code = main([*args, "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "refusing pytorch_model.bin" in err
    assert not out.exists() and not (data / "10_oue bag" / "bag0.txt").exists()
