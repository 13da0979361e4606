"""GPU memory limits: a memory plan per loaded model, chosen from the free VRAM, and a leaner one after an OOM.

SDXL in fp16 is about 6.5 GiB of weights; decoding an 864x1536 picture with its VAE takes about 6 GiB more, so
an 8-12 GB card cannot hold both. :data:`MEMORY_PLANS` are the diffusers savings, fullest first; each plan keeps
the savings of the ones before it:

- ``full``: every model on the GPU (fastest);
- ``vae_tiling``: the VAE decodes (and encodes) 512-pixel tiles, one image of the batch at a time;
- ``model_offload``: whole models wait in CPU RAM and only the one running is on the GPU (diffusers'
  ``enable_model_cpu_offload``: a little slower);
- ``sequential_offload``: each layer is copied to the GPU as it runs (many times slower: the last resort).

:class:`MemoryManager` starts from the first plan whose rough estimate (:func:`estimate_bytes`) fits the free
memory, runs the batch, and after an out-of-memory error frees the cache and runs it again with the next plan.
When the leanest plan fails too, the error names the size and what to change. The estimate only picks where to
start; the fallback corrects it, and remembers per model the plan a size needed, so the next request of that
size starts there. A smaller request may start from a fuller (faster) plan again: one hires fix that needed
offload does not slow every later request down (a model that is reloaded starts over, see :func:`reset`).

The free memory counts the weights of these pipelines already on the GPU (the estimate counts them too), and
what PyTorch has cached but not in use; another model held on the GPU counts as used.

Offloaded pipelines move their modules themselves (accelerate hooks). Other code must not ``.to(device)`` them,
and must ask :func:`execution_device` where inputs go (``pipeline.unet.device`` is ``cpu`` or ``meta`` then).
:func:`reset` undoes a plan (``pipeline.remove_all_hooks()``, then ``.to(device)``): call it before moving a model
off the GPU or when dropping it. On the CPU nothing is managed: RAM is the cache's business (models.py).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch

from atelier.errors import AtelierError

logger = logging.getLogger(__name__)

T = TypeVar("T")

MEMORY_PLANS = ("full", "vae_tiling", "model_offload", "sequential_offload")
GIB = 1024**3

# Activation memory, in elements (times the dtype's bytes), from published measurements where there are some:
# - VAE decode, per output pixel of one image: 2400. The diffusers docs ("VAE Decode with Hybrid Inference",
#   memory table) measure an SD 1.5 VAE decode on an RTX 4090 (24 GiB) in fp16 at 20.0% for 1024x1024 and 5.6%
#   for 512x512: (4.80 - 1.34) GiB over the 786,432 extra pixels is ~4.6 KiB a pixel, 2360 fp16 elements.
#   SDXL's VAE has the same decoder. So 1024x1024 is ~4.7 GiB in fp16: the peak of a large picture.
VAE_DECODE_ELEMENTS_PER_PIXEL = 2400
# - UNet, per latent pixel (1/64 of the output pixels) of one sample: 8192, i.e. 256 MiB for an SDXL
#   1024x1024 sample in fp16. Our estimate, not a measurement: the largest feature maps (320 channels at full
#   latent size, the 5120-wide feed-forward of the 1/2-size attention blocks) with PyTorch's memory-efficient
#   attention, rounded up. Classifier-free guidance runs two samples per image.
UNET_ELEMENTS_PER_LATENT_PIXEL = 8192
# Tiles of the vae_tiling plan, in output pixels. diffusers tiles at the VAE's sample_size, which is 1024 for
# SDXL: that saves nothing at 1024x1024 (the same table shows it). 512 is the default of ComfyUI's tiled decode.
VAE_TILE_PIXELS = 512
# When the model-offload plan runs, the UNet is the largest model on the GPU: ~74% of SDXL's fp16 weights (5.1 of
# 6.9 GB), ~81% of SD 1.5's (1.7 of 2.1 GB). Used only when the caller does not know the largest model's size.
LARGEST_MODEL_SHARE = 0.8
# What a plan needs beyond the estimate: CUDA/cuBLAS workspaces, allocator fragmentation, the estimate's error.
SAFETY_FRACTION = 0.10
SAFETY_BYTES = 512 * 1024**2

_ARCHITECTURE_LABELS = {
    "sd15": "SD 1.5",
    "sd15-inpaint": "SD 1.5 inpainting",
    "sdxl": "SDXL",
    "sdxl-refiner": "SDXL refiner",
}
_PLAN_ATTRIBUTE = "_atelier_memory_plan"  # on each pipeline: (plan, ids of its components when applied)
_FLOORS_ATTRIBUTE = "_atelier_memory_floors"  # on a model's first pipeline: [(pixels x batch, plan)]


def estimate_bytes(
    plan: str,
    *,
    architecture: str,
    width: int,
    height: int,
    batch: int,
    weights_bytes: int,
    dtype_bytes: int = 2,
    largest_model_bytes: int | None = None,
    vae_dtype_bytes: int | None = None,
) -> int:
    """A rough peak of GPU memory for one batch under ``plan``: weights plus the larger of the UNet's and the
    VAE's activations (they run one after the other). ``architecture`` is kept for the error messages and for
    constants per family; SD 1.5 and SDXL share them today (the weights already tell them apart).
    ``vae_dtype_bytes``: a decoder upcast to fp32 (precision.guard_vae after an fp16 overflow) needs twice as much."""
    if plan not in MEMORY_PLANS:
        raise ValueError(f"plan must be one of {MEMORY_PLANS}, got {plan!r}")
    pixels = width * height
    unet = 2 * batch * (pixels // 64) * UNET_ELEMENTS_PER_LATENT_PIXEL * dtype_bytes
    decode_bytes = VAE_DECODE_ELEMENTS_PER_PIXEL * (vae_dtype_bytes or dtype_bytes)
    if plan == "full":
        vae = batch * pixels * decode_bytes
    else:  # tiles, one image at a time (slicing)
        vae = min(width, VAE_TILE_PIXELS) * min(height, VAE_TILE_PIXELS) * decode_bytes
    if plan in ("full", "vae_tiling"):
        return weights_bytes + max(unet, vae)
    largest = (
        largest_model_bytes if largest_model_bytes is not None else int(weights_bytes * LARGEST_MODEL_SHARE)
    )
    if plan == "model_offload":
        # Only the running model is on the GPU; the VAE itself is small (~160 MiB in fp16), so count the largest.
        return largest + max(unet, vae)
    return max(unet, vae)  # sequential: one layer at a time is on the GPU


def fits(estimate: int, available_bytes: int) -> bool:
    return estimate * (1 + SAFETY_FRACTION) + SAFETY_BYTES <= available_bytes


def choose_plan(available_bytes: int, estimate: Callable[[str], int]) -> str:
    """The first plan whose ``estimate(plan)`` fits ``available_bytes`` with the safety margin; the leanest plan
    when none does (it may still work: the estimate is rough)."""
    for plan in MEMORY_PLANS:
        if fits(estimate(plan), available_bytes):
            return plan
    return MEMORY_PLANS[-1]


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error: ``torch.OutOfMemoryError``, or the RuntimeError of older paths (cuDNN, NCCL)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _modules(pipelines: Iterable[Any]) -> list[torch.nn.Module]:
    """Every model of the pipelines, once (variants of one model share their components)."""
    seen: dict[int, torch.nn.Module] = {}
    for pipeline in pipelines:
        for component in pipeline.components.values():
            if isinstance(component, torch.nn.Module):
                seen.setdefault(id(component), component)
    return list(seen.values())


def _module_bytes(module: torch.nn.Module, *, device_type: str | None = None) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(
        t.numel() * t.element_size() for t in tensors if device_type is None or t.device.type == device_type
    )


def _component_ids(pipeline: Any) -> tuple[int, ...]:
    return tuple(id(component) for component in pipeline.components.values())


def plan_of(pipelines: Sequence[Any]) -> str:
    """The plan the pipelines run under now: the leanest applied to any of them ("full" when none was)."""
    applied = [getattr(pipeline, _PLAN_ATTRIBUTE, ("full",))[0] for pipeline in pipelines]
    return max(applied, key=MEMORY_PLANS.index, default="full")


def execution_device(pipeline: Any) -> torch.device:
    """Where the pipeline's inputs belong: the GPU even when its models wait offloaded in CPU RAM."""
    return torch.device(pipeline._execution_device)


