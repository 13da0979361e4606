"""GPU memory plans (engine/memory.py): the starting plan, VAE tiling and offload on real tiny models, and the
fallback to leaner plans after an out-of-memory error.

There is no GPU here, so the fallback runs with device "cuda" and two things replaced: the free memory (a number)
and the step that applies a plan (recorded instead of moving anything). Everything that works on the CPU, VAE
tiling and slicing and model CPU offload, runs for real on the tiny models.
"""

from __future__ import annotations

import pytest
import torch

from atelier.engine.memory import (
    GIB,
    MEMORY_PLANS,
    MemoryManager,
    apply_plan,
    choose_plan,
    estimate_bytes,
    execution_device,
    plan_of,
    reset,
    vram_stats,
)
from atelier.errors import AtelierError

# Weights in fp16 (bytes), from the published checkpoints: SDXL base's UNet 2.6B parameters (5.14 GB), its two
# text encoders 1.6 GB and VAE 0.17 GB; SD 1.5's UNet 860M (1.72 GB), text encoder 0.25 GB, VAE 0.17 GB.
SDXL = {"weights_bytes": 6_940_000_000, "largest_model_bytes": 5_140_000_000}
SD15 = {"weights_bytes": 2_130_000_000, "largest_model_bytes": 1_720_000_000}
# What this process can use on a card with a model loaded: the total CUDA reports (an "8 GB" RTX 3070 says
# 7.79 GiB, a "12 GB" RTX 3060 11.76 GiB) less the CUDA context and a desktop, about 0.5 GiB.
CARD_8GB = int(7.3 * GIB)
CARD_12GB = int(11.2 * GIB)
CARD_24GB = int(23 * GIB)


def _estimate(arch: str, weights: dict[str, int], width: int, height: int, batch: int = 1):
    def estimate(plan: str) -> int:
        return estimate_bytes(
            plan, architecture=arch, width=width, height=height, batch=batch, dtype_bytes=2, **weights
        )

    return estimate


@pytest.mark.parametrize(
    ("arch", "weights", "size", "available", "expected"),
    [
        # SD 1.5 at 512: 2 GiB of weights and a 1.2 GiB decode fit any card of 8 GB and up.
        ("sd15", SD15, (512, 512), CARD_8GB, "full"),
        ("sd15", SD15, (512, 512), CARD_12GB, "full"),
        # SDXL at 864x1536: 6.5 GiB of weights and a ~6 GiB decode need 24 GB to run in full.
        ("sdxl", SDXL, (864, 1536), CARD_24GB, "full"),
        # On 12 GB the weights stay on the card and the VAE decodes 512-pixel tiles (~1.2 GiB): ~7.6 GiB.
        ("sdxl", SDXL, (864, 1536), CARD_12GB, "vae_tiling"),
        # On 8 GB all the weights do not fit beside anything; the UNet alone (4.8 GiB) does, with ~0.6 GiB of
        # activations: model offload, ~6 GiB.
        ("sdxl", SDXL, (864, 1536), CARD_8GB, "model_offload"),
        # A 4 GB card cannot hold the SDXL UNet: layer by layer.
        ("sdxl", SDXL, (864, 1536), 4 * GIB, "sequential_offload"),
    ],
)
def test_the_starting_plan_is_the_fullest_that_fits_the_free_memory(arch, weights, size, available, expected):
    assert choose_plan(available, _estimate(arch, weights, *size)) == expected


def test_plans_get_leaner_as_free_memory_drops_and_larger_batches_need_more():
    estimate = _estimate("sdxl", SDXL, 864, 1536)
    chosen = [choose_plan(gib * GIB, estimate) for gib in range(40, 0, -1)]
    assert [MEMORY_PLANS.index(plan) for plan in chosen] == sorted(
        MEMORY_PLANS.index(plan) for plan in chosen
    )
    assert set(chosen) == set(MEMORY_PLANS)
    for plan in MEMORY_PLANS:
        one, four = (_estimate("sdxl", SDXL, 864, 1536, batch)(plan) for batch in (1, 4))
        assert one < four
    # Each plan needs less than the one before it; full at 864x1536 is peaked by the VAE decode.
    needs = [estimate(plan) for plan in MEMORY_PLANS]
    assert needs == sorted(needs, reverse=True)
    assert needs[0] - SDXL["weights_bytes"] > 5 * GIB
    # A VAE decoder upcast to fp32 (after an fp16 overflow) needs twice the decode memory.
    fp32_decoder = estimate_bytes(
        "full", architecture="sdxl", width=864, height=1536, batch=1, vae_dtype_bytes=4, **SDXL
    )
    assert fp32_decoder - SDXL["weights_bytes"] == 2 * (needs[0] - SDXL["weights_bytes"])


