"""Speed paths for a loaded model: SDPA attention, channels-last, fused QKV, ``torch.compile`` with a disk cache.

Everything here is applied once per loaded model (:func:`accelerate`), and each path is tested for equivalence
with eager execution on the tiny models (tests/engine/test_acceleration.py, tolerances stated there).

* **Attention**: diffusers' ``AttnProcessor2_0``, i.e. ``torch.nn.functional.scaled_dot_product_attention``,
  which picks FlashAttention-2 or the memory-efficient kernel by itself on CUDA in fp16/bf16. Set explicitly
  because a checkpoint or an extension may have left an older processor installed.
* **channels-last** memory format for the UNet and VAE: the layout cuDNN's convolutions run fastest in on
  tensor-core GPUs. On by default on CUDA only; on the CPU it rarely helps.
* **Fused QKV** (diffusers' ``fuse_qkv_projections``): one matmul for query, key and value instead of three.
  A fused projection ignores LoRA layers on ``to_q``/``to_k``/``to_v``, so the engine unfuses while a request
  uses LoRAs (:func:`set_qkv_fusion`) and it is never combined with ``compile``, whose LoRA slots must keep
  the unfused layers (engine/hotswap.py).
* **torch.compile** of the UNet and the VAE decoder. The module's ``forward`` is replaced on the instance,
  so module hooks (prompt editing, embeddings, the VAE's NaN guard) keep running eagerly around the graph.
  Graphs are specialised on the batch size; with ``dynamic_sizes`` (the default) the picture's height and width
  and the prompt's length are symbolic, so one graph serves every size the UNet accepts: a studio that serves
  512x768, 768x512 and 1024x1024 compiles once, not three times (static graphs per size are slightly faster
  on a GPU and are ``dynamic_sizes = False``; bench/gpu.py measures both). The mode
  on CUDA is ``max-autotune`` (autotuned Triton kernels and CUDA graphs, what diffusers' guides use for their
  fastest numbers); on the CPU ``default``. LoRAs switch by hot-swapping weights into fixed slots, so they
  never recompile (engine/hotswap.py).
* **Compile cache on disk**: inductor's artifacts (``torch.compiler.save_cache_artifacts``) are written to
  ``compile_cache_dir`` after a compile and loaded before the first one, so a restarted worker (a new pod
  with an empty ``/tmp``) does not pay the compile again; the file name carries everything that invalidates
  it (torch version, GPU, model shape, dtype, mode).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from atelier.engine.speed import SpeedSettings
from atelier.files import write_bytes_atomic

log = logging.getLogger(__name__)


@dataclass
class Acceleration:
    """What :func:`accelerate` did to one loaded model (kept on ``LoadedModel.acceleration``)."""

    settings: SpeedSettings
    device: str
    compiled: bool = False
    qkv_fused: bool = False
    cache_file: Path | None = None
    cache_loaded: bool = False
    graphs_saved: int = 0  # compiled graphs the cache file holds


def channels_last_for(settings: SpeedSettings, device: str) -> bool:
    return device.startswith("cuda") if settings.channels_last is None else settings.channels_last


def accelerate(
    pipeline: Any,
    settings: SpeedSettings,
    *,
    device: str,
    prepare_loras: Callable[[Any], None] | None = None,
) -> Acceleration:
    """Apply ``settings`` to a freshly loaded pipeline (its variants share the same modules).

    ``prepare_loras`` runs before compiling: a compiled UNet gets its LoRA slots first, so that switching
    LoRAs later changes weights in place and never the graph.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    settings.validate()
    state = Acceleration(settings=settings, device=device)
    for module in (pipeline.unet, pipeline.vae):
        module.set_attn_processor(AttnProcessor2_0())
    if channels_last_for(settings, device):
        for module in (pipeline.unet, pipeline.vae):
            module.to(memory_format=torch.channels_last)
    if settings.compile:
        if prepare_loras is not None and settings.lora_slots > 0:
            prepare_loras(pipeline)
        if settings.compile_cache_dir is not None:
            use_cache_folder(settings.compile_cache_dir)
            state.cache_file = (
                settings.compile_cache_dir / f"inductor-{compile_cache_key(pipeline, settings, device)}.bin"
            )
            state.cache_loaded = load_compile_cache(state.cache_file)
        compile_pipeline(pipeline, settings, device)
        state.compiled = True
    elif settings.fuse_qkv:
        set_qkv_fusion(pipeline, state, fused=True)
    return state


