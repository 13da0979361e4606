"""Textual inversion embeddings and external VAEs on the tiny models.

The reference for an embedding is the text encoder itself: an embedding whose vectors are the token embeddings
of "red car" must encode exactly like the words "red car" (A1111's substitution, nothing more).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from atelier.engine.conditioning import PromptEncoder
from atelier.engine.convert import convert_vae
from atelier.engine.embeddings import EmbeddingLibrary, load_embedding
from atelier.engine.generate import Engine
from atelier.engine.infotext import parse_infotext
from atelier.engine.models import safetensors_kind
from atelier.engine.request import GenerationRequest
from atelier.engine.vae import VaeLibrary
from atelier.errors import AtelierError

SIZE = 64


def _pipeline(tiny_models, arch):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    return cls.from_pretrained(str(tiny_models(arch)))


def _word_vectors(tokenizer, text_encoder, words: str) -> torch.Tensor:
    ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    return text_encoder.get_input_embeddings().weight[ids].detach().clone()


@pytest.fixture(scope="module")
def sd15(tiny_models):
    return _pipeline(tiny_models, "sd15")


def _save(path, tensors, metadata=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("layout", ["emb_params", "diffusers"])
def test_embedding_encodes_like_the_words_its_vectors_are(sd15, tmp_path, layout):
    vectors = _word_vectors(sd15.tokenizer, sd15.text_encoder, "red car")
    key = "emb_params" if layout == "emb_params" else "<redcar>"
    _save(tmp_path / "MyCar.safetensors", {key: vectors})
    library = EmbeddingLibrary(tmp_path)
    assert safetensors_kind(tmp_path / "MyCar.safetensors") == "embedding"

    used = library.used_in(["a photo of (mycar:1.2), forest"])
    assert [embedding.name for embedding in used] == ["MyCar"]
    with_embedding = PromptEncoder(sd15, embeddings=used).encode("a photo of (mycar:1.2), forest")
    with_words = PromptEncoder(sd15).encode("a photo of (red car:1.2), forest")
    torch.testing.assert_close(with_embedding.embeds, with_words.embeds)


def test_embedding_named_like_a_clip_word_and_longest_name_wins(sd15, tmp_path):
    # "style" is a word in CLIP's vocabulary: diffusers' loader refuses such a name, A1111 (and Atelier) use it.
    _save(
        tmp_path / "style.safetensors",
        {"emb_params": _word_vectors(sd15.tokenizer, sd15.text_encoder, "blue")},
    )
    _save(
        tmp_path / "style-plus.safetensors",
        {"emb_params": _word_vectors(sd15.tokenizer, sd15.text_encoder, "green hat")},
    )
    library = EmbeddingLibrary(tmp_path)
    prompt = "Style-Plus, a style"
    encoded = PromptEncoder(sd15, embeddings=library.used_in([prompt])).encode(prompt)
    reference = PromptEncoder(sd15).encode("green hat, a blue")
    torch.testing.assert_close(encoded.embeds, reference.embeds)
    # A name inside another word is no match.
    assert library.used_in(["stylesheet"]) == []


def test_sdxl_embedding_uses_clip_l_and_clip_g_and_sd15_one_is_refused(tiny_models, tmp_path):
    pipeline = _pipeline(tiny_models, "sdxl")
    words = "red car"
    _save(
        tmp_path / "xlcar.safetensors",
        {
            "clip_l": _word_vectors(pipeline.tokenizer, pipeline.text_encoder, words),
            "clip_g": _word_vectors(pipeline.tokenizer_2, pipeline.text_encoder_2, words),
        },
    )
    library = EmbeddingLibrary(tmp_path)
    encoded = PromptEncoder(pipeline, embeddings=library.used_in(["xlcar"])).encode("a xlcar")
    reference = PromptEncoder(pipeline).encode("a red car")
    torch.testing.assert_close(encoded.embeds, reference.embeds)
    torch.testing.assert_close(encoded.pooled, reference.pooled)

    _save(tmp_path / "only15.safetensors", {"emb_params": torch.zeros(2, 32)})
    with pytest.raises(AtelierError, match="only15 was made for SD 1.5") as caught:
        PromptEncoder(pipeline, embeddings=library.used_in(["only15"])).encode("only15")
    assert caught.value.field == "embedding"


def test_engine_applies_embedding_in_negative_prompt_and_records_ti_hashes(tiny_models, sd15, tmp_path):
    folder = tmp_path / "embeddings"
    _save(
        folder / "badpic.safetensors",
        {"emb_params": _word_vectors(sd15.tokenizer, sd15.text_encoder, "blurry ugly")},
    )
    engine = Engine(device="cpu", embeddings=EmbeddingLibrary(folder))
    common = dict(
        prompt="a windbreaker", model=str(tiny_models("sd15")), steps=3, width=SIZE, height=SIZE, seed=7
    )
    named = engine.generate(GenerationRequest(negative_prompt="badpic", **common)).images[0]
    spelled = engine.generate(GenerationRequest(negative_prompt="blurry ugly", **common)).images[0]
    assert np.array_equal(np.asarray(named.image), np.asarray(spelled.image))
    params = parse_infotext(named.infotext)
    expected = load_embedding(folder / "badpic.safetensors", "badpic").short_hash
    assert params["TI hashes"] == f"badpic: {expected}"
    assert "TI hashes" not in parse_infotext(spelled.infotext)


def _vae_state(pipeline, seed: int | None) -> dict[str, torch.Tensor]:
    state = {key: value.detach().clone() for key, value in pipeline.vae.state_dict().items()}
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        state = {
            key: value + 0.05 * torch.randn(value.shape, generator=generator) for key, value in state.items()
        }
    return state


def test_external_vae_decodes_and_the_model_keeps_its_own(tiny_models, sd15, tmp_path):
    folder = tmp_path / "vae"
    _save(folder / "same-ldm.safetensors", convert_vae(_vae_state(sd15, None)))
    _save(folder / "other.safetensors", _vae_state(sd15, seed=3))  # diffusers' layout
    for name in ("same-ldm", "other"):
        assert safetensors_kind(folder / f"{name}.safetensors") == "vae"
    engine = Engine(device="cpu", vaes=VaeLibrary(folder))
    common = dict(
        prompt="a windbreaker", model=str(tiny_models("sd15")), steps=3, width=SIZE, height=SIZE, seed=7
    )

    def pixels(**extra):
        return np.asarray(engine.generate(GenerationRequest(**common, **extra)).images[0].image)

    own = pixels()
    # The checkpoint's own weights in the original layout, loaded as an external VAE: the same picture.
    assert np.array_equal(pixels(vae="same-ldm.safetensors"), own)
    other = engine.generate(GenerationRequest(**common, vae="other"))
    assert not np.array_equal(np.asarray(other.images[0].image), own)
    params = parse_infotext(other.images[0].infotext)
    assert params["VAE"] == "other.safetensors" and len(params["VAE hash"]) == 8
    # The swap ends with the request: the next one decodes with the checkpoint's VAE again.
    assert np.array_equal(pixels(), own)

    with pytest.raises(AtelierError, match="unknown VAE 'missing'") as caught:
        pixels(vae="missing")
    assert caught.value.field == "sd_vae"


def test_vae_of_another_shape_is_a_clear_error(tiny_models, sd15, tmp_path):
    from diffusers import AutoencoderKL

    config = dict(sd15.vae.config)
    config["block_out_channels"] = [channels * 2 for channels in config["block_out_channels"]]
    wider = AutoencoderKL.from_config(config)
    folder = tmp_path / "vae"
    _save(folder / "wide.safetensors", convert_vae(wider.state_dict()))
    engine = Engine(device="cpu", vaes=VaeLibrary(folder))
    request = GenerationRequest(
        prompt="x", model=str(tiny_models("sd15")), steps=2, width=SIZE, height=SIZE, vae="wide"
    )
    with pytest.raises(AtelierError, match="VAE wide does not fit") as caught:
        engine.generate(request)
    assert caught.value.field == "sd_vae"
