"""The "fast" modes (DeepCache N=3, ToMe 0.5) against eager execution, interleaved in one run.

Reports:
- CPU time of a whole txt2img call, and of UNet calls alone (averaged over a full and two cached calls), on the
  tiny random-weight SD 1.5 and SDXL models, eager and each fast mode run in turn (interleaved, so that a noisy
  shared machine slows them alike), as medians and ratios to eager, with the largest pixel difference to the
  eager picture;
- with ``--flops``, the UNet FLOPs per call of the real SD 1.5 (512 px) and SDXL (1024 px) UNets (shapes from
  their configs, on torch's "meta" device: no weights, no memory, no time), which says what the speed-ups can
  give at full size where the UNet dominates. A tiny model's time is mostly per-module overhead, not FLOPs.

    python bench/fast_modes.py [--repeats 5] [--size 128] [--steps 12] [--threads 2] [--flops]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atelier.cli.common import quiet_libraries
from atelier.engine.fast import FAST_MODES, fast_mode
from atelier.engine.tiny import create_tiny_model

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "atelier" / "engine" / "configs"


def _tiny_times(arch: str, root: Path, args: argparse.Namespace) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(str(create_tiny_model(arch, root / arch)))
    pipe.set_progress_bar_config(disable=True)

    def generate(mode: str) -> tuple[float, np.ndarray | None]:
        start = time.perf_counter()
        with torch.inference_mode(), fast_mode(pipe.unet, mode):
            images = pipe(
                prompt="a product photo of a red bag",
                negative_prompt="blurry",
                num_inference_steps=args.steps,
                height=args.size,
                width=args.size,
                generator=torch.Generator("cpu").manual_seed(1),
                output_type="np",
            ).images
        return time.perf_counter() - start, images

    # The UNet alone, as the pipeline calls it (CFG batch of 2), 3 calls in a row: one full, two cached (N=3).
    latent = args.size // 8
    unet_inputs: dict[str, Any] = {
        "sample": torch.randn(2, 4, latent, latent),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(2, 77, pipe.unet.config.cross_attention_dim),
    }
    if arch == "sdxl":
        text_dim = (
            pipe.unet.config.projection_class_embeddings_input_dim
            - 6 * pipe.unet.config.addition_time_embed_dim
        )
        unet_inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, text_dim),
            "time_ids": torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]] * 2).float(),
        }

    def unet_calls(mode: str) -> tuple[float, np.ndarray | None]:
        start = time.perf_counter()
        with torch.inference_mode(), fast_mode(pipe.unet, mode):
            for _ in range(3):
                pipe.unet(**unet_inputs)
        # The same input every call makes DeepCache's cached calls exact here: no difference to report.
        return (time.perf_counter() - start) / 3, None

    for label, run in (("pipeline call", generate), ("UNet call", unet_calls)):
        times: dict[str, list[float]] = {mode: [] for mode in FAST_MODES}
        results = {mode: run(mode)[1] for mode in FAST_MODES}  # warm-up, and the pictures to compare
        for _ in range(args.repeats):
            for mode in FAST_MODES:
                times[mode].append(run(mode)[0])
        eager = statistics.median(times["off"])
        print(f"\n{arch} tiny, {args.size}x{args.size}, {label} ({args.steps} steps for a pipeline call)")
        print(f"{'mode':<10} {'median':>9} {'vs eager':>9} {'max |diff|':>11}")
        for mode in FAST_MODES:
            median = statistics.median(times[mode])
            picture, eager_picture = results[mode], results["off"]
            diff = "-" if picture is None else f"{float(np.abs(picture - eager_picture).max()):.4f}"
            print(f"{mode:<10} {median:>8.3f}s {eager / median:>8.2f}x {diff:>11}")


def _flops(arch: str, size: int) -> None:
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(
            json.loads((CONFIGS / arch / "unet" / "config.json").read_text())
        )
    unet.set_attn_processor(AttnProcessor())  # attention as matmuls, which the counter sees
    # Batch 1: a batch of 2 would draw ToMe's random corners, and the meta device has no generator.
    sample = torch.empty(1, 4, size // 8, size // 8, device="meta")
    kwargs: dict = {
        "encoder_hidden_states": torch.empty(1, 77, unet.config.cross_attention_dim, device="meta")
    }
    if arch == "sdxl":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.empty(1, 1280, device="meta"),
            "time_ids": torch.empty(1, 6, device="meta"),
        }

    def per_call(mode: str, calls: int) -> float:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), fast_mode(unet, mode), counter:
            for _ in range(calls):
                unet(sample, 10, **kwargs)
        return counter.get_total_flops() / calls

    eager = per_call("off", 1)
    print(f"\n{arch} UNet at {size}x{size}, batch 1: {eager / 1e12:.3f} TFLOP per eager call")
    for mode, calls in (("deepcache", 3), ("tome", 1)):
        flops = per_call(mode, calls)
        print(
            f"{mode:<10} {flops / 1e12:.3f} TFLOP per call (average of {calls}), {eager / flops:.2f}x fewer"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flops", action="store_true", help="also count FLOPs of the full-size UNets")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("sd15", "sdxl"):
            _tiny_times(arch, Path(tmp), args)
    if args.flops:
        _flops("sd15", 512)
        _flops("sdxl", 1024)


if __name__ == "__main__":
    main()
