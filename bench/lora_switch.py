"""What switching LoRAs costs on a compiled UNet: hot-swap into LoRA slots, fuse and recompile, reload the model.

One switch is: the other LoRA of two instead of the current one, then the first picture with it. Three ways,
interleaved round by round so that a noisy shared machine slows them alike:

- ``hotswap``: the model got LoRA slots (engine/hotswap.py) and its UNet was compiled once, before the timing;
  the switch is ``apply_loras`` (a copy into a slot) and a picture. Nothing recompiles.
- ``fuse``: the LoRA is fused into the base weights (diffusers' ``fuse_lora``) and the UNet compiled; the switch
  unfuses the old LoRA, loads and fuses the new one, drops dynamo's compiled code (``torch._dynamo.reset()``) and
  compiles again, so its picture carries a full recompile. (Inductor's on-disk caches may shorten that recompile
  after the first round, as they would in a studio.)
- ``reload``: the base model is read from disk again and the LoRA loaded as an ordinary adapter; the picture is
  eager (a compiled studio would add a compile, or a compile-cache load, on top).

Also reported: ``steady``, one picture on the warm compiled model with no switch, the floor of every row, and
``plain``, the same on a compiled model without LoRA slots: what the slots cost every picture (each slot's
rank-``max_rank`` matmuls run on every layer it holds, also at scale 0).

CPU (any machine): the tiny SD 1.5 model. The functions take a model path, LoRA files, device and dtype, so
bench/gpu.py can run them with full-size models (``write_random_lora`` makes LoRAs of a real shape for them).

    python bench/lora_switch.py [--rounds 5] [--size 64] [--steps 4] [--arch sd15] [--slots 2] [--max-rank 16]
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from atelier.engine.hotswap import SLOT_LAYERS, prepare_hotswap
from atelier.engine.loras import AppliedLora, LoraLibrary, apply_loras
from atelier.engine.models import load_model

METHODS = ("hotswap", "fuse", "reload")


@dataclass
class SwitchCosts:
    """Seconds per switch (the switch and the first picture after it), by method."""

    times: dict[str, list[float]] = field(
        default_factory=lambda: {m: [] for m in ("plain", "steady", *METHODS)}
    )

    def median(self, method: str) -> float:
        return statistics.median(self.times[method])

    def table(self) -> str:
        """Median and best seconds, the median as a multiple of hot-swap's, and the switch alone (the median
        minus a steady picture's). The best run is the least disturbed one on a shared machine."""
        base, steady = self.median("hotswap"), self.median("steady")
        lines = [f"{'method':<8} {'median s':>9} {'best s':>7} {'x hotswap':>10} {'switch s':>9}  runs"]
        for method, runs in self.times.items():
            median = self.median(method)
            shown = ", ".join(f"{t:.2f}" for t in runs)
            lines.append(
                f"{method:<8} {median:>9.3f} {min(runs):>7.3f} {median / base:>10.2f} {median - steady:>9.3f}  {shown}"
            )
        return "\n".join(lines)


