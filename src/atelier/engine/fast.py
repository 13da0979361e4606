"""Optional speed-ups for the UNet, behind the "fast" setting: each one trades a little quality for time.

``"off"`` (the default) runs the UNet exactly as diffusers does. The two speed paths change the picture a little;
``QUALITY_NOTES`` states by how much, and ``describe_fast_mode`` gives the infotext value that records the choice.

* ``"deepcache"``: DeepCache (Ma, Fang and Wang, "DeepCache: Accelerating Diffusion Models for Free",
  CVPR 2024). The deep features of the UNet change slowly from one denoising step to the next. Every
  ``interval``-th UNet call runs the whole UNet and keeps the output of ``up_blocks[-2]``; the calls between
  run only the shallow branch (``conv_in``, the time embedding, ``down_blocks[0]``, ``up_blocks[-1]``,
  ``conv_out``) and feed it the kept feature. The paper reports 2.3x on SD 1.5 with a 0.05 lower CLIP Score;
  diffusers' DeepCache page measures 2.3x on SD 2.1 at interval 3 from DeepCache's branch 0, where a cached
  step runs only the last layer of the last up block. Ours recomputes the whole first level (their branch 2
  on SD 1.5 and SDXL): slower, closer to eager. With N=3 it saves 1.7x of the UNet FLOPs on SD 1.5 at 512 px and 2.6x
  on SDXL at 1024 px, whose first level has no attention (``bench/fast_modes.py --flops``).
* ``"tome"``: Token Merging for Stable Diffusion (Bolya and Hoffman, CVPRW 2023). Before the self-attention of
  the highest-resolution transformer blocks, a ``ratio`` of the tokens are merged into their most similar
  neighbours (bipartite soft matching); after it, the merged tokens take their destination's output. The paper
  merges up to 60% of the tokens with image quality (FID) close to the baseline, and reports up to 2x faster
  generation (5.4x for large images, with xFormers) and 5.6x less memory. The FLOPs saved are few at 512 px
  (1.1x on SD 1.5; 1.3x at 1024 px): the gain is mostly attention memory traffic, which fused attention
  kernels already avoid.

Both are installed by replacing ``forward`` on a few UNet submodules (instance attributes, removed on exit) and
by hooks on the UNet, never by copying diffusers' forward code, so LoRAs, ControlNets and attention processors
keep working. The UNet is exactly as before once the context exits. Steps are counted per UNet call: diffusers
batches the conditional and unconditional halves of classifier-free guidance into one call, so a call is a step
(a second-order sampler such as Heun makes two calls per step, and they count as two).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import torch

from atelier.errors import AtelierError

FAST_MODES = ("off", "deepcache", "tome")
DEEPCACHE_INTERVAL = 3
TOME_RATIO = 0.5
# The random choice of merge destinations is seeded per generation, so the same request gives the same picture.
TOME_SEED = 0

QUALITY_NOTES: dict[str, str] = {
    "off": "Exact: every step runs the whole UNet.",
    "deepcache": (
        f"Reuses the UNet's deep features on {DEEPCACHE_INTERVAL - 1} of every {DEEPCACHE_INTERVAL} steps: same "
        "composition, fine detail can differ; DeepCache reports a 0.05 lower CLIP Score on SD 1.5 with a "
        "more aggressive cache."
    ),
    "tome": (
        f"Merges {TOME_RATIO:.0%} of the tokens in the highest-resolution self-attention: slight changes, "
        "textures can soften; ToMe for SD reports FID close to the baseline with up to 60% of tokens merged."
    ),
}


def check_fast_mode(mode: str) -> str:
    """Return ``mode`` if it is one of ``FAST_MODES``, else raise an :class:`AtelierError` on field "fast"."""
    if mode not in FAST_MODES:
        raise AtelierError(f"unknown fast mode {mode!r}; choose one of {', '.join(FAST_MODES)}", field="fast")
    return mode


def describe_fast_mode(mode: str) -> str | None:
    """The infotext value for ``mode`` ("DeepCache N=3", "ToMe 0.5"), or None when the UNet runs exactly."""
    check_fast_mode(mode)
    if mode == "deepcache":
        return f"DeepCache N={DEEPCACHE_INTERVAL}"
    if mode == "tome":
        return f"ToMe {TOME_RATIO:g}"
    return None


def fast_mode(unet: Any, mode: str) -> AbstractContextManager[None]:
    """A context in which ``unet`` runs with the speed-up ``mode``; wrap one pipeline call in it."""
    check_fast_mode(mode)
    if mode == "deepcache":
        return deep_cache(unet, interval=DEEPCACHE_INTERVAL)
    if mode == "tome":
        return token_merging(unet, ratio=TOME_RATIO)
    return contextlib.nullcontext()


# -- shared helpers ---------------------------------------------------------------------------------------------


@contextmanager
def _replaced_forward(module: torch.nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """Make ``module(...)`` call ``forward`` for a while (module hooks still run), then put back what was there.

    ``nn.Module.__call__`` looks ``self.forward`` up on the instance first. Whatever instance attribute was there
    before (accelerate's offload hooks set one) is restored on exit; otherwise the class method shows again.
    """
    previous = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous


def _unet_sample(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    # Pipelines call ``unet(latents, t, encoder_hidden_states=...)``; keyword callers name it ``sample``.
    return args[0] if args else kwargs["sample"]


def _check_unet(unet: Any) -> None:
    if not all(hasattr(unet, name) for name in ("conv_in", "down_blocks", "up_blocks")):
        raise AtelierError("fast modes need a UNet model (SD 1.5 or SDXL)", field="fast")


# -- DeepCache ----------------------------------------------------------------------------------------------------


def _residual_count(down_block: Any) -> int:
    # A down block hands one skip feature per resnet to the up path, and one more after its downsampler.
    return len(down_block.resnets) + (1 if getattr(down_block, "downsamplers", None) else 0)


def _check_deepcache_layout(unet: Any) -> None:
    """Refuse a UNet whose last up block would read skip features from deeper than ``down_blocks[0]``.

    The UNet forward stacks the skip features [conv_in, down_blocks[0]..., down_blocks[1]..., ...] and each up
    block takes ``len(resnets)`` from the end, so ``up_blocks[-1]`` takes the first ones. They must all come from
    ``conv_in`` and ``down_blocks[0]``, which run on every step; SD 1.5 and SDXL are laid out so.
    """
    down, up = unet.down_blocks, unet.up_blocks
    produced = 1 + sum(_residual_count(block) for block in down)
    consumed = sum(len(block.resnets) for block in up)
    shallow = 1 + _residual_count(down[0])
    if len(down) < 2 or len(up) != len(down) or produced != consumed or len(up[-1].resnets) > shallow:
        raise AtelierError("DeepCache does not support this UNet's block layout", field="fast")


class _DeepCacheSchedule:
    """Decides, per UNet call, whether the call runs the whole UNet ("full") or reuses the deep features.

    Call ``i`` of a run of same-shaped calls is full when ``i % interval == 0``. A change of input shape, dtype or
    device (a hires pass, another batch size) starts a new run, because the kept features no longer fit. The
    kept features count only once a full call has finished, so a call that failed half-way is never reused.
    """

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.calls = 0
        self.full = True
        self.ready = False
        self.key: tuple[Any, ...] | None = None

    def before_call(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        sample = _unet_sample(args, kwargs)
        key = (tuple(sample.shape), sample.dtype, sample.device)
        if key != self.key:
            self.key, self.calls, self.ready = key, 0, False
        self.full = not self.ready or self.calls % self.interval == 0
        if self.full:
            self.ready = False
        self.calls += 1

    def after_call(self, module: Any, args: tuple, output: Any) -> None:
        if self.full:
            self.ready = True


class _CachedBlock:
    """The forward of a block of the deep branch: runs and keeps its output on full calls, returns it otherwise.

    Only the output of ``up_blocks[-2]`` reaches the computed part of a cached call (it is the input of
    ``up_blocks[-1]``). The other kept outputs stand in so that the UNet forward finds the shapes it expects (a
    ControlNet's residuals are added to the deep skip features, and the sums go only to skipped blocks).
    ``copy`` keeps a private copy of the output: FreeU scales the input of an up block in place.
    """

    def __init__(self, forward: Callable[..., Any], schedule: _DeepCacheSchedule, *, copy: bool) -> None:
        self.forward = forward
        self.schedule = schedule
        self.copy = copy
        self.output: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.schedule.full:
            output = self.forward(*args, **kwargs)
            self.output = output.clone() if self.copy else output
            return output
        return self.output.clone() if self.copy else self.output


@contextmanager
def deep_cache(unet: Any, *, interval: int = DEEPCACHE_INTERVAL) -> Iterator[None]:
    """Run ``unet`` with DeepCache: one full UNet call every ``interval`` calls, the shallow branch otherwise.

    ``interval=1`` makes every call full and gives exactly the eager result. Features are kept only inside the
    context (each entry starts empty), so two generations never share them. With a ControlNet, its residuals for
    the shallow skip features are used on every step; its deep residuals (and a T2I-Adapter's) take effect on
    full steps, through the kept features.
    """
    if not isinstance(interval, int) or interval < 1:
        raise AtelierError(f"DeepCache interval must be a whole number >= 1, not {interval!r}", field="fast")
    _check_unet(unet)
    _check_deepcache_layout(unet)
    schedule = _DeepCacheSchedule(interval)
    deep = [*unet.down_blocks[1:]]
    if unet.mid_block is not None:
        deep.append(unet.mid_block)
    deep.extend(unet.up_blocks[:-1])
    with ExitStack() as stack:
        for block in deep:
            cached = _CachedBlock(block.forward, schedule, copy=block is unet.up_blocks[-2])
            stack.enter_context(_replaced_forward(block, cached))
        stack.callback(unet.register_forward_pre_hook(schedule.before_call, with_kwargs=True).remove)
        stack.callback(unet.register_forward_hook(schedule.after_call).remove)
        yield


# -- Token merging ------------------------------------------------------------------------------------------------


def _highest_resolution_transformer_blocks(unet: Any) -> list[Any]:
    """The transformer blocks of the highest-resolution UNet level that has attention, down and up.

    ToMe for SD merges at "max_downsample=1", the full latent resolution, where SD 1.5 has most of its tokens.
    SDXL has no attention there; its first attention level (a quarter of the tokens) is the one that pays.
    """
    down, up = unet.down_blocks, unet.up_blocks
    for level, block in enumerate(down):
        if getattr(block, "attentions", None):
            attentions = [*block.attentions, *getattr(up[len(up) - 1 - level], "attentions", [])]
            return [
                transformer_block
                for attention in attentions
                for transformer_block in getattr(attention, "transformer_blocks", [])
                if hasattr(transformer_block, "attn1")
            ]
    return []


def _merge_destinations(
    height: int, width: int, generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the ``height x width`` token grid into destination and source token indices.

    One destination per 2x2 cell, at a random corner (the top-left one when ``generator`` is None), as in ToMe
    for SD: merges stay local, and the random corner avoids a regular grid pattern. Tokens of an incomplete
    cell at the bottom or right edge are all sources.
    """
    # Built on ``device`` without data-dependent shapes, so that a GPU never waits for the host here.
    cells_y, cells_x = height // 2, width // 2
    if generator is None:
        corner = torch.zeros(cells_y, cells_x, dtype=torch.long, device=device)
    else:
        corner = torch.randint(4, (cells_y, cells_x), generator=generator, device=generator.device).to(device)
    is_source = torch.ones(height, width, dtype=torch.long, device=device)
    rows = torch.arange(cells_y, device=device)[:, None] * 2 + corner // 2
    cols = torch.arange(cells_x, device=device)[None, :] * 2 + corner % 2
    is_source[rows, cols] = 0
    # A stable sort puts the destinations (0) first, each group in reading order.
    order = is_source.flatten().argsort(stable=True)
    return order[: cells_y * cells_x], order[cells_y * cells_x :]


def _bipartite_soft_matching(
    x: torch.Tensor, destinations: torch.Tensor, sources: torch.Tensor, ratio: float
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """ToMe's matching: each source token picks its most similar destination (cosine similarity of ``x``), and
    the ``ratio * tokens`` sources with the best matches are averaged into their destinations.

    Returns ``merge`` (tokens -> fewer tokens: [kept sources, destinations]) and ``unmerge`` (back to every
    token; a merged source takes its destination's value).
    """
    batch, tokens, _ = x.shape
    merged_count = min(int(tokens * ratio), len(sources))
    with torch.no_grad():
        metric = x / x.norm(dim=-1, keepdim=True)
        similarity = metric[:, sources] @ metric[:, destinations].transpose(1, 2)
        best_score, best_destination = similarity.max(dim=-1)
        by_score = best_score.argsort(dim=-1, descending=True)
        merged = by_score[:, :merged_count, None]  # positions in ``sources``, per image
        kept = by_score[:, merged_count:, None]
        into = best_destination.gather(1, merged[..., 0])[..., None]  # positions in ``destinations``

    def merge(y: torch.Tensor) -> torch.Tensor:
        channels = y.shape[-1]
        source, destination = y[:, sources], y[:, destinations]
        moving = source.gather(1, merged.expand(-1, -1, channels))
        destination = destination.scatter_reduce(1, into.expand(-1, -1, channels), moving, reduce="mean")
        return torch.cat([source.gather(1, kept.expand(-1, -1, channels)), destination], dim=1)

    def unmerge(y: torch.Tensor) -> torch.Tensor:
        channels = y.shape[-1]
        kept_count = kept.shape[1]
        kept_values, destination = y[:, :kept_count], y[:, kept_count:]
        source = y.new_empty(batch, len(sources), channels)
        source.scatter_(1, kept.expand(-1, -1, channels), kept_values)
        source.scatter_(
            1, merged.expand(-1, -1, channels), destination.gather(1, into.expand(-1, -1, channels))
        )
        out = y.new_empty(batch, tokens, channels)
        out[:, sources] = source
        out[:, destinations] = destination
        return out

    return merge, unmerge


class _TokenMerging:
    """State of one ``token_merging`` context: the latent size of the current UNet call and the seeded RNG."""

    def __init__(self, ratio: float, seed: int) -> None:
        self.ratio = ratio
        self.seed = seed
        self.latent_size: tuple[int, int] | None = None
        self.generator: torch.Generator | None = None

    def before_unet(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        height, width = _unet_sample(args, kwargs).shape[-2:]
        self.latent_size = (int(height), int(width))

    def grid(self, tokens: int) -> tuple[int, int] | None:
        """The token grid of a block with ``tokens`` tokens, from the latent size (levels halve it, rounding up)."""
        if self.latent_size is None:
            return None
        height, width = self.latent_size
        downsample = round(math.sqrt(height * width / tokens))
        grid = (math.ceil(height / downsample), math.ceil(width / downsample))
        return grid if grid[0] * grid[1] == tokens else None

    def random(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return self.generator

    def attention(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a self-attention forward: merge its input tokens, run it, unmerge its output."""

        def merged_attention(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            grid = self.grid(hidden_states.shape[1]) if hidden_states.ndim == 3 else None
            # A self-attention mask has one entry per token and would no longer fit the merged tokens.
            if grid is None or args or kwargs.get("attention_mask") is not None:
                return forward(hidden_states, *args, **kwargs)
            # With classifier-free guidance the batch is [uncond, cond]; an odd batch has no such pairs, and
            # ToMe for SD found random corners give artifacts there, so it uses fixed ones.
            odd_batch = hidden_states.shape[0] % 2 == 1
            generator = None if odd_batch else self.random(hidden_states.device)
            destinations, sources = _merge_destinations(*grid, generator, hidden_states.device)
            merge, unmerge = _bipartite_soft_matching(hidden_states, destinations, sources, self.ratio)
            return unmerge(forward(merge(hidden_states), **kwargs))

        return merged_attention


@contextmanager
def token_merging(unet: Any, *, ratio: float = TOME_RATIO, seed: int = TOME_SEED) -> Iterator[None]:
    """Run ``unet`` with Token Merging (ToMe for SD) on the self-attention of its highest-resolution blocks.

    Written here rather than taken from the ``tomesd`` package (0.1.3, 2023): tomesd replaces the whole
    ``BasicTransformerBlock.forward`` with a copy of a 2023 diffusers version (it drops what diffusers added
    since, such as feed-forward chunking and GLIGEN), and forks its random generator from torch's global one on
    first use and keeps it across generations, so the same seed gives a different picture on the next request.
    Here only ``attn1`` is wrapped, and the destinations' random corners come from a generator seeded on entry.
    The similarity is measured on the self-attention's (normalised) input rather than the block's input.
    """
    if not 0.0 < ratio < 1.0:
        raise AtelierError(f"ToMe ratio must be between 0 and 1, not {ratio!r}", field="fast")
    _check_unet(unet)
    state = _TokenMerging(ratio, seed)
    with ExitStack() as stack:
        for block in _highest_resolution_transformer_blocks(unet):
            stack.enter_context(_replaced_forward(block.attn1, state.attention(block.attn1.forward)))
        stack.callback(unet.register_forward_pre_hook(state.before_unet, with_kwargs=True).remove)
        yield
