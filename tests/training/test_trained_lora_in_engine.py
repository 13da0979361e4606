"""A LoRA trained by Atelier, used through a `<lora:...>` tag, gives the picture diffusers gives with it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atelier.training.config import load_train_config
from atelier.training.recipe import train_lora


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_trained_lora_tag_equals_diffusers_load_lora_weights(tiny_models, tmp_path: Path, arch: str) -> None:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from atelier.engine.generate import Engine
    from atelier.engine.loras import LoraLibrary
    from atelier.engine.request import GenerationRequest

    images = tmp_path / "data" / "2_oue car"
    images.mkdir(parents=True)
    for index in range(3):
        pixels = np.random.default_rng(index).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"car{index}.png")
        (images / f"car{index}.txt").write_text(f"oue car, photo {index}\n", encoding="utf-8")
    config = load_train_config(
        {
            "resolution": 64,
            "min_bucket_reso": 32,
            "max_bucket_reso": 128,
            "bucket_reso_steps": 32,
            "network_dim": 4,
            "network_alpha": 4.0,
            "learning_rate": 0.05,
            "max_train_steps": 2,
            "train_batch_size": 1,
            "max_data_loader_n_workers": 0,
            "seed": 1,
            "output_name": "oue_car",
        }
    )
    model = tiny_models(arch)
    result = train_lora(config, data=tmp_path / "data", base_model=model, out_dir=tmp_path / "run")
    loras = tmp_path / "loras"
    loras.mkdir()
    shutil.copy(result.output_file, loras / "oue_car.safetensors")

    engine = Engine(device="cpu", loras=LoraLibrary(loras))
    request = GenerationRequest(
        prompt="oue car, photo <lora:oue_car:1>",
        negative_prompt="blurry",
        model=str(model),
        steps=3,
        width=64,
        height=64,
        seed=11,
    )
    generated = engine.generate(request).images[0]
    ours = np.asarray(generated.image, dtype=np.int16)
    # What made the picture, for its Content Credentials: the LoRA, with the hash of the data it learned from.
    [lora] = generated.provenance.generation["loras"]
    lines = sorted(
        f"{hashlib.sha256((images / f'car{index}.png').read_bytes()).hexdigest()} "
        f"{hashlib.sha256(f'oue car, photo {index}'.encode()).hexdigest()} train"
        for index in range(3)
    )
    assert lora["training"]["dataset_sha256"] == hashlib.sha256("\n".join(lines).encode()).hexdigest()
    assert lora["training"]["dataset_dirs"] == {"2_oue car": {"n_repeats": 2, "img_count": 3}}

    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    extra = {} if arch == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    pipe = cls.from_pretrained(str(model), **extra)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def diffusers_image() -> np.ndarray:
        image = pipe(
            "oue car, photo",
            negative_prompt="blurry",
            num_inference_steps=3,
            width=64,
            height=64,
            guidance_scale=7.0,
            generator=torch.Generator("cpu").manual_seed(11),
        ).images[0]
        return np.asarray(image, dtype=np.int16)

    plain = diffusers_image()
    pipe.load_lora_weights(str(result.diffusers_file))
    theirs = diffusers_image()
    assert np.abs(ours - theirs).max() <= 2
    assert (ours != plain).any()
