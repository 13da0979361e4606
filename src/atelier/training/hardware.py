"""Where and in what precision a run trains: accelerate, mixed precision, model placement, CPU denormals.

These are the parts of a run that depend on the machine rather than on the recipe, kept apart so the recipe
reads as the training steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from atelier.errors import AtelierError


def choose_mixed_precision(requested: str, warn: Callable[[str], None]) -> str:
    if requested == "no":
        return "no"
    if not torch.cuda.is_available():
        warn(f"mixed_precision = {requested!r} needs a GPU; this machine trains in fp32")
        return "no"
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        raise AtelierError(
            "this GPU does not support bf16; use mixed_precision = 'fp16'", field="mixed_precision"
        )
    return requested


def make_accelerator(mixed_precision: str) -> Any:
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState, DistributedType

    # accelerate keeps one process-wide state and refuses a second Accelerator with another precision; a
    # long-lived worker that trains one job in fp16 and the next in bf16 needs it reset (single process only).
    if AcceleratorState._shared_state:
        state = AcceleratorState()
        if state.distributed_type == DistributedType.NO and state.mixed_precision != mixed_precision:
            AcceleratorState._reset_state()
    # With clip skip (always, for SDXL) the last text-encoder layer is not used, so its LoRA weights get no
    # gradient; DistributedDataParallel must be told, or multi-GPU runs stop at the first step.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(mixed_precision=mixed_precision, kwargs_handlers=[ddp])


def weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def eight_bit_adam_problem(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "it needs a CUDA GPU"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "bitsandbytes is not installed"
    except Exception as exc:  # bitsandbytes fails in many ways on unsupported setups
        return f"bitsandbytes does not load ({exc})"
    return None


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    module.to(device)
    # Only cast when needed: diffusers warns about every dtype cast of its models.
    if next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)


@contextlib.contextmanager
def flush_denormals(device: torch.device) -> Iterator[None]:
    """On CPUs, treat denormal floats as zero while training.

    LoRA's zero-initialised up weights make tiny gradients whose squares (Adam's second moment) are denormal,
    and x86 CPUs compute on denormals many times slower: flushing them made CPU training about 3x faster at no
    visible cost. GPUs are unaffected.
    """
    if device.type != "cpu" or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
