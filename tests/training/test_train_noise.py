"""The training objective: offset noise, targets for epsilon and v-prediction, Min-SNR weights."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from atelier.training.noise import min_snr_weights, sample_noise, sample_timesteps, training_target


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def _scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=prediction_type
    )


def test_noise_offset_adds_a_constant_per_image_and_channel() -> None:
    latents = torch.zeros(64, 4, 16, 16)
    plain = sample_noise(latents, torch.Generator().manual_seed(0))
    offset = sample_noise(latents, torch.Generator().manual_seed(0), noise_offset=0.5)
    # Same Gaussian draw first; the offset shifts whole channels, so per-channel means spread out.
    channel_means_plain = plain.mean(dim=(2, 3)).std()
    channel_means_offset = offset.mean(dim=(2, 3)).std()
    assert channel_means_plain < 0.15 < channel_means_offset
    difference = offset - plain
    assert torch.allclose(difference, difference[:, :, :1, :1].expand_as(difference), atol=1e-6)


def test_noise_is_reproducible_from_the_generator() -> None:
    latents = torch.zeros(2, 4, 8, 8)
    first = sample_noise(latents, torch.Generator().manual_seed(7), 0.1)
    second = sample_noise(latents, torch.Generator().manual_seed(7), 0.1)
    assert torch.equal(first, second)
    steps = sample_timesteps(1000, 1000, torch.Generator().manual_seed(1), "cpu")
    assert steps.min() >= 0 and steps.max() < 1000 and steps.dtype == torch.long


def test_targets_follow_the_prediction_type() -> None:
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    steps = torch.tensor([10, 500])
    assert training_target(_scheduler("epsilon"), latents, noise, steps) is noise
    v_scheduler = _scheduler("v_prediction")
    torch.testing.assert_close(
        training_target(v_scheduler, latents, noise, steps), v_scheduler.get_velocity(latents, noise, steps)
    )


def test_min_snr_caps_easy_timesteps_and_keeps_hard_ones() -> None:
    scheduler = _scheduler()
    weights = min_snr_weights(scheduler, torch.tensor([1, 999]), gamma=5.0)
    # t=1 is nearly noise-free (huge SNR): its weight is gamma / SNR, far below 1; t=999 (SNR < 5) keeps 1.
    assert weights[0] < 0.01
    assert weights[1] == pytest.approx(1.0)
    v_weights = min_snr_weights(_scheduler("v_prediction"), torch.tensor([999]), gamma=5.0)
    assert v_weights[0] < 1.0
