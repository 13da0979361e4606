"""Generation on tiny models, checked against diffusers itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from atelier.engine import GenerationCanceled
from atelier.engine.infotext import parse_infotext
from atelier.engine.request import GenerationRequest
from atelier.errors import AtelierError

SIZE = 64


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def _request(model, **overrides) -> GenerationRequest:
    values = dict(
        prompt="a photo of a yellow windbreaker, forest",
        negative_prompt="low quality, watermark",
        model=str(model),
        steps=4,
        width=SIZE,
        height=SIZE,
        seed=1234,
    )
    values.update(overrides)
    return GenerationRequest(**values)


def _photo(size=(SIZE, SIZE), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _mask(size=(SIZE, SIZE), box=(16, 16, 40, 40)) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def _diffusers_pipeline(pipeline_cls, path, scheduler_cls):
    pipe = pipeline_cls.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("sampler", "scheduler_name", "extra"),
    [
        ("Euler a", "EulerAncestralDiscreteScheduler", {}),
        ("DDIM", "DDIMScheduler", {}),
        ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ],
)
def test_txt2img_matches_plain_diffusers(tiny_models, engine, sampler, scheduler_name, extra):
    import diffusers
    from diffusers import StableDiffusionPipeline

    from atelier.engine.samplers import make_scheduler

    path = tiny_models("sd15")
    request = _request(path, sampler=sampler)
    ours = engine.generate(request).images[0]

    pipe = StableDiffusionPipeline.from_pretrained(
        str(path), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    # The reference scheduler is built the way a diffusers user would, from the model's own config.
    reference = make_scheduler(sampler, dict(pipe.scheduler.config))
    assert type(reference).__name__ == scheduler_name
    for key, value in extra.items():
        assert reference.config[key] == value
    pipe.scheduler = reference
    theirs = pipe(
        request.prompt,
        negative_prompt=request.negative_prompt,
        num_inference_steps=4,
        height=SIZE,
        width=SIZE,
        guidance_scale=7.0,
        generator=torch.Generator("cpu").manual_seed(1234),
    ).images[0]
    assert getattr(diffusers, scheduler_name)
    assert ours.image.size == (SIZE, SIZE)
    assert np.abs(_pixels(ours.image) - _pixels(theirs)).max() <= 2


def test_euler_a_is_diffusers_euler_ancestral_from_model_config(tiny_models, engine):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    path = tiny_models("sd15")
    ours = engine.generate(_request(path, sampler="Euler a")).images[0]
    pipe = _diffusers_pipeline(StableDiffusionPipeline, path, EulerAncestralDiscreteScheduler)
    theirs = pipe(
        "a photo of a yellow windbreaker, forest",
        negative_prompt="low quality, watermark",
        num_inference_steps=4,
        height=SIZE,
        width=SIZE,
        guidance_scale=7.0,
        generator=torch.Generator("cpu").manual_seed(1234),
    ).images[0]
    assert np.abs(_pixels(ours.image) - _pixels(theirs)).max() <= 2


def test_same_seed_is_bit_identical_and_other_seed_differs(tiny_models, engine):
    path = tiny_models("sd15")
    first = engine.generate(_request(path)).images[0].image
    second = engine.generate(_request(path)).images[0].image
    other = engine.generate(_request(path, seed=99)).images[0].image
    assert first.tobytes() == second.tobytes()
    assert first.tobytes() != other.tobytes()


def test_batch_seeds_follow_a1111_and_match_single_images(tiny_models, engine):
    path = tiny_models("sd15")
    result = engine.generate(_request(path, seed=500, batch_size=2, batch_count=2))
    assert result.seeds == [500, 501, 502, 503]
    single = engine.generate(_request(path, seed=502)).images[0].image
    assert np.abs(_pixels(result.images[2].image) - _pixels(single)).max() <= 2
    assert parse_infotext(result.images[3].infotext)["Seed"] in (503, "503")


def test_random_seed_is_recorded(tiny_models, engine):
    result = engine.generate(_request(tiny_models("sd15"), seed=-1))
    seed = result.images[0].seed
    assert 0 <= seed < 2**32
    assert f"Seed: {seed}," in result.images[0].infotext


def test_model_stays_warm_between_generations(tiny_models):
    from atelier.engine.generate import Engine

    engine = Engine(device="cpu")
    path = tiny_models("sd15")
    engine.generate(_request(path))
    engine.generate(_request(path, prompt="another prompt", sampler="DPM++ 2M"))
    assert engine.models.loads == 1


@pytest.mark.parametrize(("width", "height"), [(72, 104), (96, 64)])
def test_any_multiple_of_8_works(tiny_models, engine, width, height):
    image = engine.generate(_request(tiny_models("sd15"), width=width, height=height)).images[0].image
    assert image.size == (width, height)


@pytest.mark.parametrize("strength", [0.3, 0.8])
def test_img2img_matches_diffusers_img2img(tiny_models, engine, strength):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionImg2ImgPipeline

    path = tiny_models("sd15")
    init = _photo()
    ours = engine.generate(_request(path, init_image=init, denoising_strength=strength, steps=10)).images[0]
    pipe = _diffusers_pipeline(StableDiffusionImg2ImgPipeline, path, EulerAncestralDiscreteScheduler)
    theirs = pipe(
        "a photo of a yellow windbreaker, forest",
        negative_prompt="low quality, watermark",
        image=init,
        strength=strength,
        num_inference_steps=10,
        guidance_scale=7.0,
        generator=torch.Generator("cpu").manual_seed(1234),
    ).images[0]
    assert np.abs(_pixels(ours.image) - _pixels(theirs)).max() <= 2
    assert f"Denoising strength: {strength}" in ours.infotext


def test_img2img_strength_too_low_for_steps_is_a_clear_error(tiny_models, engine):
    with pytest.raises(AtelierError, match="denoising_strength"):
        engine.generate(_request(tiny_models("sd15"), init_image=_photo(), denoising_strength=0.01, steps=10))


@pytest.mark.parametrize("arch", ["sd15", "sd15-inpaint"])
@pytest.mark.parametrize("fill", ["original", "fill", "latent noise", "latent nothing"])
def test_inpainting_keeps_unmasked_pixels_exactly(tiny_models, engine, arch, fill):
    from atelier.engine.masks import prepare_mask

    photo = _photo(seed=3)
    mask = _mask()
    result = engine.generate(
        _request(tiny_models(arch), init_image=photo, mask=mask, inpainting_fill=fill, denoising_strength=0.9)
    ).images[0]
    blurred = np.asarray(prepare_mask(mask, photo.size, 4))
    outside = blurred == 0
    assert outside.sum() > 0.5 * outside.size
    assert (_pixels(result.image)[outside] == _pixels(photo)[outside]).all()
    assert (_pixels(result.image)[blurred == 255] != _pixels(photo)[blurred == 255]).any()
    assert parse_infotext(result.infotext)["Masked content"] == fill


def test_only_masked_inpaints_a_region_of_a_larger_photo(tiny_models, engine):
    from atelier.engine.masks import prepare_mask

    photo = _photo(size=(160, 128), seed=5)
    mask = _mask(size=(160, 128), box=(100, 60, 130, 90))
    result = engine.generate(
        _request(
            tiny_models("sd15"), init_image=photo, mask=mask, inpaint_only_masked=True, inpaint_padding=8
        )
    ).images[0]
    assert result.image.size == (160, 128)
    blurred = np.asarray(prepare_mask(mask, photo.size, 4))
    assert (_pixels(result.image)[blurred == 0] == _pixels(photo)[blurred == 0]).all()
    assert (_pixels(result.image)[blurred == 255] != _pixels(photo)[blurred == 255]).any()
    info = parse_infotext(result.infotext)
    assert info["Inpaint area"] == "Only masked"


def test_inverted_mask_repaints_the_other_side(tiny_models, engine):
    photo = _photo(seed=8)
    mask = _mask()
    result = engine.generate(
        _request(tiny_models("sd15"), init_image=photo, mask=mask, mask_invert=True)
    ).images[0]
    from atelier.engine.masks import prepare_mask

    kept = np.asarray(prepare_mask(mask, photo.size, 4, invert=True)) == 0
    assert kept.sum() > 0 and (np.asarray(mask)[kept] == 255).all()
    assert (_pixels(result.image)[kept] == _pixels(photo)[kept]).all()
    assert (_pixels(result.image)[np.asarray(mask) == 0] != _pixels(photo)[np.asarray(mask) == 0]).any()


def test_mask_size_mismatch_is_a_clear_error(tiny_models, engine):
    with pytest.raises(AtelierError, match="mask size 32x32 differs from image size 64x64"):
        engine.generate(_request(tiny_models("sd15"), init_image=_photo(), mask=Image.new("L", (32, 32))))


def test_sdxl_txt2img_matches_plain_diffusers(tiny_models, engine):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline

    path = tiny_models("sdxl")
    ours = engine.generate(_request(path)).images[0]
    pipe = StableDiffusionXLPipeline.from_pretrained(str(path))
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        "a photo of a yellow windbreaker, forest",
        negative_prompt="low quality, watermark",
        num_inference_steps=4,
        height=SIZE,
        width=SIZE,
        guidance_scale=7.0,
        generator=torch.Generator("cpu").manual_seed(1234),
    ).images[0]
    assert np.abs(_pixels(ours.image) - _pixels(theirs)).max() <= 2


def test_sdxl_base_then_refiner_matches_diffusers_ensemble(tiny_models, engine):
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    base_path, refiner_path = tiny_models("sdxl"), tiny_models("sdxl-refiner")
    request = _request(
        base_path,
        steps=6,
        refiner=str(refiner_path),
        refiner_prompt="ultra-high-definition, photorealistic",
        refiner_negative_prompt="blurry, grainy",
        refiner_switch_at=0.5,
    )
    ours = engine.generate(request).images[0]

    base = StableDiffusionXLPipeline.from_pretrained(str(base_path))
    base.scheduler = EulerAncestralDiscreteScheduler.from_config(base.scheduler.config)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(str(refiner_path))
    refiner.scheduler = EulerAncestralDiscreteScheduler.from_config(refiner.scheduler.config)
    generator = torch.Generator("cpu").manual_seed(1234)
    latents = base(
        request.prompt,
        negative_prompt=request.negative_prompt,
        num_inference_steps=6,
        height=SIZE,
        width=SIZE,
        denoising_end=0.5,
        guidance_scale=7.0,
        output_type="latent",
        generator=[generator],
    ).images
    theirs = refiner(
        "ultra-high-definition, photorealistic",
        negative_prompt="blurry, grainy",
        image=latents,
        num_inference_steps=6,
        denoising_start=0.5,
        guidance_scale=7.0,
        generator=[generator],
    ).images[0]
    assert np.abs(_pixels(ours.image) - _pixels(theirs)).max() <= 2
    info = parse_infotext(ours.infotext)
    assert info["Refiner switch at"] in (0.5, "0.5")
    assert "Refiner" in info


def test_sdxl_inpainting_keeps_unmasked_pixels(tiny_models, engine):
    photo, mask = _photo(seed=4), _mask()
    result = engine.generate(_request(tiny_models("sdxl"), init_image=photo, mask=mask, mask_blur=0)).images[
        0
    ]
    outside = np.asarray(mask) == 0
    assert (_pixels(result.image)[outside] == _pixels(photo)[outside]).all()


def test_refiner_must_follow_sdxl(tiny_models, engine):
    with pytest.raises(AtelierError, match="refiner"):
        engine.generate(_request(tiny_models("sd15"), refiner=str(tiny_models("sdxl-refiner"))))


def test_progress_reports_every_step_and_cancel_stops(tiny_models, engine):
    seen = []
    engine.generate(
        _request(tiny_models("sd15"), steps=5, batch_count=2), on_step=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (10, 10)
    assert [done for done, _ in seen] == list(range(1, 11))

    calls = []
    with pytest.raises(GenerationCanceled) as stopped:
        engine.generate(
            _request(tiny_models("sd15"), steps=20, batch_count=2),
            on_step=lambda d, t: calls.append(d),
            should_cancel=lambda: len(calls) >= 23,
        )
    assert len(calls) == 23
    # The stop carries the first batch, finished, and the second as its latents looked at step 3 (A1111's
    # interrupt returns them); the picture at the stop is not the finished one.
    first, partial = stopped.value.result.images
    assert (first.seed, partial.seed) == (1234, 1235)
    assert partial.image.size == (SIZE, SIZE)
    finished = engine.generate(_request(tiny_models("sd15"), steps=20, seed=1235)).images[0]
    assert _pixels(partial.image).tolist() != _pixels(finished.image).tolist()


def test_infotext_has_a1111_layout(tiny_models, engine):
    result = engine.generate(_request(tiny_models("sd15"), clip_skip=2, sampler="DPM++ 2M Karras"))
    lines = result.images[0].infotext.split("\n")
    assert lines[0] == "a photo of a yellow windbreaker, forest"
    assert lines[1] == "Negative prompt: low quality, watermark"
    assert lines[2].startswith(
        "Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234, "
    )
    info = parse_infotext(result.images[0].infotext)
    assert info["Size-1"] in (64, "64")
    assert info["Clip skip"] in (2, "2")
    assert info["Model"].endswith("(demo: random weights)")
    assert len(info["Model hash"]) == 10


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"width": 100}, "width"),
        ({"height": 8000}, "height"),
        ({"denoising_strength": 1.5}, "denoising_strength"),
        ({"cfg_scale": -1}, "cfg_scale"),
        ({"sampler": "Euler z"}, "sampler"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_requests_name_the_field(tiny_models, engine, overrides, field):
    with pytest.raises(AtelierError) as info:
        engine.generate(_request(tiny_models("sd15"), **overrides))
    assert info.value.field == field


@pytest.mark.parametrize("with_init", [False, True])
def test_inpainting_model_also_does_txt2img_and_img2img(tiny_models, engine, with_init):
    init = _photo() if with_init else None
    result = engine.generate(_request(tiny_models("sd15-inpaint"), init_image=init)).images[0]
    assert result.image.size == (SIZE, SIZE)