def _set_vae_tiling(vae: Any, enabled: bool) -> None:
    if vae is None or not hasattr(vae, "enable_tiling"):
        return
    if enabled:
        # Tiles of VAE_TILE_PIXELS at most; a VAE with smaller samples (the tiny test models) keeps its own.
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        vae.tile_sample_min_size = min(vae.config.sample_size, VAE_TILE_PIXELS)
        vae.tile_latent_min_size = vae.tile_sample_min_size // scale
        vae.enable_tiling()
        vae.enable_slicing()
    else:
        vae.disable_tiling()
        vae.disable_slicing()


def _has_hooks(pipeline: Any) -> bool:
    return any(hasattr(module, "_hf_hook") for module in _modules([pipeline]))


def apply_plan(pipeline: Any, plan: str, device: str) -> None:
    """Put one pipeline under ``plan`` on ``device``, from whatever plan it had."""
    if plan not in MEMORY_PLANS:
        raise ValueError(f"plan must be one of {MEMORY_PLANS}, got {plan!r}")
    _set_vae_tiling(getattr(pipeline, "vae", None), plan != "full")
    if plan == "model_offload":
        pipeline.enable_model_cpu_offload(device=device)  # removes earlier hooks itself
    elif plan == "sequential_offload":
        pipeline.enable_sequential_cpu_offload(device=device)
    else:
        if _has_hooks(pipeline):
            pipeline.remove_all_hooks()  # puts sequentially offloaded weights back in CPU RAM
        pipeline.to(device)


