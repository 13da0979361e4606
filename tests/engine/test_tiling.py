"""Seamless tiling: circular padding in the UNet and VAE, against diffusers with the same change made by hand."""

from __future__ import annotations

import numpy as np
import torch

from atelier.engine.infotext import parse_infotext
from atelier.engine.request import GenerationRequest
from atelier.engine.samplers import make_scheduler


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def test_tiling_is_circular_padding_in_unet_and_vae_and_is_undone_afterwards(tiny_models, engine):
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    path = tiny_models("sd15")
    request = GenerationRequest(
        prompt="a fabric pattern",
        model=str(path),
        sampler="Euler",
        steps=4,
        width=64,
        height=64,
        seed=9,
        tiling=True,
    )
    tiled = engine.generate(request).images[0]
    plain = engine.generate(GenerationRequest(**{**request.__dict__, "tiling": False})).images[0]

    pipe = StableDiffusionPipeline.from_pretrained(
        str(path), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("Euler", dict(pipe.scheduler.config))
    for module in (pipe.unet, pipe.vae):
        for layer in module.modules():
            if isinstance(layer, torch.nn.Conv2d):
                layer.padding_mode = "circular"
    reference = pipe(
        "a fabric pattern",
        num_inference_steps=4,
        width=64,
        height=64,
        guidance_scale=7.0,
        generator=torch.Generator("cpu").manual_seed(9),
    ).images[0]
    assert np.abs(_pixels(tiled.image) - _pixels(reference)).max() <= 2
    assert np.abs(_pixels(tiled.image) - _pixels(plain.image)).max() > 10  # the padding really changed
    assert parse_infotext(tiled.infotext)["Tiling"] == "True"
    # The cached model is left as it was: the next request without tiling gives the plain picture again.
    again = engine.generate(GenerationRequest(**{**request.__dict__, "tiling": False})).images[0]
    assert _pixels(again.image).tolist() == _pixels(plain.image).tolist()
