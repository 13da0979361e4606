"""A1111 prompt language in the conditioning: plain prompts equal diffusers, syntax changes what it should."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atelier.engine.conditioning import PromptEncoder, build_conditioning
from atelier.engine.request import GenerationRequest

PLAIN = "a product photo of a yellow windbreaker, forest, masterpiece"
NEGATIVE = "low quality, watermark"


@pytest.fixture(scope="module")
def sd15(engine, tiny_models):
    return engine.load(tiny_models("sd15")).pipeline


@pytest.fixture(scope="module")
def sdxl(engine, tiny_models):
    return engine.load(tiny_models("sdxl")).pipeline


def _build(pipeline, prompt, negative="", *, steps=4, clip_skip=1):
    encoder = PromptEncoder(pipeline, clip_skip=clip_skip)
    zero = bool(getattr(pipeline.config, "force_zeros_for_empty_prompt", False))
    with torch.inference_mode():
        return build_conditioning(encoder, prompt, negative, steps=steps, zero_empty_negative=zero)


def _image(engine, model, prompt, **overrides):
    values = dict(
        prompt=prompt, negative_prompt=NEGATIVE, model=str(model), steps=4, width=64, height=64, seed=77
    )
    values.update(overrides)
    return np.asarray(engine.generate(GenerationRequest(**values)).images[0].image, dtype=np.int16)


def test_plain_prompt_equals_diffusers_encoding_sd15(sd15):
    ours = _build(sd15, PLAIN, NEGATIVE)
    theirs, theirs_negative = sd15.encode_prompt(PLAIN, "cpu", 1, True, negative_prompt=NEGATIVE)
    assert ours.guidance is None
    assert torch.allclose(ours.kwargs["prompt_embeds"], theirs, atol=1e-5)
    assert torch.allclose(ours.kwargs["negative_prompt_embeds"], theirs_negative, atol=1e-5)


@pytest.mark.parametrize("negative", [NEGATIVE, ""])
def test_plain_prompt_equals_diffusers_encoding_sdxl(sdxl, negative):
    ours = _build(sdxl, PLAIN, negative)
    embeds, negative_embeds, pooled, negative_pooled = sdxl.encode_prompt(
        prompt=PLAIN, negative_prompt=negative or None, device="cpu", num_images_per_prompt=1
    )
    assert torch.allclose(ours.kwargs["prompt_embeds"], embeds, atol=1e-5)
    assert torch.allclose(ours.kwargs["negative_prompt_embeds"], negative_embeds, atol=1e-5)
    assert torch.allclose(ours.kwargs["pooled_prompt_embeds"], pooled, atol=1e-5)
    assert torch.allclose(ours.kwargs["negative_pooled_prompt_embeds"], negative_pooled, atol=1e-5)


def test_long_prompt_is_chunked_not_truncated_and_negative_padded(sd15):
    long_prompt = ", ".join(["yellow windbreaker"] * 60)
    conditioning = _build(sd15, long_prompt, NEGATIVE)
    positive, negative = conditioning.kwargs["prompt_embeds"], conditioning.kwargs["negative_prompt_embeds"]
    assert positive.shape[1] % 77 == 0 and positive.shape[1] >= 154
    assert negative.shape == positive.shape
    # The tail of the prompt reaches the conditioning: changing the last word changes the last chunk.
    changed = _build(sd15, long_prompt + ", red", NEGATIVE).kwargs["prompt_embeds"]
    assert not torch.allclose(changed[:, -77:], positive[:, -77:])


def test_break_starts_a_new_chunk(sd15):
    one = _build(sd15, "red shoe, blue bag").kwargs["prompt_embeds"]
    two = _build(sd15, "red shoe BREAK blue bag").kwargs["prompt_embeds"]
    assert one.shape[1] == 77 and two.shape[1] == 154


def test_emphasis_scales_tokens_and_restores_the_mean(sd15):
    plain = _build(sd15, "a yellow windbreaker").kwargs["prompt_embeds"]
    weighted = _build(sd15, "a (yellow windbreaker:1.5)").kwargs["prompt_embeds"]
    assert not torch.allclose(plain, weighted)
    assert torch.allclose(plain.mean(), weighted.mean(), atol=1e-6)
    negative_weight = _build(sd15, "a (yellow windbreaker:-1)").kwargs["prompt_embeds"]
    assert torch.isfinite(negative_weight).all()


def test_clip_skip_2_uses_the_penultimate_layer(sd15):
    ours = _build(sd15, PLAIN, clip_skip=2).kwargs["prompt_embeds"]
    ids = sd15.tokenizer(PLAIN, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.inference_mode():
        hidden = sd15.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        expected = sd15.text_encoder.final_layer_norm(hidden)
    assert torch.allclose(ours, expected, atol=1e-5)


def test_unicode_emoji_and_huge_prompts_work(engine, tiny_models):
    model = tiny_models("sd15")
    assert _image(engine, model, "café ☕ 🧥 (雨:1.2)").shape == (64, 64, 3)
    assert _image(engine, model, "windbreaker, " * 800, steps=2).shape == (64, 64, 3)


def test_schedule_that_does_not_change_equals_the_plain_prompt(engine, tiny_models):
    model = tiny_models("sd15")
    plain = _image(engine, model, "red shoe")
    scheduled = _image(engine, model, "[red shoe:red shoe:2]")
    assert (plain == scheduled).all()


def test_prompt_editing_switches_at_the_right_step(engine, tiny_models):
    model = tiny_models("sd15")
    first, second = _image(engine, model, "red shoe"), _image(engine, model, "blue bag")
    edited = _image(engine, model, "[red shoe:blue bag:2]")
    assert (edited != first).any() and (edited != second).any()
    # Switching after the last step is the first prompt throughout.
    assert (_image(engine, model, "[red shoe:blue bag:10]") == first).all()


def test_alternation_differs_from_both_options(engine, tiny_models):
    model = tiny_models("sd15")
    alternating = _image(engine, model, "[red|blue] shoe")
    assert (alternating != _image(engine, model, "red shoe")).any()
    assert (alternating != _image(engine, model, "blue shoe")).any()


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_and_parts_combine_with_their_weights(engine, tiny_models, arch):
    model = tiny_models(arch)
    plain = _image(engine, model, "red shoe")
    halves = _image(engine, model, "red shoe :0.5 AND red shoe :0.5")
    assert np.abs(plain - halves).max() <= 2
    mixed = _image(engine, model, "red shoe AND blue bag:0.7")
    assert (mixed != plain).any()


def test_lora_tag_equals_diffusers_load_lora_weights(engine, tiny_models, make_lora, tmp_path):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    from atelier.engine.generate import Engine
    from atelier.engine.loras import LoraLibrary

    folder = tmp_path / "loras"
    path = make_lora("product", folder)
    lora_engine = Engine(device="cpu", loras=LoraLibrary(folder))
    model = tiny_models("sd15")
    with_lora = _image(lora_engine, model, "red shoe <lora:product:1>")
    without = _image(lora_engine, model, "red shoe")
    assert (with_lora != without).any()

    pipe = StableDiffusionPipeline.from_pretrained(
        str(model), safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(path))
    theirs = pipe(
        "red shoe",
        negative_prompt=NEGATIVE,
        num_inference_steps=4,
        width=64,
        height=64,
        guidance_scale=7.0,
        generator=torch.Generator("cpu").manual_seed(77),
    ).images[0]
    assert np.abs(with_lora - np.asarray(theirs, dtype=np.int16)).max() <= 2


def test_kohya_and_diffusers_files_of_one_lora_give_the_same_picture(tiny_models, make_lora, tmp_path):
    from atelier.engine.generate import Engine
    from atelier.engine.loras import LoraLibrary

    folder = tmp_path / "loras"
    make_lora("as_diffusers", folder, seed=3)
    make_lora("as_kohya", folder, seed=3, fmt="kohya")
    lora_engine = Engine(device="cpu", loras=LoraLibrary(folder))
    model = tiny_models("sd15")
    a = _image(lora_engine, model, "red shoe <lora:as_diffusers:0.8>")
    b = _image(lora_engine, model, "red shoe <lora:as_kohya:0.8>")
    assert np.abs(a - b).max() <= 2


def test_switching_loras_keeps_the_base_model_loaded(tiny_models, make_lora, tmp_path):
    from atelier.engine.generate import Engine
    from atelier.engine.infotext import parse_infotext
    from atelier.engine.loras import LoraLibrary

    folder = tmp_path / "loras"
    make_lora("one", folder, seed=1)
    make_lora("two", folder, seed=2)
    lora_engine = Engine(device="cpu", loras=LoraLibrary(folder))
    model = tiny_models("sd15")
    base = _image(lora_engine, model, "red shoe")
    one = _image(lora_engine, model, "red shoe <lora:one:1>")
    both = _image(lora_engine, model, "red shoe <lora:one:1> <lora:two:0.5:1>")
    again = _image(lora_engine, model, "red shoe")
    assert lora_engine.models.loads == 1
    assert (one != base).any() and (both != one).any()
    assert np.abs(again - base).max() <= 2
    request = GenerationRequest(
        prompt="x <lora:one:1> <lora:two:0.5>", model=str(model), steps=2, width=64, height=64
    )
    info = parse_infotext(lora_engine.generate(request).images[0].infotext)
    hashes = dict(part.split(": ") for part in info["Lora hashes"].split(", "))
    assert set(hashes) == {"one", "two"} and all(len(value) == 12 for value in hashes.values())


def test_unknown_lora_lists_the_available_ones(tiny_models, make_lora, tmp_path):
    from atelier.engine.generate import Engine
    from atelier.engine.loras import LoraLibrary
    from atelier.errors import NotFoundError

    folder = tmp_path / "loras"
    make_lora("product", folder)
    lora_engine = Engine(device="cpu", loras=LoraLibrary(folder))
    with pytest.raises(NotFoundError, match="unknown LoRA 'prodcut'; available: product"):
        _image(lora_engine, tiny_models("sd15"), "x <lora:prodcut:1>")


def test_lora_for_another_base_is_refused(tiny_models, make_lora, tmp_path):
    from atelier.engine.generate import Engine
    from atelier.engine.loras import LoraLibrary
    from atelier.errors import AtelierError

    folder = tmp_path / "loras"
    make_lora("xl_style", folder, arch="sdxl")
    lora_engine = Engine(device="cpu", loras=LoraLibrary(folder))
    with pytest.raises(AtelierError, match="was made for"):
        _image(lora_engine, tiny_models("sd15"), "x <lora:xl_style:1>")


def test_malformed_lora_file_is_named(tiny_models, tmp_path):
    from atelier.engine.generate import Engine
    from atelier.engine.loras import LoraLibrary
    from atelier.errors import AtelierError

    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "broken.safetensors").write_bytes(b"garbage" * 10)
    lora_engine = Engine(device="cpu", loras=LoraLibrary(folder))
    with pytest.raises(AtelierError, match="broken.safetensors"):
        _image(lora_engine, tiny_models("sd15"), "x <lora:broken:1>")