def reset(pipelines: Sequence[Any], device: str) -> None:
    """Back to ``full`` on ``device`` (``"cpu"`` before keeping a model in RAM or dropping it): hooks removed,
    VAE tiling off, every model moved, the plans remembered for the model forgotten."""
    for pipeline in pipelines:
        apply_plan(pipeline, "full", device)
        for attribute in (_PLAN_ATTRIBUTE, _FLOORS_ATTRIBUTE):
            if hasattr(pipeline, attribute):
                delattr(pipeline, attribute)


def cuda_available_bytes(device: str) -> int:
    """Memory this process can still use on ``device``: free on the card plus what PyTorch holds unused."""
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def release_cached_memory() -> None:
    """Drop what the failed attempt left behind: unreferenced tensors first, then PyTorch's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def vram_stats(device: str) -> dict[str, int] | None:
    """``used``/``total``/``free`` bytes of the card (every process), ``peak`` and ``reserved`` of this process's
    PyTorch allocator; None off CUDA."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    try:
        free, total = torch.cuda.mem_get_info(device)
        return {
            "used": int(total - free),
            "total": int(total),
            "free": int(free),
            "peak": int(torch.cuda.max_memory_allocated(device)),
            "reserved": int(torch.cuda.memory_reserved(device)),
        }
    except RuntimeError:  # a card that cannot be read (a driver error) reports nothing rather than failing
        logger.warning("could not read the GPU memory of %s", device, exc_info=True)
        return None


def describe_model(architecture: str) -> str:
    return _ARCHITECTURE_LABELS.get(architecture, architecture)


