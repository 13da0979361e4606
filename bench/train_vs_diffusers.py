"""Atelier's LoRA training recipe against diffusers' reference LoRA loop, in one run.

The reference is the training loop of diffusers' ``examples/text_to_image/train_text_to_image_lora.py``, rebuilt
here at its minimum: components loaded with ``from_pretrained``, frozen and cast to the weight dtype, a UNet LoRA
(rank r, alpha r) added with ``unet.add_adapter``, AdamW, and per step: VAE encode, noise, text encoder, UNet, MSE,
backward, clip, step. Two changes keep the comparison about the loop: the LoRA covers the same layers as Atelier's
(kohya's set: attention, proj_in/proj_out and feed-forward; the example covers attention only), and images are
resized and centre-cropped with PIL (the example uses torchvision, which Atelier does not install).

Atelier runs :func:`atelier.training.recipe.train_lora` on the same model, images, captions, batch size,
resolution, rank and learning rate, UNet-only, without bucketing (every image is square), first as is and then
with ``cache_latents`` and ``cache_text_encoder_outputs``. On a CPU a fourth row runs the reference with denormal
floats flushed to zero, which Atelier's recipe does on CPUs, to show how much of a CPU difference that setting is.

Each contender runs in its own process, so peak memory is its own: peak RSS on CPU, peak allocated CUDA memory on a
GPU. Speed is optimizer steps per second after warm-up steps (on a CPU per second of the process's CPU time, which
other work on a shared machine disturbs far less); model loading and caching are reported apart.

    python bench/train_vs_diffusers.py [--steps 24] [--warmup 4] [--size 256] [--batch 2] [--images 8] [--rank 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CAPTION = "photo of oue car, product shot, studio"
LEARNING_RATE = 1e-4


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_memory_mb(baseline_mb: float) -> float:
    """Peak CUDA memory on a GPU; on a CPU the peak RSS above the process's size once its imports are done."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline_mb  # Linux reports KiB