# -- the real diffusers paths on the tiny models -----------------------------------------------------------------


@pytest.fixture
def pipeline(tiny_models):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_models("sd15")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _smooth_picture(size: int) -> torch.Tensor:
    ramp = torch.linspace(-1, 1, size)
    x, y = ramp[None, :].expand(size, size), ramp[:, None].expand(size, size)
    return torch.stack([x, y, x * y])[None]


def _decoder_calls(vae) -> list[int]:
    calls: list[int] = []
    vae.decoder.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_vae_tiling_decodes_tile_by_tile_close_to_the_whole_picture(pipeline):
    vae = pipeline.vae
    with torch.no_grad():
        torch.manual_seed(0)
        latents = vae.encode(_smooth_picture(256)).latent_dist.sample()  # 32x32 latents
        other = vae.encode(_smooth_picture(256).flip(-1, -2)).latent_dist.sample()
        whole = vae.decode(latents).sample
        unrelated = vae.decode(other).sample
        calls = _decoder_calls(vae)
        vae.enable_tiling()
        # Tiles of 16 latents (128 pixels) with diffusers' 25% overlap: a step of 12, so 3x3 tiles.
        vae.tile_latent_min_size, vae.tile_sample_min_size = 16, 128
        tiled = vae.decode(latents).sample
    assert len(calls) == 9 and tiled.shape == whole.shape

    # Tolerance. Each tile is normalized with its own statistics (GroupNorm; the mid-block attention sees one
    # tile), as with a real VAE; a trained VAE changes little for it, this random-weight one visibly. So: the
    # tiled picture must be the same picture (correlation >= 0.8 with the whole one, measured 0.89, where an
    # unrelated picture scores 0.22) and differ by at most 20 levels of 255 on average (measured 13).
    def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
        return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()

    def eight_bit(picture: torch.Tensor) -> torch.Tensor:
        return ((picture / 2 + 0.5).clamp(0, 1) * 255).round()

    assert correlation(whole, tiled) >= 0.8 > 0.5 > correlation(whole, unrelated)
    assert (eight_bit(whole) - eight_bit(tiled)).abs().mean() <= 20


def test_vae_slicing_decodes_a_batch_image_by_image_with_the_same_result(pipeline):
    vae = pipeline.vae
    with torch.no_grad():
        latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        together = vae.decode(latents).sample
        calls = _decoder_calls(vae)
        vae.enable_slicing()
        sliced = vae.decode(latents).sample
    assert len(calls) == 3
    torch.testing.assert_close(sliced, together, atol=1e-4, rtol=0)  # only the summation order can differ


def _generate(pipe, size: int = 64):
    generator = torch.Generator().manual_seed(1)
    return pipe("a red bottle", num_inference_steps=2, width=size, height=size, generator=generator).images[0]


def test_the_vae_tiling_plan_tiles_the_pipelines_vae_and_reset_undoes_it(pipeline):
    apply_plan(pipeline, "vae_tiling", "cpu")
    assert pipeline.vae.use_tiling and pipeline.vae.use_slicing
    assert pipeline.vae.tile_sample_min_size == 64  # the tiny VAE's own sample size, under VAE_TILE_PIXELS
    calls = _decoder_calls(pipeline.vae)
    assert _generate(pipeline, 128).size == (128, 128)
    assert len(calls) > 1  # 16x16 latents in tiles of 8
    reset([pipeline], "cpu")
    assert not pipeline.vae.use_tiling and not pipeline.vae.use_slicing


def test_model_offload_gives_the_same_picture_and_reset_removes_its_hooks(pipeline):
    import numpy as np

    before = np.asarray(_generate(pipeline))
    # diffusers' model CPU offload runs on the CPU too ("cpu:0" as the execution device): the real hooks.
    apply_plan(pipeline, "model_offload", "cpu")
    assert hasattr(pipeline.unet, "_hf_hook") and execution_device(pipeline).type == "cpu"
    np.testing.assert_array_equal(np.asarray(_generate(pipeline)), before)
    reset([pipeline], "cpu")
    assert not any(
        hasattr(module, "_hf_hook") for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder)
    )
    np.testing.assert_array_equal(np.asarray(_generate(pipeline)), before)


# -- the fallback after out-of-memory errors ---------------------------------------------------------------------


class _Card:
    """A GPU for the manager: a free-memory reading and a record of the plans applied, pipeline by pipeline."""

    def __init__(self, free: int = 64 * GIB) -> None:
        self.free = free
        self.applied: list[tuple[int, str]] = []
        self.released = 0

    def manager(self) -> MemoryManager:
        return MemoryManager("cuda", free_memory=lambda: self.free, apply=self._apply, release=self._release)

    def _apply(self, pipeline, plan: str, device: str) -> None:
        assert device == "cuda"
        self.applied.append((id(pipeline), plan))

    def _release(self) -> None:
        self.released += 1