def compile_pipeline(pipeline: Any, settings: SpeedSettings, device: str) -> None:
    """Compile the UNet's and the VAE decoder's ``forward`` on the instances (hooks stay eager)."""
    mode = settings.mode_for(device)
    # Graphs per batch size, size bucket and prompt length (77-token chunks) add up; the default limit of 8
    # would fall back to eager execution silently in a busy studio.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    dynamic = None if settings.dynamic_sizes else False
    unet_graph = torch.compile(pipeline.unet.forward, mode=mode, dynamic=dynamic)
    decoder_graph = torch.compile(pipeline.vae.decoder.forward, mode=mode, dynamic=dynamic)
    if settings.dynamic_sizes:
        unet_graph = _dynamic_sizes(unet_graph, prompt_dim=True)
        decoder_graph = _dynamic_sizes(decoder_graph, prompt_dim=False)
    for graph in (unet_graph, decoder_graph):
        graph._atelier_compiled = True  # type: ignore[attr-defined]  # told apart from accelerate's offload hooks
    pipeline.unet.forward = unet_graph
    pipeline.vae.decoder.forward = decoder_graph


def is_compiled_forward(module: Any) -> bool:
    """True when ``module.forward`` is the graph :func:`compile_pipeline` installed on the instance."""
    return bool(getattr(module.__dict__.get("forward"), "_atelier_compiled", False))


def _dynamic_sizes(graph: Callable[..., Any], *, prompt_dim: bool) -> Callable[..., Any]:
    """Call ``graph`` with the picture's height and width (and the prompt's length) marked dynamic."""

    def forward(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        # "maybe": the graph may still need a fact about a side (the UNet checks it is even); dynamo then
        # guards on that fact instead of refusing the size.
        torch._dynamo.maybe_mark_dynamic(sample, [2, 3])
        if prompt_dim:
            # Prompts longer than 75 tokens come in chunks of 77: one graph for every length.
            states = kwargs.get("encoder_hidden_states")
            if states is None and len(args) > 1:
                states = args[1]
            if isinstance(states, torch.Tensor) and states.ndim == 3:
                torch._dynamo.maybe_mark_dynamic(states, 1)
        return graph(sample, *args, **kwargs)

    return forward


def set_qkv_fusion(pipeline: Any, state: Acceleration | None, *, fused: bool) -> None:
    """Fuse (or unfuse) the UNet's and VAE's QKV projections when the settings ask for fusion.

    Called per request: fused while no LoRA is active, unfused while one is (a fused projection would
    silently ignore the LoRA). A compiled model never fuses (its graph and LoRA slots use the unfused layers).
    """
    if state is None or not state.settings.fuse_qkv or state.compiled or state.qkv_fused == fused:
        return
    if fused:
        pipeline.fuse_qkv_projections()
    else:
        pipeline.unfuse_qkv_projections()
    state.qkv_fused = fused


# -- the compile cache ---------------------------------------------------------------------------------------


def compile_cache_key(pipeline: Any, settings: SpeedSettings, device: str) -> str:
    """What a compiled graph depends on: torch, the GPU, the model's shape and dtype, the mode."""
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    parts = {
        "torch": torch.__version__,
        "gpu": gpu,
        "unet": _config(pipeline.unet),
        "vae": _config(pipeline.vae),
        "dtype": str(pipeline.unet.dtype),
        "mode": settings.mode_for(device),
        "dynamic": settings.dynamic_sizes,
        "channels_last": channels_last_for(settings, device),
        "lora": [settings.lora_slots, settings.lora_max_rank],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _config(module: Any) -> dict[str, Any]:
    return {key: value for key, value in dict(module.config).items() if not key.startswith("_")}


def use_cache_folder(folder: Path) -> None:
    """Keep inductor's and Triton's own caches in ``folder`` instead of ``/tmp``.

    The artifacts file holds the graphs' source; inductor's cache folder also holds what was built from it
    (the C++ and Triton binaries). Both on the same persistent volume make a restarted worker's first picture
    a cache load instead of a compile: on this project's 2-core CPU machine a tiny UNet's first call takes
    about 10 s from a warm folder, 70 s from the artifacts alone and 140 s cold (bench/RESULTS.md).
    These are process-wide settings by nature (environment variables torch reads), set once per worker.
    """
    import os

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")


def load_compile_cache(path: Path) -> bool:
    """Hand inductor the artifacts a previous process saved at ``path``; False when there are none."""
    if not path.is_file():
        return False
    try:
        torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception as exc:  # a cache from another build is only a slower start, never an error
        log.warning("ignoring the compile cache %s: %s", path, exc)
        return False
    log.info("loaded compiled graphs from %s", path)
    return True


def save_compile_cache(state: Acceleration) -> bool:
    """Write this process's compiled artifacts when graphs were compiled since the last save."""
    if state.cache_file is None or not state.compiled:
        return False
    graphs = compiled_graphs()
    if graphs <= state.graphs_saved:
        return False
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return False
    state.cache_file.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(state.cache_file, saved[0])
    state.graphs_saved = graphs
    return True


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (any model); grows with every compile or recompile."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
