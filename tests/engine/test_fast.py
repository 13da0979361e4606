"""The "fast" speed paths (DeepCache, ToMe) against eager execution, on the tiny random-weight models.

Tolerances. Pictures are float arrays in [0, 1] (``output_type="np"``), made in 4 steps with CFG and a fixed
generator. Measured on the tiny SD 1.5 and SDXL models (torch 2.13 CPU, 2 threads), largest over both:

* DeepCache N=3, 64 px: max |diff| 0.059, mean |diff| 0.0065 (SD 1.5; SDXL 0.038 / 0.0048; SD 1.5 with a
  ControlNet 0.035 / 0.0041).
* ToMe 0.5, 128 px: max |diff| 0.020, mean |diff| 0.0023 (SDXL; SD 1.5 0.013 / 0.0016).
* For scale, another seed changes a picture by mean |diff| 0.15.

The bounds below are about twice those. On the tiny models they catch a speed path that breaks the picture, not
a subtle error: the exact checks (interval 1 is bit-identical; a cached step is bit-identical to the eager
UNet fed the kept feature; merging then unmerging tokens that are equal per 2x2 cell is lossless) do that.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atelier.engine.fast import (
    DEEPCACHE_INTERVAL,
    FAST_MODES,
    QUALITY_NOTES,
    TOME_RATIO,
    _bipartite_soft_matching,
    _highest_resolution_transformer_blocks,
    _merge_destinations,
    check_fast_mode,
    deep_cache,
    describe_fast_mode,
    fast_mode,
    token_merging,
)
from atelier.errors import AtelierError

ARCHES = ["sd15", "sdxl"]
SIZE = 64
TOME_SIZE = 128
STEPS = 4
PROMPT = "a red bag on a table"
NEGATIVE = "blurry"

DEEPCACHE_MAX_DIFF = 0.12
DEEPCACHE_MEAN_DIFF = 0.015
TOME_MAX_DIFF = 0.05
TOME_MEAN_DIFF = 0.005
# ToMe on one UNet call, as ||fast - eager|| / ||eager|| of the noise prediction (measured 0.044 at most).
TOME_UNET_RELATIVE = 0.1


@pytest.fixture(scope="module")
def pipelines(tiny_models):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    loaded = {}

    def get(arch: str):
        if arch not in loaded:
            cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
            pipe = cls.from_pretrained(str(tiny_models(arch)))
            pipe.set_progress_bar_config(disable=True)
            loaded[arch] = pipe
        return loaded[arch]

    return get


def _generate(pipe, size: int = SIZE, **kwargs) -> np.ndarray:
    return pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        height=size,
        width=size,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
        **kwargs,
    ).images


def _unet_inputs(unet, *, seed: int, batch: int = 2, latent: int = 8) -> tuple[torch.Tensor, dict]:
    """A random UNet call: the sample, and keyword arguments (SDXL's size conditioning included)."""
    generator = torch.Generator().manual_seed(seed)
    config = unet.config
    kwargs: dict = {
        "timestep": torch.tensor(900 - 100 * seed),
        "encoder_hidden_states": torch.randn(batch, 77, config.cross_attention_dim, generator=generator),
    }
    if config.addition_embed_type == "text_time":
        time_ids = torch.tensor([[latent * 8, latent * 8, 0, 0, latent * 8, latent * 8]] * batch).float()
        text_dim = (
            config.projection_class_embeddings_input_dim - time_ids.shape[1] * config.addition_time_embed_dim
        )
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, text_dim, generator=generator),
            "time_ids": time_ids,
        }
    return torch.randn(batch, 4, latent, latent, generator=generator), kwargs


def _call(unet, inputs) -> torch.Tensor:
    sample, kwargs = inputs
    with torch.no_grad():
        return unet(sample, **kwargs).sample


class _CallCounter:
    """Counts real forward calls of modules (hooks on submodules, which a cached block never reaches)."""

    def __init__(self, modules: dict) -> None:
        self.counts = dict.fromkeys(modules, 0)
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name):
        def hook(module, args, output):
            self.counts[name] += 1

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _branch_counter(unet) -> _CallCounter:
    return _CallCounter(
        {
            "unet": unet,
            "down0": unet.down_blocks[0].resnets[0],
            "down1": unet.down_blocks[1].resnets[0],
            "mid": unet.mid_block.resnets[0],
            "up0": unet.up_blocks[0].resnets[0],
            "up_last": unet.up_blocks[-1].resnets[0],
        }
    )


