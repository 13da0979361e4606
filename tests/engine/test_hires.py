"""Hires fix: the engine against diffusers doing the same two passes by hand, sizes, infotext and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atelier.engine.hires import hires_size
from atelier.engine.infotext import parse_infotext
from atelier.engine.request import GenerationRequest
from atelier.errors import AtelierError

PROMPT = "a photo of a yellow windbreaker, forest"
NEGATIVE = "low quality"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _request(model, **overrides) -> GenerationRequest:
    values = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        model=str(model),
        sampler="Euler",
        steps=4,
        width=64,
        height=64,
        seed=1234,
        enable_hr=True,
        denoising_strength=0.5,
    )
    values.update(overrides)
    return GenerationRequest(**values)


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def _reference(path, *, upscaler: str, size: tuple[int, int], steps: int, strength: float, seed: int):
    """The two passes with plain diffusers, as a diffusers user would write the hires fix."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from atelier.engine.samplers import make_scheduler

    txt2img = StableDiffusionPipeline.from_pretrained(
        str(path), safety_checker=None, requires_safety_checker=False
    )
    txt2img.set_progress_bar_config(disable=True)
    txt2img.scheduler = make_scheduler("Euler", dict(txt2img.scheduler.config))
    common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=7.0)
    latent = upscaler == "Latent"
    first = txt2img(
        **common,
        num_inference_steps=steps,
        width=64,
        height=64,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="latent" if latent else "pil",
    ).images
    if latent:
        image = F.interpolate(first, size=(size[1] // 8, size[0] // 8), mode="bilinear", antialias=False)
    else:
        image = [picture.resize(size, resample=1) for picture in first]  # PIL's LANCZOS
    img2img = StableDiffusionImg2ImgPipeline(**txt2img.components)
    img2img.set_progress_bar_config(disable=True)
    img2img.scheduler = make_scheduler("Euler", dict(txt2img.scheduler.config))
    return img2img(
        **common,
        image=image,
        strength=strength,
        num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix_is_diffusers_txt2img_then_img2img_at_the_upscaled_size(tiny_models, engine, upscaler):
    path = tiny_models("sd15")
    result = engine.generate(_request(path, hr_upscaler=upscaler, hr_scale=2.0))
    ours = result.images[0]
    assert ours.image.size == (128, 128)
    theirs = _reference(path, upscaler=upscaler, size=(128, 128), steps=4, strength=0.5, seed=1234)
    assert np.abs(_pixels(ours.image) - _pixels(theirs)).max() <= 2


def test_the_infotext_records_the_hires_fix_as_a1111_writes_it(tiny_models, engine):
    steps_seen = []
    result = engine.generate(
        _request(tiny_models("sd15"), hr_resize_x=96, hr_second_pass_steps=6, hr_upscaler="Latent (nearest)"),
        on_step=lambda done, total: steps_seen.append((done, total)),
    )
    image = result.images[0]
    assert image.image.size == (96, 96)  # resize_x alone keeps the aspect ratio
    params = parse_infotext(image.infotext)
    # Read back as A1111's parser reads it: the first pass's size, and the hires resize target.
    assert (params["Size-1"], params["Size-2"]) == ("64", "64")
    assert (params["Hires resize-1"], params["Hires resize-2"]) == ("96", "96")
    assert params["Hires steps"] == "6"
    assert params["Hires upscaler"] == "Latent (nearest)"
    assert params["Denoising strength"] == "0.5"
    assert "Hires upscale" not in params
    # Progress counts both passes: 4 steps, then int(6 * 0.5) = 3.
    assert steps_seen[-1] == (7, 7)


def test_hires_sizes_follow_a1111():
    assert hires_size(512, 768, scale=1.5, resize_x=0, resize_y=0) == (768, 1152)
    assert hires_size(512, 768, scale=2, resize_x=0, resize_y=1000) == (664, 1000)  # rounded down to 8
    assert hires_size(500, 500, scale=1.3, resize_x=0, resize_y=0) == (648, 648)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hr_upscaler": "4x-UltraSharp"}, "hr_upscaler"),
        ({"hr_scale": 8.0}, "hr_scale"),
        ({"hr_resize_x": 10}, "hr_resize_x"),
        ({"refiner": "some-refiner"}, "enable_hr"),
        ({"denoising_strength": 0.1}, "denoising_strength"),
        ({"hr_prompt": "a parka <lora:other:1>"}, "hr_prompt"),
    ],
)
def test_bad_hires_settings_name_their_field(tiny_models, engine, overrides, field):
    with pytest.raises(AtelierError) as caught:
        engine.generate(_request(tiny_models("sd15"), **overrides))
    assert caught.value.field == field