def write_random_lora(unet: Any, path: Path, *, rank: int, seed: int) -> Path:
    """A kohya-format LoRA of ``rank`` on every layer the slots hold, random weights of a modest effect."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if not SLOT_LAYERS.fullmatch(name):
            continue
        weight = module.weight
        prefix = "lora_unet_" + name.replace(".", "_")
        down = torch.randn(rank, *weight.shape[1:], generator=generator) / math.sqrt(
            math.prod(weight.shape[1:])
        )
        up_shape = (weight.shape[0], rank) + ((1, 1) if weight.ndim == 4 else ())
        state[f"{prefix}.lora_down.weight"] = down.half()
        state[f"{prefix}.lora_up.weight"] = (0.1 * torch.randn(up_shape, generator=generator)).half()
        state[f"{prefix}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in state.items()}, path)
    return path


def compile_unet(pipeline: Any, mode: str) -> None:
    """What engine/acceleration.py does, reduced to the UNet: compile ``forward`` on the instance."""
    pipeline.unet.__dict__.pop("forward", None)  # a recompile starts from the module's own forward
    pipeline.unet.forward = torch.compile(pipeline.unet.forward, mode=mode, dynamic=False)


def measure_switch_costs(
    model_path: Path,
    lora_paths: Sequence[Path],
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int = 64,
    steps: int = 4,
    rounds: int = 3,
    mode: str = "default",
    slots: int = 2,
    max_rank: int = 128,
    compile_fn: Callable[[Any, str], None] = compile_unet,
    log: Callable[[str], None] = print,
) -> SwitchCosts:
    """Switch between the LoRAs of ``lora_paths`` (kohya or diffusers files) ``rounds`` times by each method."""
    libraries = [LoraLibrary(path.parent) for path in lora_paths]
    entries = [library.entry(path.stem) for library, path in zip(libraries, lora_paths, strict=True)]
    costs = SwitchCosts()

    def picture(pipeline: Any) -> None:
        pipeline(
            "a product photo of a red bag",
            negative_prompt="blurry",
            num_inference_steps=steps,
            width=size,
            height=size,
            generator=torch.Generator("cpu").manual_seed(1),
            output_type="np",
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(method: str, call: Callable[[], None]) -> None:
        start = time.perf_counter()
        call()
        costs.times[method].append(time.perf_counter() - start)
        log(f"  {method}: {costs.times[method][-1]:.2f} s")

    hot = load_model(model_path, device=device, dtype=dtype)
    prepare_hotswap(hot.pipeline, slots=slots, max_rank=max_rank)
    compile_fn(hot.pipeline, mode)
    plain = load_model(model_path, device=device, dtype=dtype)
    compile_fn(plain.pipeline, mode)
    fused = load_model(model_path, device=device, dtype=dtype)
    fused.pipeline.load_lora_weights(str(entries[0].path), adapter_name="lora0")
    fused.pipeline.fuse_lora(adapter_names=["lora0"])
    compile_fn(fused.pipeline, mode)

    def hotswap(old: int, new: int) -> None:
        apply_loras(hot.pipeline, hot.loaded_loras, [AppliedLora(entries[new], 1.0, 1.0)])
        picture(hot.pipeline)

    def reload(old: int, new: int) -> None:
        model = load_model(model_path, device=device, dtype=dtype)
        model.pipeline.load_lora_weights(str(entries[new].path), adapter_name=f"lora{new}")
        picture(model.pipeline)

    def fuse(old: int, new: int) -> None:
        pipeline = fused.pipeline
        pipeline.unfuse_lora()
        pipeline.delete_adapters([f"lora{old}"])
        pipeline.load_lora_weights(str(entries[new].path), adapter_name=f"lora{new}")
        pipeline.fuse_lora(adapter_names=[f"lora{new}"])
        torch._dynamo.reset()
        compile_fn(pipeline, mode)
        picture(pipeline)

    for round_ in range(rounds):
        log(f"round {round_ + 1}/{rounds}")
        old, new = round_ % 2, 1 - round_ % 2
        # Warm-up, untimed: the fuse row's reset dropped this model's compiled code too.
        apply_loras(hot.pipeline, hot.loaded_loras, [AppliedLora(entries[old], 1.0, 1.0)])
        picture(hot.pipeline)
        picture(plain.pipeline)
        timed("plain", functools.partial(picture, plain.pipeline))
        timed("steady", functools.partial(picture, hot.pipeline))
        timed("hotswap", functools.partial(hotswap, old, new))
        timed("reload", functools.partial(reload, old, new))
        timed("fuse", functools.partial(fuse, old, new))  # last: its reset drops every compiled graph
    return costs


def main() -> None:
    from atelier.cli.common import quiet_libraries
    from atelier.engine.tiny import create_tiny_model

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--arch", choices=("sd15", "sdxl"), default="sd15")
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2)
    # The tiny UNet is 32-64 wide: rank 16 slots are to it what the default 128 are to SD 1.5's 320-1280.
    parser.add_argument("--max-rank", type=int, default=16)
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="atelier-lora-switch-") as root:
        model_path = create_tiny_model(args.arch, Path(root) / args.arch)
        unet = load_model(model_path).pipeline.unet
        loras = [
            write_random_lora(unet, Path(root) / "loras" / f"lora{i}.safetensors", rank=8, seed=i)
            for i in (0, 1)
        ]
        costs = measure_switch_costs(
            model_path,
            loras,
            size=args.size,
            steps=args.steps,
            rounds=args.rounds,
            mode=args.mode,
            slots=args.slots,
            max_rank=args.max_rank,
        )
    print(
        f"\nLoRA switch + first picture, tiny {args.arch}, CPU ({args.threads} threads), {args.size} px, {args.steps} steps:"
    )
    print(costs.table())


if __name__ == "__main__":
    main()
