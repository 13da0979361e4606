"""What a new user does first, end to end through the `atelier` command: nothing from the hub, nothing surprising."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atelier.cli import main


def _atelier(*args: object, env: dict[str, str] | None = None, cwd: Path | None = None):
    """The real command in a new process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "atelier", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def offline_env(tmp_path) -> dict[str, str]:
    """No network and an empty Hugging Face cache: an offline studio on a fresh machine."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "empty-hf-home"),
        "HF_HUB_CACHE": str(tmp_path / "empty-hf-home" / "hub"),
        "OMP_NUM_THREADS": "1",
    }


def test_an_exported_single_file_generates_offline_with_nothing_beside_it(tmp_path, tiny_models, offline_env):
    os.umask(0o022)
    exported = tmp_path / "exported" / "my-checkpoint.safetensors"
    done = _atelier("models", "export", tiny_models("sdxl"), exported, env=offline_env)
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in exported.parent.iterdir()) == ["my-checkpoint.safetensors"]
    assert _mode(exported) == 0o644
    done = _atelier(
        "generate", "a (yellow windbreaker:1.3) in a forest", "--model", exported, "--steps", 2,
        "--width", 64, "--height", 64, "--out", tmp_path / "out", env=offline_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (image,) = (tmp_path / "out").glob("*.png")
    assert Image.open(image).size == (64, 64)
    assert _mode(image) == 0o644


def _hub_cache_copy(cache: Path, repo_id: str, model: Path) -> Path:
    """A model as `huggingface-cli download` leaves it: blobs, a snapshot of symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    for source in model.rglob("*"):
        if source.is_file():
            blob = repo / "blobs" / f"{abs(hash(str(source))):x}"
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, blob)
            link = snapshot / source.relative_to(model)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    return repo


def test_a_hub_id_uses_the_local_cache_and_never_downloads(tmp_path, tiny_models, offline_env):
    cache = Path(offline_env["HF_HUB_CACHE"])
    repo = _hub_cache_copy(cache, "acme/tiny-sd15", tiny_models("sd15"))
    common = ["--steps", 2, "--width", 64, "--height", 64, "--seed", 1]
    by_id = _atelier(
        "generate",
        "a red shoe",
        "--model",
        "acme/tiny-sd15",
        *common,
        "--out",
        tmp_path / "a",
        env=offline_env,
    )
    assert by_id.returncode == 0, by_id.stderr
    by_folder = _atelier(
        "generate", "a red shoe", "--model", repo, *common, "--out", tmp_path / "b", env=offline_env
    )
    assert by_folder.returncode == 0, by_folder.stderr
    first, second = (np.asarray(Image.open(next(p.glob("*.png")))) for p in (tmp_path / "a", tmp_path / "b"))
    assert (first == second).all()

    missing = _atelier(
        "generate", "x", "--model", "runwayml/stable-diffusion-v1-5", env=offline_env, cwd=tmp_path
    )
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "error: 'runwayml/stable-diffusion-v1-5' looks like a Hugging Face model id, and Atelier never downloads "
        "models: copy the model's single .safetensors file into atelier-data/models, or give the path of a local "
        "Hugging Face cache snapshot (.../models--runwayml--stable-diffusion-v1-5/snapshots/<revision>)"
    )


def _captioned_images(folder: Path) -> Path:
    images = folder / "1_windbreaker"
    images.mkdir(parents=True)
    for index in range(2):
        pixels = np.random.default_rng(index).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{index}.png")
        (images / f"{index}.txt").write_text("a yellow windbreaker, forest")
    return folder


def test_a_trained_lora_is_used_by_its_folder_name_and_never_taken_for_a_checkpoint(
    tmp_path, tiny_models, monkeypatch, capsys
):
    import torch

    torch.set_num_threads(1)
    os.umask(0o022)
    models = tmp_path / "models"
    shutil.copytree(tiny_models("sd15"), models / "tiny-sd15")
    code = main(
        [
            "train", str(_captioned_images(tmp_path / "data")), "--base", str(models / "tiny-sd15"),
            "--out", str(models / "windbreaker"), "--resolution", "64", "--train_batch_size", "2",
            "--max_train_steps", "1", "--network_dim", "4", "--max_data_loader_n_workers", "0",
            "--enable_bucket", "false",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    run = models / "windbreaker"
    assert _mode(run / "pytorch_lora_weights.safetensors") == 0o644
    assert _mode(run / "lora.safetensors") == 0o644
    # The kohya file copied to the top of the folder, as people do: a LoRA, never the default checkpoint.
    shutil.copyfile(run / "lora.safetensors", models / "aaa-windbreaker-kohya.safetensors")
    capsys.readouterr()
    code = main(
        [
            "generate", "a yellow windbreaker <lora:windbreaker:1> <lora:aaa-windbreaker-kohya:0.5>",
            "--models-dir", str(models), "--steps", "2", "--width", "64", "--height", "64",
            "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (image,) = (tmp_path / "out").glob("*.png")
    infotext = Image.open(image).info["parameters"]
    assert re.search(r'Model: "?tiny-sd15 \(demo', infotext)
    assert "windbreaker: " in infotext and "aaa-windbreaker-kohya: " in infotext  # Lora hashes