def _state(unet) -> tuple:
    """What a fast mode may touch: instance-level forwards anywhere in the UNet, and the UNet's hooks."""
    forwards = {name: module.__dict__.get("forward") for name, module in unet.named_modules()}
    return forwards, len(unet._forward_pre_hooks), len(unet._forward_hooks)


# -- the setting --------------------------------------------------------------------------------------------------


def test_fast_modes_are_validated_described_and_noted(pipelines):
    assert FAST_MODES == ("off", "deepcache", "tome")
    assert set(QUALITY_NOTES) == set(FAST_MODES)
    assert describe_fast_mode("off") is None
    assert describe_fast_mode("deepcache") == f"DeepCache N={DEEPCACHE_INTERVAL}" == "DeepCache N=3"
    assert describe_fast_mode("tome") == f"ToMe {TOME_RATIO}" == "ToMe 0.5"
    assert check_fast_mode("tome") == "tome"
    unet = pipelines("sd15").unet
    for call in (check_fast_mode, describe_fast_mode, lambda mode: fast_mode(unet, mode)):
        with pytest.raises(AtelierError, match="turbo") as raised:
            call("turbo")
        assert raised.value.field == "fast"


def test_off_runs_the_unet_unchanged(pipelines):
    unet = pipelines("sd15").unet
    inputs = _unet_inputs(unet, seed=1)
    before = _state(unet)
    with fast_mode(unet, "off"):
        assert _state(unet) == before
        assert torch.equal(_call(unet, inputs), _call(unet, inputs))


# -- DeepCache ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_deepcache_interval_1_equals_eager_bit_for_bit(pipelines, arch):
    pipe = pipelines(arch)
    calls = [_unet_inputs(pipe.unet, seed=seed) for seed in range(3)]
    eager_outputs = [_call(pipe.unet, inputs) for inputs in calls]
    eager_picture = _generate(pipe)
    with deep_cache(pipe.unet, interval=1):
        cached_outputs = [_call(pipe.unet, inputs) for inputs in calls]
        picture = _generate(pipe)
    assert all(torch.equal(a, b) for a, b in zip(cached_outputs, eager_outputs, strict=True))
    assert np.array_equal(picture, eager_picture)


@pytest.mark.parametrize("arch", ARCHES)
def test_deepcache_skips_the_deep_branch_on_cached_steps(pipelines, arch):
    pipe = pipelines(arch)
    counter = _branch_counter(pipe.unet)
    try:
        with deep_cache(pipe.unet, interval=3):
            _generate(pipe)
    finally:
        counter.remove()
    # One UNet call per step (CFG is batched), and one more for the tiny SD 1.5's PNDM scheduler's warm-up.
    calls = counter.counts["unet"]
    assert calls == STEPS + (arch == "sd15")
    # Calls 0 and 3 are full; the others run only the shallow branch.
    assert counter.counts == {"unet": calls, "down0": calls, "down1": 2, "mid": 2, "up0": 2, "up_last": calls}


@pytest.mark.parametrize("arch", ARCHES)
def test_deepcache_cached_step_is_the_shallow_branch_fed_the_kept_feature(pipelines, arch):
    """Exact: a cached call equals the eager UNet whose up_blocks[-2] output is replaced by the kept one."""
    unet = pipelines(arch).unet
    first, second = _unet_inputs(unet, seed=1), _unet_inputs(unet, seed=2)
    kept = {}
    keep = unet.up_blocks[-2].register_forward_hook(lambda module, args, output: kept.setdefault("f", output))
    _call(unet, first)
    keep.remove()
    substitute = unet.up_blocks[-2].register_forward_hook(lambda module, args, output: kept["f"])
    reference = _call(unet, second)
    substitute.remove()

    with deep_cache(unet, interval=3):
        _call(unet, first)
        cached = _call(unet, second)
    assert torch.equal(cached, reference)
    assert not torch.equal(cached, _call(unet, second))