def make_dataset(folder: Path, count: int, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
        (folder / f"{index:03d}.txt").write_text(f"{CAPTION}, view {index}\n", encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# The reference: diffusers' train_text_to_image_lora.py loop, minimal


def run_reference(model: Path, data: Path, args: argparse.Namespace, *, baseline: float) -> dict:
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    from atelier.training.network import UNET_TARGET_MODULES

    load_start = time.perf_counter()
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    torch.manual_seed(0)
    noise_scheduler = DDPMScheduler.from_pretrained(str(model), subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(str(model), subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(str(model), subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(str(model), subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(str(model), subfolder="unet")
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision, torch.float32)
    unet_lora_config = LoraConfig(
        r=args.rank,
        lora_alpha=args.rank,
        init_lora_weights="gaussian",
        # The same layers as Atelier's recipe (kohya's set), so both sides do the same work per step; the example
        # itself targets only to_q/to_k/to_v/to_out.0.
        target_modules=list(UNET_TARGET_MODULES),
    )
    unet.to(accelerator.device, dtype=weight_dtype)
    vae.to(accelerator.device, dtype=weight_dtype)
    text_encoder.to(accelerator.device, dtype=weight_dtype)
    unet.add_adapter(unet_lora_config)
    if args.mixed_precision == "fp16":
        cast_training_params(unet, dtype=torch.float32)
    lora_layers = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_layers, lr=LEARNING_RATE)

    images = sorted(data.glob("*.png"))
    captions = [path.with_suffix(".txt").read_text().strip() for path in images]

    def transform(path: Path) -> torch.Tensor:
        image = Image.open(path).convert("RGB")
        scale = args.size / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        left, top = (image.width - args.size) // 2, (image.height - args.size) // 2
        image = image.crop((left, top, left + args.size, top + args.size))
        array = np.asarray(image, dtype=np.float32) / 255.0
        return (torch.from_numpy(array).permute(2, 0, 1) - 0.5) / 0.5

    class Dataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, index: int) -> dict:
            ids = tokenizer(
                captions[index], max_length=tokenizer.model_max_length, padding="max_length", truncation=True
            ).input_ids
            return {"pixel_values": transform(images[index]), "input_ids": torch.tensor(ids)}

    loader = torch.utils.data.DataLoader(Dataset(), shuffle=True, batch_size=args.batch, drop_last=False)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    unet.train()
    load_seconds = time.perf_counter() - load_start

    step, timed_start, cpu_start = 0, 0.0, 0.0
    while step < args.steps:
        for batch in loader:
            with accelerator.accumulate(unet):
                latents = vae.encode(batch["pixel_values"].to(dtype=weight_dtype)).latent_dist.sample()
                latents = latents * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
                ).long()
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]
                model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
                loss = torch.nn.functional.mse_loss(model_pred.float(), noise.float(), reduction="mean")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(lora_layers, 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                loss.item()  # the example logs the loss every step
                step += 1
                if step == args.warmup:
                    _sync()
                    timed_start, cpu_start = time.perf_counter(), time.process_time()
                if step >= args.steps:
                    break
    _sync()
    timed, cpu = time.perf_counter() - timed_start, time.process_time() - cpu_start
    return {
        "steps_per_s": (args.steps - args.warmup) / timed,
        "steps_per_cpu_s": (args.steps - args.warmup) / cpu,
        "load_s": load_seconds,
        "peak_mb": _peak_memory_mb(baseline),
    }


# ---------------------------------------------------------------------------------------------------------------
# Atelier


def run_atelier(model: Path, data: Path, args: argparse.Namespace, *, cached: bool, baseline: float) -> dict:
    from atelier.training.config import load_train_config
    from atelier.training.recipe import train_lora

    config = load_train_config(
        {
            "resolution": args.size,
            "enable_bucket": False,
            "train_batch_size": args.batch,
            "network_dim": args.rank,
            "network_alpha": float(args.rank),
            "network_train_unet_only": True,
            "learning_rate": LEARNING_RATE,
            "max_train_steps": args.steps,
            "mixed_precision": args.mixed_precision,
            "max_data_loader_n_workers": 0,
            "cache_latents": cached,
            "cache_text_encoder_outputs": cached,
            "save_state": False,
            "logging_dir": None,
            "seed": 0,
        }
    )
    marks: dict[int, tuple[float, float]] = {}
    start = time.perf_counter()

    def on_progress(progress) -> None:
        if progress.step in (1, args.warmup, args.steps):
            _sync()
            marks[progress.step] = (time.perf_counter(), time.process_time())

    with tempfile.TemporaryDirectory() as out:
        train_lora(config, data=data, base_model=model, out_dir=Path(out) / "run", on_progress=on_progress)
    return {
        "steps_per_s": (args.steps - args.warmup) / (marks[args.steps][0] - marks[args.warmup][0]),
        "steps_per_cpu_s": (args.steps - args.warmup) / (marks[args.steps][1] - marks[args.warmup][1]),
        "load_s": marks[1][0] - start,
        "peak_mb": _peak_memory_mb(baseline),
    }


# ---------------------------------------------------------------------------------------------------------------


CONTENDERS = ("diffusers-reference", "diffusers-reference-ftz", "atelier", "atelier-cached")


def _run_contender(name: str, model: Path, data: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--contender", name, "--model", str(model), "--data", str(data)]
    for key in ("steps", "warmup", "size", "batch", "rank", "threads", "mixed_precision"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ.copy()).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="runs per contender; the best is kept")
    parser.add_argument(
        "--mixed-precision",
        default="fp16" if torch.cuda.is_available() else "no",
        choices=["no", "fp16", "bf16"],
    )
    parser.add_argument("--model", type=Path, help="base model (default: a tiny SD 1.5 model)")
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.contender:
        # Every contender imports the same libraries before its memory baseline is taken, so the peak that is
        # compared is what loading the model and training cost, not which modules each side imports.
        import diffusers.pipelines  # noqa: F401
        import peft  # noqa: F401
        from diffusers import StableDiffusionPipeline  # noqa: F401

        from atelier.cli.common import quiet_libraries
        from atelier.training.recipe import train_lora  # noqa: F401

        quiet_libraries()
        baseline = _current_rss_mb()
        if args.contender == "diffusers-reference-ftz":
            # Atelier flushes denormal floats on CPUs (see recipe._flush_denormals); this row gives the reference
            # the same setting, to show how much of the CPU difference that one setting is.
            torch.set_flush_denormal(True)
        if args.contender.startswith("diffusers-reference"):
            row = run_reference(args.model, args.data, args, baseline=baseline)
        else:
            cached = args.contender == "atelier-cached"
            row = run_atelier(args.model, args.data, args, cached=cached, baseline=baseline)
        print(json.dumps(row))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model
        if model is None:
            from atelier.engine.tiny import create_tiny_model

            model = create_tiny_model("sd15", root / "tiny-sd15")
        data = make_dataset(root / "data", args.images, args.size)
        contenders = [
            name for name in CONTENDERS if not (name.endswith("-ftz") and torch.cuda.is_available())
        ]
        # On a GPU steps per second of wall time; on a CPU steps per CPU-second of the process, which a busy
        # shared machine disturbs far less than wall time. Rounds interleave the contenders so that a slow
        # stretch hits them all alike, and each keeps its best round.
        metric = "steps_per_s" if torch.cuda.is_available() else "steps_per_cpu_s"
        rows: dict[str, list[dict]] = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name in contenders:
                rows[name].append(_run_contender(name, model, data, args))
        results = {name: max(runs, key=lambda row: row[metric]) for name, runs in rows.items()}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} thread(s)"
    print(
        f"LoRA training, tiny SD 1.5, {args.size}x{args.size}, batch {args.batch}, rank {args.rank}, "
        f"{args.steps} steps ({args.warmup} warm-up), {device}, mixed precision {args.mixed_precision}, "
        f"best of {args.rounds}; speed ratios from {metric}"
    )
    reference = results["diffusers-reference"]
    for name, row in results.items():
        speed = row[metric] / reference[metric]
        memory = row["peak_mb"] / reference["peak_mb"]
        print(
            f"{name:24s} {row['steps_per_s']:6.2f} steps/s  {row['steps_per_cpu_s']:6.2f} steps/CPU-s  "
            f"{speed:5.2f}x speed  peak {row['peak_mb']:7.1f} MB ({memory:4.2f}x)  setup {row['load_s']:5.1f} s"
        )
    if not all(math.isfinite(row[metric]) for row in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
