"""The diffusion training objective: noise (with kohya's offset noise), its target, and per-sample loss weights."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.training_utils import compute_snr


def sample_noise(
    latents: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0
) -> torch.Tensor:
    """Gaussian noise shaped like ``latents``; with ``noise_offset`` plus a random per-channel constant.

    The offset (kohya's ``noise_offset``, after Nicholas Guttenberg's "offset noise") lets the model learn to
    shift an image's overall brightness, which plain Gaussian noise almost never asks of it: without it, a LoRA
    trained on white-background product shots drifts towards mid-grey backgrounds.
    """
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=torch.float32)
    if noise_offset:
        batch, channels = latents.shape[:2]
        offset = torch.randn((batch, channels, 1, 1), generator=generator, device=latents.device)
        noise = noise + noise_offset * offset
    return noise.to(latents.dtype)


def sample_timesteps(
    batch: int, num_train_timesteps: int, generator: torch.Generator, device: Any
) -> torch.Tensor:
    """Uniform training timesteps in ``[0, num_train_timesteps)``."""
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=device).long()


def training_target(
    scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet must predict: the noise (epsilon models) or the velocity (v-prediction models)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {prediction_type!r}")


def min_snr_weights(scheduler: Any, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR weighting (Hang et al. 2023), in kohya's form.

    Low-noise timesteps have a huge signal-to-noise ratio and would dominate the loss; capping it at ``gamma``
    balances the timesteps. v-prediction already folds in one ``snr + 1`` factor, hence the different divisor.
    """
    snr = compute_snr(scheduler, timesteps)
    capped = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return capped / (snr + 1)
    return capped / snr