class MemoryManager:
    """Runs batches under the memory plan that fits, falling back to leaner plans after an out-of-memory error.

    ``free_memory`` (bytes this process may still use, default :func:`cuda_available_bytes`) and ``apply`` (default
    :func:`apply_plan`) can be replaced: the tests run the fallback on a machine without a GPU that way.
    """

    def __init__(
        self,
        device: str,
        *,
        free_memory: Callable[[], int] | None = None,
        apply: Callable[[Any, str, str], None] = apply_plan,
        release: Callable[[], None] = release_cached_memory,
    ) -> None:
        self.device = device
        self.free_memory = free_memory or (lambda: cuda_available_bytes(device))
        self.apply = apply
        self.release = release
        self.plan = "full"  # the plan of the last run, for logs and reports

    @property
    def managed(self) -> bool:
        return str(self.device).startswith("cuda")

    def run(
        self,
        pipelines: Sequence[Any],
        *,
        architecture: str,
        width: int,
        height: int,
        batch: int,
        attempt: Callable[[], T],
        hires: bool = False,
    ) -> T:
        """Run ``attempt`` (one whole batch; it is simply called again after an out-of-memory error) with
        ``pipelines`` (every pipeline the batch uses, the model's base pipeline first: its variants, a refiner) under
        the plan that fits. The plans a size needed are remembered on the base pipeline.

        ``width``/``height`` are the largest size the batch makes (the hires size with hires fix). Any other error
        is raised as it is: retrying cannot fix it.
        """
        if not self.managed:
            return attempt()
        plan = self._starting_plan(pipelines, architecture, width, height, batch)
        fell_back = False
        while True:
            try:
                self._apply_all(pipelines, plan)
                self.plan = plan
                result = attempt()
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                if plan == MEMORY_PLANS[-1]:
                    raise AtelierError(
                        self._message(architecture, width, height, batch, hires), field="width"
                    ) from error
                # The traceback holds the failed attempt's tensors: let it go (leaving this block) before freeing.
                failed = plan
            else:
                if fell_back:
                    self._remember(pipelines, width * height * batch, plan)
                return result
            plan, fell_back = MEMORY_PLANS[MEMORY_PLANS.index(failed) + 1], True
            self.release()
            logger.warning(
                "out of GPU memory at %dx%d, batch %d with plan %s; trying again with %s",
                width,
                height,
                batch,
                failed,
                plan,
            )

    def _starting_plan(
        self, pipelines: Sequence[Any], architecture: str, width: int, height: int, batch: int
    ) -> str:
        modules = _modules(pipelines)
        sizes = [_module_bytes(module) for module in modules]
        weights, largest = sum(sizes), max(sizes, default=0)
        # The activations have the dtype of the largest model (the UNet).
        unet = modules[sizes.index(largest)] if modules else None
        dtype_bytes = next((p.element_size() for p in unet.parameters()), 2) if unet is not None else 2
        decoder = getattr(getattr(pipelines[0], "vae", None), "decoder", None) if pipelines else None
        vae_dtype_bytes = next((p.element_size() for p in decoder.parameters()), None) if decoder else None
        # Weights already on the GPU are counted by the estimate, so they count as available too.
        resident = sum(_module_bytes(module, device_type="cuda") for module in modules)
        available = self.free_memory() + resident

        def estimate(plan: str) -> int:
            return estimate_bytes(
                plan,
                architecture=architecture,
                width=width,
                height=height,
                batch=batch,
                weights_bytes=weights,
                dtype_bytes=dtype_bytes,
                largest_model_bytes=largest,
                vae_dtype_bytes=vae_dtype_bytes,
            )

        plan = choose_plan(available, estimate)
        floor = self._floor(pipelines, width * height * batch)
        if MEMORY_PLANS.index(floor) > MEMORY_PLANS.index(plan):
            plan = floor
        if plan != "full":
            logger.info(
                "memory plan %s for %dx%d, batch %d (%s): about %.1f GiB needed, %.1f GiB available",
                plan,
                width,
                height,
                batch,
                describe_model(architecture),
                estimate(plan) / GIB,
                available / GIB,
            )
        return plan

    def _apply_all(self, pipelines: Sequence[Any], plan: str) -> None:
        for pipeline in pipelines:
            # Applied again when a component changed (a request's own VAE swapped in) so it gets tiles and hooks.
            applied = getattr(pipeline, _PLAN_ATTRIBUTE, None)
            if applied == (plan, _component_ids(pipeline)) or (applied is None and plan == "full"):
                continue
            self.apply(pipeline, plan, self.device)
            setattr(pipeline, _PLAN_ATTRIBUTE, (plan, _component_ids(pipeline)))

    @staticmethod
    def _floor(pipelines: Sequence[Any], work: int) -> str:
        """The leanest plan that a batch at most this big needed before on this model ("full" if none)."""
        floors = getattr(pipelines[0], _FLOORS_ATTRIBUTE, []) if pipelines else []
        return max(
            (plan for needed, plan in floors if needed <= work), key=MEMORY_PLANS.index, default="full"
        )

    @staticmethod
    def _remember(pipelines: Sequence[Any], work: int, plan: str) -> None:
        """After a fallback, the plan that worked becomes the start for batches of this size and larger."""
        floors: list[tuple[int, str]] = getattr(pipelines[0], _FLOORS_ATTRIBUTE, [])
        if MemoryManager._floor(pipelines, work) != plan:
            floors.append((work, plan))
            setattr(pipelines[0], _FLOORS_ATTRIBUTE, floors)

    @staticmethod
    def _message(architecture: str, width: int, height: int, batch: int, hires: bool) -> str:
        change = "lower the size or the batch size" + (", or turn off hires fix" if hires else "")
        return (
            f"out of GPU memory at {width}x{height}, batch {batch} ({describe_model(architecture)}) even with "
            f"sequential CPU offload: {change}"
        )
