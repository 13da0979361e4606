"""Atelier's engine against plain diffusers, side by side in one run.

CPU (any machine): a tiny SD 1.5-shaped model, txt2img at 256x256 with 20 steps, both ways, interleaved, and the
ratio of median times (goal <= 1.02) with the maximum pixel difference (goal <= 2).

CUDA: also full-size SD 1.5 and SDXL architectures with random weights (speed does not depend on weight values),
reporting it/s at 512x512 and 1024x1024 in fp16 for both ways.

    python bench/engine_vs_diffusers.py [--runs 5] [--size 256] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from atelier.cli.common import quiet_libraries
from atelier.engine.generate import Engine
from atelier.engine.request import GenerationRequest
from atelier.engine.samplers import make_scheduler
from atelier.engine.tiny import create_tiny_model

PROMPT = "a product photo of a yellow windbreaker, forest, masterpiece"
NEGATIVE = "low quality, watermark"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compare(model_path: Path, *, device: str, dtype: torch.dtype, size: int, steps: int, runs: int) -> dict:
    import diffusers

    engine = Engine(device=device, dtype=dtype)
    model = engine.load(model_path)
    pipeline_cls = type(model.pipeline)
    reference = pipeline_cls.from_pretrained(str(model_path), dtype=dtype, **_extra(model.architecture))
    reference.to(device)
    reference.set_progress_bar_config(disable=True)
    reference.scheduler = make_scheduler("Euler a", dict(reference.scheduler.config))
    assert isinstance(reference, diffusers.DiffusionPipeline)
    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        model=str(model_path),
        steps=steps,
        width=size,
        height=size,
        seed=7,
    )

    def run_atelier():
        return engine.generate(request).images[0].image

    def run_diffusers():
        generator = torch.Generator("cpu").manual_seed(7)
        return reference(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=steps,
            guidance_scale=request.cfg_scale,
            width=size,
            height=size,
            generator=generator,
        ).images[0]

    ours, theirs = run_atelier(), run_diffusers()  # warm-up, and the pictures to compare
    atelier_times, diffusers_times = [], []
    for _ in range(runs):
        for fn, times in ((run_atelier, atelier_times), (run_diffusers, diffusers_times)):
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            times.append(time.perf_counter() - start)
    diff = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16)).max()
    a, d = statistics.median(atelier_times), statistics.median(diffusers_times)
    return {
        "atelier_s": a,
        "diffusers_s": d,
        "ratio": a / d,
        "max_pixel_diff": int(diff),
        "it_s": steps / a,
        "diffusers_it_s": steps / d,
    }


def _extra(arch: str) -> dict:
    return {"safety_checker": None, "requires_safety_checker": False} if arch.startswith("sd15") else {}


def _full_size_model(arch: str, root: Path) -> Path:
    """A full-size architecture with random weights, from the configs shipped in the package."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from atelier.engine.architectures import config_dir
    from atelier.engine.tokenizer import clip_tokenizer

    folder = config_dir(arch)
    tokenizer = clip_tokenizer("clip-l")
    unet = diffusers.UNet2DConditionModel.from_config(
        diffusers.UNet2DConditionModel.load_config(folder / "unet")
    )
    vae = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(folder / "vae"))
    scheduler = diffusers.EulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    text_config = CLIPTextConfig.from_pretrained(folder / "text_encoder")
    text_encoder = CLIPTextModel(text_config)
    if arch == "sd15":
        pipe = diffusers.StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
        )
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=clip_tokenizer("clip-g"),
            unet=unet,
            scheduler=scheduler,
        )
    out = root / arch
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny = create_tiny_model("sd15", root / "tiny-sd15")
        row = compare(
            tiny, device="cpu", dtype=torch.float32, size=args.size, steps=args.steps, runs=args.runs
        )
        print(
            f"tiny sd15 cpu {args.size}x{args.size} {args.steps} steps: atelier {row['atelier_s']:.3f}s "
            f"diffusers {row['diffusers_s']:.3f}s ratio {row['ratio']:.3f} max pixel diff {row['max_pixel_diff']}"
        )
        if torch.cuda.is_available():
            for arch, size in (("sd15", 512), ("sdxl", 1024)):
                path = _full_size_model(arch, root)
                row = compare(path, device="cuda", dtype=torch.float16, size=size, steps=args.steps, runs=3)
                print(
                    f"{arch} cuda fp16 {size}x{size}: atelier {row['it_s']:.2f} it/s, diffusers "
                    f"{row['diffusers_it_s']:.2f} it/s, ratio {row['ratio']:.3f}"
                )


if __name__ == "__main__":
    main()
