"""The speed settings of an engine, without torch: the CLI and the studio's settings check them cheaply.

What each setting does is explained where it is done, in ``engine/acceleration.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from atelier.errors import AtelierError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class SpeedSettings:
    """How the engine runs a model. The defaults are eager execution: the same numbers as diffusers."""

    channels_last: bool | None = None  # None: on CUDA only
    fuse_qkv: bool = False
    compile: bool = False
    compile_mode: str | None = None  # None: max-autotune on CUDA, default on the CPU
    dynamic_sizes: bool = True  # one graph for every picture size rather than one per size
    compile_cache_dir: Path | None = None
    # LoRA slots of a compiled UNet: the most LoRAs one request may use, and their highest rank. 0 slots: the
    # fastest graph, but a LoRA then changes the model and recompiles it (engine/hotswap.py).
    # One slot of rank 64 by default: a product LoRA per request, at the rank Atelier's own presets train. Every
    # slot costs every picture its rank-R matmuls (at scale 0 when unused); bench/gpu.py measures it.
    lora_slots: int = 1
    lora_max_rank: int = 64

    def validate(self) -> None:
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise AtelierError(
                f"unknown compile mode {self.compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}",
                field="compile_mode",
            )
        if self.lora_slots < 0:
            raise AtelierError("compiled LoRA slots cannot be negative", field="compiled_lora_slots")
        if self.lora_max_rank < 1:
            raise AtelierError("the LoRA rank limit must be at least 1", field="lora_max_rank")

    def mode_for(self, device: str) -> str:
        return self.compile_mode or ("max-autotune" if device.startswith("cuda") else "default")
