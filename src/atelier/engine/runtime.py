"""How the engine runs a loaded model on its device: precision, speed paths, LoRA slots, the compile cache.

The generation code (``generate.py``) says *what* to compute; this module decides *how fast and in how much
memory*, in one place, so that the paths stay optional and testable one by one:

* :func:`atelier.engine.precision.guard_vae` on every VAE that decodes (no black or NaN pictures in fp16);
* :func:`atelier.engine.acceleration.accelerate` once per loaded model (SDPA, channels-last, fused QKV,
  ``torch.compile``), with the compiled UNet's LoRA slots prepared first (``engine/hotswap.py``);
* the compile cache written after a request that compiled something, so a restarted worker starts warm;
* :class:`atelier.engine.memory.MemoryManager` around every batch: the memory plan (VAE tiling, CPU offload)
  chosen from the free VRAM, and a leaner plan after an out-of-memory error.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from atelier.engine.acceleration import (
    Acceleration,
    accelerate,
    is_compiled_forward,
    save_compile_cache,
    set_qkv_fusion,
)
from atelier.engine.fast import fast_mode
from atelier.engine.memory import MemoryManager
from atelier.engine.models import LoadedModel
from atelier.engine.precision import guard_vae, resolve_precision
from atelier.engine.speed import SpeedSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    # Half precision only where it is fast and well supported; the CPU stays in fp32 (see engine/precision.py).
    return resolve_precision("auto", device)


@dataclass
class Runtime:
    """The device, dtype and speed settings one :class:`~atelier.engine.generate.Engine` runs models with."""

    device: str
    dtype: torch.dtype
    # None: run the model as loaded (diffusers' defaults), for callers that must not change a model they share,
    # such as training's sample images (the model being trained keeps its attention processors).
    speed: SpeedSettings | None = None
    # Off where the caller owns the GPU's memory: training's sample images, mid-run, must never offload the
    # model being trained.
    memory_plans: bool = True
    memory: MemoryManager = field(init=False)

    def __post_init__(self) -> None:
        self.memory = MemoryManager(self.device)

    def prepare(self, model: LoadedModel) -> LoadedModel:
        """Make a freshly loaded (or cached) model ready: done once per model, cheap afterwards."""
        guard_vae(model.pipeline.vae)
        if model.acceleration is None and self.speed is not None:
            model.acceleration = accelerate(
                model.pipeline, self.speed, device=self.device, prepare_loras=self._prepare_lora_slots
            )
        return model

    def _prepare_lora_slots(self, pipeline: Any) -> None:
        from atelier.engine.hotswap import prepare_hotswap

        assert self.speed is not None  # only accelerate() calls this, with these settings
        prepare_hotswap(pipeline, slots=self.speed.lora_slots, max_rank=self.speed.lora_max_rank)

    def before_request(self, model: LoadedModel, *, uses_loras: bool) -> None:
        """Per request: fused QKV projections only while no LoRA is active (a fused layer ignores LoRAs)."""
        set_qkv_fusion(model.pipeline, model.acceleration, fused=not uses_loras)

    @contextlib.contextmanager
    def fast(self, unet: Any, mode: str) -> Iterator[None]:
        """A request's "fast" mode around one pipeline call (engine/fast.py).

        The fast modes change which blocks run from step to step, which a compiled graph cannot follow without
        recompiling every step: on a compiled UNet they run on its eager forward, and the graph is back after.
        """
        if mode == "off":
            yield
            return
        compiled = unet.__dict__.pop("forward") if is_compiled_forward(unet) else None
        try:
            with fast_mode(unet, mode):
                yield
        finally:
            if compiled is not None:
                unet.forward = compiled

    def run_batch(
        self,
        model: LoadedModel,
        refiner: LoadedModel | None,
        *,
        width: int,
        height: int,
        batch: int,
        hires: bool,
        attempt: Callable[[], T],
    ) -> T:
        """Run one batch within the GPU's memory; ``attempt`` runs again under a leaner plan after an OOM."""
        if not self.memory_plans:
            return attempt()
        pipelines = [*model.pipelines(), *(refiner.pipelines() if refiner else [])]
        return self.memory.run(
            pipelines,
            architecture=model.architecture,
            width=width,
            height=height,
            batch=batch,
            attempt=attempt,
            hires=hires,
        )

    def after_request(self, model: LoadedModel) -> None:
        """Persist graphs compiled during the request; a failed write only costs the next worker a compile."""
        state: Acceleration | None = model.acceleration
        if state is None:
            return
        try:
            if save_compile_cache(state):
                log.info("saved compiled graphs to %s", state.cache_file)
        except OSError as exc:
            log.warning("could not save the compile cache %s: %s", state.cache_file, exc)
