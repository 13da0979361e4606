"""The GPU benchmark: plain diffusers against Atelier eager and Atelier compiled, in one run.

One command on a GPU machine (it builds its own models, nothing is downloaded):

    python bench/gpu.py                       # CUDA: full-size SD 1.5 and SDXL, fp16
    python bench/gpu.py --quick               # CPU: the tiny models, the same comparisons

What it reports, as a table and as JSON (``--out``):

1. **Generation speed**, denoising steps per second (the field's "it/s", timed between the first and last step
   callbacks, so text encoding and VAE decoding are excluded as in published numbers), for each architecture,
   size and batch size: plain diffusers (``from_pretrained``, fp16, SDPA: what a diffusers user gets), Atelier
   eager, Atelier compiled with LoRA slots (what a studio with ``compile = true`` runs), Atelier compiled with no
   slots, and the "fast" modes (DeepCache, ToMe) on eager. Peak GPU memory per row. Contenders run interleaved,
   round by round, and each keeps its median.
2. **Compile time**: the first picture of a compiled engine with an empty cache folder (cold), and the first
   picture of a new process using the same folder (from cache, what a restarted worker pays).
3. **LoRA switch cost** on a compiled UNet: hot-swap, fuse-and-recompile, reload of the base model
   (bench/lora_switch.py).
4. **LoRA training** steps per second against diffusers' reference training loop (bench/train_vs_diffusers.py,
   mixed precision on a GPU).

Full-size models have random weights: speed does not depend on the values. On the CPU the same comparisons run
on the tiny models at small sizes; those numbers say the paths work and how they compare, not how fast a GPU is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

PROMPT = "a product photo of a leather handbag on a marble table, soft light"
NEGATIVE = "blurry, low quality"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepClock:
    """Times denoising steps from the step callbacks: steps per second between the first and the last step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def tick(self, *_args: Any) -> None:
        _sync()
        self.times.append(time.perf_counter())

    def its(self) -> float:
        """1 / the median step: a burst of other work on a shared machine moves one step, not the result."""
        if len(self.times) < 2:
            return float("nan")
        steps = [later - earlier for earlier, later in zip(self.times, self.times[1:], strict=False)]
        return 1 / statistics.median(steps)


def _peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None


# -- the contenders ----------------------------------------------------------------------------------------------