@pytest.mark.parametrize("arch", ARCHES)
def test_deepcache_interval_3_stays_close_to_eager(pipelines, arch):
    pipe = pipelines(arch)
    eager = _generate(pipe)
    with deep_cache(pipe.unet, interval=3):
        fast = _generate(pipe)
    diff = np.abs(fast - eager)
    assert diff.max() > 0  # caching did something
    assert diff.max() < DEEPCACHE_MAX_DIFF
    assert diff.mean() < DEEPCACHE_MEAN_DIFF


def test_deepcache_leaves_the_unet_exactly_as_before(pipelines):
    unet = pipelines("sd15").unet
    inputs = _unet_inputs(unet, seed=1)
    before_output, before_state = _call(unet, inputs), _state(unet)
    # An instance-level forward that was there before (accelerate's offload hooks set one) is put back.
    outer = unet.up_blocks[0].forward
    unet.up_blocks[0].forward = outer
    with pytest.raises(RuntimeError, match="interrupted"), deep_cache(unet, interval=3):
        assert unet.down_blocks[1].__dict__.get("forward") is not None
        _call(unet, inputs)
        raise RuntimeError("interrupted")
    assert unet.up_blocks[0].__dict__["forward"] is outer
    del unet.up_blocks[0].forward
    assert _state(unet) == before_state
    assert all(module.__dict__.get("forward") is None for module in unet.modules())
    assert torch.equal(_call(unet, inputs), before_output)


def test_deepcache_never_shares_features_between_generations(pipelines):
    unet = pipelines("sd15").unet
    first, second = _unet_inputs(unet, seed=1), _unet_inputs(unet, seed=2)
    eager_second = _call(unet, second)
    counter = _branch_counter(unet)
    try:
        with deep_cache(unet, interval=3):
            _call(unet, first)
        with deep_cache(unet, interval=3):
            result = _call(unet, second)  # a new generation's first call: full, not the first one's features
    finally:
        counter.remove()
    assert counter.counts["down1"] == 2
    assert torch.equal(result, eager_second)


def test_deepcache_runs_in_full_after_a_shape_change_or_a_failed_call(pipelines):
    unet = pipelines("sd15").unet
    counter = _branch_counter(unet)
    fail = {"now": False}

    def maybe_fail(module, args, output):
        if fail["now"]:
            raise RuntimeError("failed half-way")

    failing = unet.up_blocks[-1].register_forward_hook(maybe_fail)
    try:
        with deep_cache(unet, interval=3):
            _call(unet, _unet_inputs(unet, seed=1))  # call 0: full
            _call(unet, _unet_inputs(unet, seed=2, batch=1))  # a new shape starts a new run: full
            fail["now"] = True
            with pytest.raises(RuntimeError):
                _call(unet, _unet_inputs(unet, seed=3, batch=1))  # run call 1: cached, fails at the end
            fail["now"] = False
            _call(
                unet, _unet_inputs(unet, seed=4, batch=1)
            )  # run call 2: cached (the kept features are whole)
            fail["now"] = True
            with pytest.raises(RuntimeError):
                _call(
                    unet, _unet_inputs(unet, seed=5, batch=1)
                )  # run call 3: full, fails after the deep branch
            fail["now"] = False
            _call(unet, _unet_inputs(unet, seed=6, batch=1))  # run call 4: nothing whole is kept, so full
    finally:
        failing.remove()
        counter.remove()
    assert counter.counts["down1"] == 4
    assert counter.counts["down0"] == 6


