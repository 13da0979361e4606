"""A1111's "latent noise" and "latent nothing" inpainting fills: the masked latents replaced before sampling."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from atelier.engine.memory import execution_device
from atelier.engine.request import GenerationRequest


def latent_fill_inputs(
    pipeline: Any,
    image: Image.Image,
    mask: Image.Image,
    request: GenerationRequest,
    seeds: list[int],
) -> dict[str, Any]:
    """A1111's "latent noise" / "latent nothing": replace the masked latents before sampling starts."""
    device, dtype = execution_device(pipeline), pipeline.unet.dtype
    pixels = pipeline.image_processor.preprocess(image, height=request.height, width=request.width)
    pixels = pixels.to(device=device, dtype=pipeline.vae.dtype)
    latents = pipeline.vae.encode(pixels).latent_dist.mean * pipeline.vae.config.scaling_factor
    latent_size = (latents.shape[-1], latents.shape[-2])
    masked = np.asarray(mask.resize(latent_size, Image.Resampling.BILINEAR)) >= 128
    latent_mask = torch.from_numpy(masked).to(device=device, dtype=latents.dtype)[None, None]
    per_image = []
    for seed in seeds:
        if request.inpainting_fill == "latent noise":
            # Its own stream (a fixed offset from the seed) so the sampler's noise for this seed stays diffusers'.
            generator = torch.Generator("cpu").manual_seed(seed + 0x5EED)
            fill = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(
                device, latents.dtype
            )
        else:
            fill = torch.zeros_like(latents)
        per_image.append(latents * (1 - latent_mask) + fill * latent_mask)
    inputs: dict[str, Any] = {"image": torch.cat(per_image).to(dtype)}
    # With latents as `image` the pipeline cannot mask pixels itself; 9-channel UNets see this as their
    # masked-image conditioning, as in A1111 (the unmasked photo, masked area grey).
    binary = mask.point(lambda value: 255 if value >= 128 else 0)
    keep = Image.composite(Image.new("RGB", image.size, (127, 127, 127)), image, binary)
    keep_pixels = pipeline.image_processor.preprocess(keep, height=request.height, width=request.width)
    keep_latents = pipeline.vae.encode(
        keep_pixels.to(device=device, dtype=pipeline.vae.dtype)
    ).latent_dist.mean
    inputs["masked_image_latents"] = (keep_latents * pipeline.vae.config.scaling_factor).to(dtype)
    return inputs
