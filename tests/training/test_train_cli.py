"""`atelier train`: the SDXL DreamBooth-LoRA preset from a .zip, and one-line errors."""

from __future__ import annotations

import json
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from atelier.cli import main


def _photo(seed: int, size: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_sdxl_dreambooth_preset_trains_from_a_zip_of_uncaptioned_photos(
    tiny_models, tmp_path: Path, capsys
) -> None:
    torch.set_num_threads(1)
    # The second seed's shape: photos of the product without captions, a trigger word in the instance prompt.
    archive = tmp_path / "training_data.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for index, size in enumerate([(64, 64), (96, 64), (64, 96)]):
            bundle.writestr(f"oue/car{index}.jpg", _photo(index, size))
    out = tmp_path / "run"

    code = main(
        [
            "train",
            str(archive),
            "--base",
            str(tiny_models("sdxl")),
            "--preset",
            "sdxl-dreambooth-lora",
            "--out",
            str(out),
            "--instance-prompt",
            "photo of oue car",
            "--resolution",
            "64",
            "--min-bucket-reso",
            "32",
            "--max_bucket_reso",
            "128",
            "--bucket-reso-steps",
            "32",
            "--max-train-steps",
            "2",
            "--gradient_accumulation_steps",
            "1",
            "--max-data-loader-n-workers",
            "0",
            "--seed",
            "3",
            "--output-name",
            "oue",
        ]
    )

    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"LoRA (A1111 / ComfyUI / kohya): {out / 'oue.safetensors'}" in printed.out
    assert (out / "dataset" / "oue" / "car0.jpg").is_file()
    summary = json.loads((out / "summary.json").read_text())
    effective = summary["effective"]
    assert effective["trained"] == ["unet"] and effective["mixed_precision"] == "no"
    assert effective["latent_cache"] == "memory" and effective["text_encoder_cache"] is True
    assert summary["dataset"]["tag_frequency"] == {"oue": {"photo of oue car": 3}}
    assert any("needs a GPU" in warning for warning in summary["warnings"])
    with safe_open(str(out / "oue.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())  # noqa: SIM118
        metadata = handle.metadata()
    assert keys and all(key.startswith("lora_unet_") for key in keys)
    assert metadata["ss_network_dim"] == "4" and metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert (out / "pytorch_lora_weights.safetensors").is_file()


def test_errors_are_one_line_with_exit_code_2(tiny_models, tmp_path: Path, capsys) -> None:
    code = main(
        [
            "train",
            str(tmp_path / "missing.zip"),
            "--base",
            str(tiny_models("sd15")),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: training data not found") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()

    code = main(["train", str(tmp_path), "--base", str(tmp_path / "nope"), "--network_dim", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "network_dim must be at least 1" in err