def test_deepcache_works_with_controlnet(tiny_models):
    """The ControlNet's shallow residuals reach up_blocks[-1] every step; its deep ones act on full steps."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        str(tiny_models("sd15")),
        controlnet=ControlNetModel.from_pretrained(str(tiny_models("controlnet-sd15"))),
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    control = Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    eager = _generate(pipe, image=control)
    with deep_cache(pipe.unet, interval=1):
        assert np.array_equal(_generate(pipe, image=control), eager)
    with deep_cache(pipe.unet, interval=3):
        fast = _generate(pipe, image=control)
    diff = np.abs(fast - eager)
    assert 0 < diff.max() < DEEPCACHE_MAX_DIFF
    assert diff.mean() < DEEPCACHE_MEAN_DIFF


@pytest.mark.parametrize("interval", [0, -1, 1.5])
def test_deepcache_rejects_a_bad_interval(pipelines, interval):
    with pytest.raises(AtelierError) as raised, deep_cache(pipelines("sd15").unet, interval=interval):
        pass
    assert raised.value.field == "fast"


def test_fast_mode_deepcache_uses_the_default_interval(pipelines):
    pipe = pipelines("sd15")
    counter = _branch_counter(pipe.unet)
    try:
        with fast_mode(pipe.unet, "deepcache"):
            _generate(pipe)
    finally:
        counter.remove()
    assert counter.counts["down1"] == len(range(0, counter.counts["unet"], 3)) == 2  # calls 0 and 3, N=3


# -- Token merging ------------------------------------------------------------------------------------------------


def test_merge_then_unmerge_is_lossless_for_tokens_equal_per_cell():
    """Each 2x2 cell holds one value: every source merges into its own cell's destination, losing nothing."""
    height, width = 6, 8
    cells = torch.randn(2, height // 2, width // 2, 5)
    x = cells.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2).reshape(2, height * width, 5)
    destinations, sources = _merge_destinations(height, width, torch.Generator().manual_seed(3), x.device)
    assert len(destinations) == (height // 2) * (width // 2)
    merge, unmerge = _bipartite_soft_matching(x, destinations, sources, 0.5)
    merged = merge(x)
    assert merged.shape == (2, height * width - height * width // 2, 5)
    assert torch.allclose(unmerge(merged), x)


@pytest.mark.parametrize("arch", ARCHES)
def test_tome_merges_self_attention_tokens_in_the_highest_resolution_blocks(pipelines, arch):
    pipe = pipelines(arch)
    blocks = _highest_resolution_transformer_blocks(pipe.unet)
    assert blocks  # SD 1.5: the full-resolution level; SDXL: its first attention level
    tokens: dict[str, list[int]] = {"self": [], "cross": []}
    handles = [
        hook
        for block in blocks
        for hook in (
            block.attn1.to_q.register_forward_hook(
                lambda m, args, out: tokens["self"].append(args[0].shape[1])
            ),
            block.attn2.to_q.register_forward_hook(
                lambda m, args, out: tokens["cross"].append(args[0].shape[1])
            ),
        )
    ]
    try:
        with token_merging(pipe.unet, ratio=0.5):
            _generate(pipe, size=TOME_SIZE)
    finally:
        for handle in handles:
            handle.remove()
    full = tokens["cross"][0]  # cross-attention queries are not merged
    assert set(tokens["cross"]) == {full}
    assert set(tokens["self"]) == {full - int(full * 0.5)}
    assert len(tokens["self"]) == len(tokens["cross"])  # every call of every block merged


@pytest.mark.parametrize("arch", ARCHES)
def test_tome_stays_close_to_eager_and_is_reproducible(pipelines, arch):
    pipe = pipelines(arch)
    before = _state(pipe.unet)
    eager = _generate(pipe, size=TOME_SIZE)
    with token_merging(pipe.unet):
        fast = _generate(pipe, size=TOME_SIZE)
    with fast_mode(pipe.unet, "tome"):
        again = _generate(pipe, size=TOME_SIZE)
    diff = np.abs(fast - eager)
    assert 0 < diff.max() < TOME_MAX_DIFF
    assert diff.mean() < TOME_MEAN_DIFF
    assert np.array_equal(again, fast)  # the merge destinations are seeded per generation
    assert _state(pipe.unet) == before


@pytest.mark.parametrize("arch", ARCHES)
def test_tome_unet_output_is_close_to_eager(pipelines, arch):
    unet = pipelines(arch).unet
    inputs = _unet_inputs(unet, seed=1, latent=16)
    eager = _call(unet, inputs)
    with token_merging(unet):
        fast = _call(unet, inputs)
    relative = ((fast - eager).norm() / eager.norm()).item()
    assert 0 < relative < TOME_UNET_RELATIVE
    assert torch.equal(_call(unet, inputs), eager)  # restored on exit


def test_tome_rejects_a_bad_ratio(pipelines):
    with pytest.raises(AtelierError) as raised, token_merging(pipelines("sd15").unet, ratio=1.0):
        pass
    assert raised.value.field == "fast"