def _failing(times: int, error: Exception | None = None):
    """An attempt that runs out of memory ``times`` times, then returns how many calls it took."""
    calls: list[int] = []

    def attempt() -> int:
        calls.append(1)
        if len(calls) <= times:
            raise error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return len(calls)

    return attempt, calls


def _run(manager: MemoryManager, pipelines, attempt, *, size=(1536, 864), batch=1, hires=False):
    width, height = size
    return manager.run(
        pipelines, architecture="sdxl", width=width, height=height, batch=batch, attempt=attempt, hires=hires
    )


def test_out_of_memory_is_retried_with_leaner_plans_and_the_plan_that_worked_sticks(pipeline):
    from diffusers import StableDiffusionImg2ImgPipeline

    variant = StableDiffusionImg2ImgPipeline.from_pipe(pipeline)
    pipelines = [pipeline, variant]
    card = _Card()
    manager = card.manager()
    attempt, calls = _failing(2)
    assert _run(manager, pipelines, attempt) == 3
    # Plenty free: started in full (nothing to apply to a model as loaded), then tiling, then model offload,
    # applied to every pipeline of the model, with the cache freed before each retry.
    assert card.applied == [(id(p), plan) for plan in ("vae_tiling", "model_offload") for p in pipelines]
    assert card.released == 2
    assert manager.plan == plan_of(pipelines) == "model_offload"

    # The next request of that size starts there: nothing to apply again, one call.
    card.applied.clear()
    attempt, calls = _failing(0)
    _run(manager, pipelines, attempt)
    assert (len(calls), card.applied, manager.plan) == (1, [], "model_offload")
    # A smaller one starts from what the estimate says (full, the memory is there) and is faster for it.
    _run(manager, pipelines, _failing(0)[0], size=(512, 512))
    assert card.applied == [(id(p), "full") for p in pipelines] and manager.plan == "full"

    # A component swapped in (a request's own VAE) gets the plan too; forgetting the model starts over.
    card.applied.clear()
    _run(manager, pipelines, _failing(0)[0])
    pipeline.vae = type(pipeline.vae).from_config(pipeline.vae.config)
    _run(manager, pipelines, _failing(0)[0])
    assert card.applied == [*((id(p), "model_offload") for p in pipelines), (id(pipeline), "model_offload")]
    assert MemoryManager._floor(pipelines, 1536 * 864) == "model_offload"  # still remembered...
    reset(pipelines, "cpu")  # ...until the model is reset (unloaded, reloaded, moved off the GPU)
    assert plan_of(pipelines) == "full" and MemoryManager._floor(pipelines, 1536 * 864) == "full"


def test_a_card_with_little_free_memory_starts_lean(pipeline):
    card = _Card(free=0)
    manager = card.manager()
    _run(manager, [pipeline], _failing(0)[0])
    assert card.applied == [(id(pipeline), "sequential_offload")]


def test_when_every_plan_runs_out_of_memory_the_error_names_the_size_and_what_to_change(pipeline):
    card = _Card()
    attempt, calls = _failing(99)
    with pytest.raises(AtelierError) as raised:
        _run(card.manager(), [pipeline], attempt, batch=4, hires=True)
    assert len(calls) == len(MEMORY_PLANS)
    message = str(raised.value)
    assert message == (
        "out of GPU memory at 1536x864, batch 4 (SDXL) even with sequential CPU offload: "
        "lower the size or the batch size, or turn off hires fix"
    )
    assert raised.value.field == "width" and "\n" not in message
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)


def test_the_runtime_error_of_older_cuda_paths_counts_as_out_of_memory(pipeline):
    attempt, calls = _failing(1, RuntimeError("CUDA error: out of memory"))
    assert _run(_Card().manager(), [pipeline], attempt) == 2


@pytest.mark.parametrize("error", [ValueError("bad size"), RuntimeError("expected scalar type Half")])
def test_other_errors_are_not_retried(pipeline, error):
    card = _Card()
    attempt, calls = _failing(1, error)
    with pytest.raises(type(error)):
        _run(card.manager(), [pipeline], attempt)
    assert len(calls) == 1 and card.applied == [] and card.released == 0


def test_on_the_cpu_the_batch_just_runs():
    card = _Card()
    manager = MemoryManager("cpu", free_memory=lambda: 0, apply=card._apply)
    attempt, calls = _failing(1)
    with pytest.raises(torch.OutOfMemoryError):  # RAM is not managed here: nothing to fall back to
        _run(manager, [], attempt)
    assert len(calls) == 1 and card.applied == [] and manager.plan == "full"
    assert vram_stats("cpu") is None