def diffusers_contender(model: Path, arch: str, device: str, dtype: torch.dtype) -> Callable[..., float]:
    import diffusers

    cls = diffusers.StableDiffusionXLPipeline if arch == "sdxl" else diffusers.StableDiffusionPipeline
    extra = {"safety_checker": None, "requires_safety_checker": False} if arch == "sd15" else {}
    pipeline = cls.from_pretrained(str(model), torch_dtype=dtype, **extra).to(device)
    pipeline.set_progress_bar_config(disable=True)
    # The sampler Atelier's rows use ("Euler"): the same work per step on both sides.
    pipeline.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipeline.scheduler.config)

    def run(size: int, batch: int, steps: int) -> float:
        clock = StepClock()

        def on_step(_pipe: Any, _step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            clock.tick()
            return tensors

        pipeline(
            PROMPT,
            negative_prompt=NEGATIVE,
            width=size,
            height=size,
            num_inference_steps=steps,
            num_images_per_prompt=batch,
            generator=torch.Generator("cpu").manual_seed(1),
            callback_on_step_end=on_step,
            output_type="np",
        )
        return clock.its()

    return run


def atelier_contender(
    model: Path, device: str, dtype: torch.dtype, *, fast: str = "off", **speed: Any
) -> Any:
    from atelier.engine import Engine, GenerationRequest, ModelCache, SpeedSettings

    engine = Engine(device=device, dtype=dtype, models=ModelCache(), speed=SpeedSettings(**speed))

    def run(size: int, batch: int, steps: int) -> float:
        clock = StepClock()
        request = GenerationRequest(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            model=str(model),
            sampler="Euler",
            width=size,
            height=size,
            steps=steps,
            batch_size=batch,
            seed=1,
            fast=fast,
        )
        engine.generate(request, on_step=clock.tick)
        return clock.its()

    return run


# -- the sections ------------------------------------------------------------------------------------------------


def generation_speed(
    models: dict[str, Path], configs: list[tuple[str, int, int]], args: argparse.Namespace
) -> list:
    device, dtype = args.device, args.dtype
    rows = []
    for arch, model in models.items():
        mode = {"compile_mode": args.compile_mode} if args.compile_mode else {}
        cache = Path(tempfile.mkdtemp(prefix="atelier-bench-compile-"))
        contenders: dict[str, Callable[..., float]] = {
            "diffusers": diffusers_contender(model, arch, device, dtype),
            "atelier eager": atelier_contender(model, device, dtype),
            "atelier compiled (LoRA slots)": atelier_contender(
                model, device, dtype, compile=True, compile_cache_dir=cache / "slots", **mode
            ),
            "atelier compiled (no slots)": atelier_contender(
                model, device, dtype, compile=True, lora_slots=0, compile_cache_dir=cache / "plain", **mode
            ),
            "atelier deepcache": atelier_contender(model, device, dtype, fast="deepcache"),
            "atelier tome": atelier_contender(model, device, dtype, fast="tome"),
        }
        for config_arch, size, batch in configs:
            if config_arch != arch:
                continue
            # Warm-up: loads, compiles (timed in compile_times), first CUDA kernels.
            for run in contenders.values():
                run(size, batch, 3)
            results: dict[str, list[float]] = {name: [] for name in contenders}
            peaks: dict[str, float | None] = {}
            for _ in range(args.rounds):
                for name, run in contenders.items():
                    _peak_reset()
                    results[name].append(run(size, batch, args.steps))
                    peaks[name] = _peak_gib()
            base = statistics.median(results["diffusers"])
            for name, values in results.items():
                its = statistics.median(values)
                rows.append(
                    {
                        "arch": arch,
                        "size": size,
                        "batch": batch,
                        "contender": name,
                        "it_per_s": round(its, 2),
                        "vs_diffusers": round(its / base, 3),
                        "peak_gib": None if peaks[name] is None else round(peaks[name], 2),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def compile_times(models: dict[str, Path], args: argparse.Namespace) -> list:
    """First picture with an empty cache folder, then in a new process with the same folder."""
    rows = []
    for arch, model in models.items():
        size = args.sizes[arch][0]
        cache = Path(tempfile.mkdtemp(prefix="atelier-bench-cold-"))
        probe = [
            sys.executable,
            __file__,
            "--probe-compile",
            str(model),
            "--cache",
            str(cache),
            "--size",
            str(size),
        ]
        probe += ["--device", args.device, "--precision", args.precision]
        if args.compile_mode:
            probe += ["--compile-mode", args.compile_mode]
        cold = json.loads(
            subprocess.run(probe, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
        )
        warm = json.loads(
            subprocess.run(probe, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
        )
        row = {
            "arch": arch,
            "size": size,
            "eager_first_s": cold["eager_s"],
            "compile_cold_s": cold["first_s"],
            "compile_cached_s": warm["first_s"],
            "cache_loaded": warm["cache_loaded"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def probe_compile(args: argparse.Namespace) -> None:
    """One process: the first compiled picture (and an eager one, for the floor), as a restarted worker."""
    from atelier.engine import Engine, GenerationRequest, ModelCache, SpeedSettings

    request = GenerationRequest(
        prompt=PROMPT, model=str(args.probe_compile), width=args.size, height=args.size
    )
    request.steps = args.steps
    eager = Engine(device=args.device, dtype=args.dtype, models=ModelCache())
    eager.generate(request)
    started = time.perf_counter()
    eager.generate(request)
    _sync()
    eager_s = time.perf_counter() - started
    speed = SpeedSettings(compile=True, compile_mode=args.compile_mode, compile_cache_dir=args.cache)
    engine = Engine(device=args.device, dtype=args.dtype, models=ModelCache(), speed=speed)
    started = time.perf_counter()
    engine.generate(request)
    _sync()
    state = engine.load(request.model).acceleration
    report = {"first_s": round(time.perf_counter() - started, 2), "eager_s": round(eager_s, 2)}
    print(json.dumps({**report, "cache_loaded": state.cache_loaded}))


def lora_switching(models: dict[str, Path], args: argparse.Namespace) -> list:
    """Hot-swap vs fuse-and-recompile vs reloading the model (bench/lora_switch.py), per architecture."""
    from lora_switch import measure_switch_costs, write_random_lora

    from atelier.engine.models import load_model

    on_gpu = args.device.startswith("cuda")
    rows = []
    for arch, model in models.items():
        size = args.sizes[arch][0]
        folder = Path(tempfile.mkdtemp(prefix="atelier-bench-loras-"))
        unet = load_model(model).pipeline.unet
        rank = 32 if on_gpu else 8  # a typical product LoRA; the tiny UNet is 32-64 wide
        loras = [write_random_lora(unet, folder / f"lora{i}.safetensors", rank=rank, seed=i) for i in (0, 1)]
        del unet
        costs = measure_switch_costs(
            model,
            loras,
            device=args.device,
            dtype=args.dtype,
            size=size,
            steps=args.steps,
            rounds=args.rounds,
            mode=args.compile_mode or ("max-autotune" if on_gpu else "default"),
            slots=1,
            max_rank=64 if on_gpu else 16,
        )
        print(f"LoRA switch + first picture, {arch} at {size} px:\n{costs.table()}", flush=True)
        rows.append({"arch": arch, "size": size, **{m: round(costs.median(m), 3) for m in costs.times}})
    return rows


def training(models: dict[str, Path], args: argparse.Namespace) -> str:
    """bench/train_vs_diffusers.py on the SD 1.5 model, its table as it prints it."""
    command = [
        sys.executable,
        str(Path(__file__).parent / "train_vs_diffusers.py"),
        "--model",
        str(models["sd15"]),
    ]
    if args.device.startswith("cuda"):
        command += ["--size", "512", "--batch", "4", "--mixed-precision", "fp16", "--steps", "30"]
    else:
        command += ["--steps", "8", "--warmup", "2", "--size", "64"]
    done = subprocess.run(command, capture_output=True, text=True)
    print(done.stdout, flush=True)
    return done.stdout if done.returncode == 0 else done.stdout + done.stderr[-2000:]


def build_models(root: Path, archs: list[str], device: str) -> dict[str, Path]:
    if device.startswith("cuda"):
        from engine_vs_diffusers import _full_size_model

        return {arch: _full_size_model(arch, root) for arch in archs}
    from atelier.engine.tiny import create_tiny_model

    return {arch: create_tiny_model(arch, root / arch) for arch in archs}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile-mode", default=None)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per picture (default 20)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="SD 1.5 only, one size, batch 1 (a CPU smoke run)"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "compile", "lora", "training"])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--probe-compile", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()

    from atelier.cli.common import quiet_libraries
    from atelier.engine import resolve_precision

    quiet_libraries()
    on_gpu = args.device.startswith("cuda")
    if not on_gpu:
        torch.set_num_threads(2)
    args.dtype = resolve_precision(args.precision, args.device)
    args.steps = args.steps or 20
    if args.probe_compile:
        probe_compile(args)
        return
    archs = ["sd15"] if args.quick else ["sd15", "sdxl"]
    if on_gpu:
        args.sizes = {"sd15": [512, 1024], "sdxl": [1024, 512]}
        batches = [1, 4]
    else:
        args.sizes = {"sd15": [64, 128], "sdxl": [64, 128]}
        batches = [1] if args.quick else [1, 4]
    if args.quick:
        args.sizes = {arch: sizes[:1] for arch, sizes in args.sizes.items()}
    configs = [(arch, size, batch) for arch in archs for size in args.sizes[arch] for batch in batches]
    device_name = torch.cuda.get_device_name(args.device) if on_gpu else "CPU"
    print(f"# {device_name}, torch {torch.__version__}, {args.dtype}, {args.steps} steps", flush=True)
    results: dict[str, Any] = {"device": device_name, "torch": torch.__version__, "dtype": str(args.dtype)}
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as tmp:
        models = build_models(Path(tmp), archs, args.device)
        if "speed" not in args.skip:
            results["speed"] = generation_speed(models, configs, args)
        if "compile" not in args.skip:
            results["compile"] = compile_times(models, args)
        if "lora" not in args.skip:
            results["lora_switch"] = lora_switching(models, args)
        if "training" not in args.skip:
            results["training"] = training(models, args)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
