"""Caption encoding for training: same states as diffusers at 75 tokens, kohya's chunking beyond, clip skip."""

from __future__ import annotations

import pytest
import torch

from atelier.engine.models import load_model
from atelier.training.text import encode_sd15, encode_sdxl, tokenize

LONG_CAPTION = "oue car, photo, red, studio, " * 12


@pytest.fixture(scope="module")
def sd15(tiny_models):
    torch.set_num_threads(1)
    return load_model(tiny_models("sd15")).pipeline


@pytest.fixture(scope="module")
def sdxl(tiny_models):
    torch.set_num_threads(1)
    return load_model(tiny_models("sdxl")).pipeline


def test_75_tokens_give_diffusers_own_prompt_embeddings(sd15) -> None:
    ids = tokenize(sd15.tokenizer, ["photo of oue car"], 75)
    assert ids.shape == (1, 1, 77)
    with torch.no_grad():
        ours = encode_sd15(sd15.text_encoder, ids, clip_skip=1)
        theirs = sd15.encode_prompt("photo of oue car", "cpu", 1, False)[0]
    torch.testing.assert_close(ours, theirs)


def test_long_captions_are_chunked_as_kohya_does(sd15) -> None:
    tokenizer = sd15.tokenizer
    ids = tokenize(tokenizer, [LONG_CAPTION, "a"], 225)
    assert ids.shape == (2, 3, 77)
    # Every chunk is a well-formed CLIP input: BOS first, EOS (SD 1.5 pads with EOS) last.
    assert (ids[:, :, 0] == tokenizer.bos_token_id).all()
    assert (ids[:, :, -1] == tokenizer.eos_token_id).all()
    # The middles of the chunks are the caption's tokens 1..225 in order.
    flat = tokenizer([LONG_CAPTION], padding="max_length", truncation=True, max_length=227).input_ids[0]
    assert ids[0, :, 1:76].reshape(-1).tolist() == flat[1:226]
    with torch.no_grad():
        states = encode_sd15(sd15.text_encoder, ids, clip_skip=1)
    assert states.shape == (2, 227, sd15.text_encoder.config.hidden_size)


def test_150_tokens_make_two_chunks_of_152_states(sd15) -> None:
    ids = tokenize(sd15.tokenizer, [LONG_CAPTION], 150)
    with torch.no_grad():
        assert encode_sd15(sd15.text_encoder, ids, clip_skip=1).shape[1] == 152


def test_clip_skip_2_is_the_penultimate_layer_with_the_final_norm(sd15) -> None:
    encoder = sd15.text_encoder
    ids = tokenize(sd15.tokenizer, ["photo of oue car"], 75)
    with torch.no_grad():
        ours = encode_sd15(encoder, ids, clip_skip=2)
        hidden = encoder(ids[:, 0], output_hidden_states=True).hidden_states[-2]
        norm = getattr(encoder, "text_model", encoder).final_layer_norm
        torch.testing.assert_close(ours, norm(hidden))
        assert not torch.allclose(ours, encode_sd15(encoder, ids, clip_skip=1))


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_sdxl_states_and_pooled_embedding_match_diffusers(sdxl, clip_skip: int) -> None:
    ids = tokenize(sdxl.tokenizer, ["photo of oue car"], 75)
    ids_2 = tokenize(sdxl.tokenizer_2, ["photo of oue car"], 75)
    with torch.no_grad():
        states, pooled = encode_sdxl(sdxl.text_encoder, sdxl.text_encoder_2, ids, ids_2, clip_skip)
        embeds, _, pooled_theirs, _ = sdxl.encode_prompt(
            prompt="photo of oue car",
            device="cpu",
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            clip_skip=clip_skip - 1 or None,
        )
    torch.testing.assert_close(states, embeds)
    torch.testing.assert_close(pooled, pooled_theirs)


def test_sdxl_second_tokenizer_chunks_end_in_eos_despite_its_padding(sdxl) -> None:
    tokenizer = sdxl.tokenizer_2
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    ids = tokenize(tokenizer, [LONG_CAPTION, "a"], 150)
    # A chunk cut mid-caption gets an EOS at its end; an empty chunk starts BOS, EOS.
    assert ids[0, 0, -1] == tokenizer.eos_token_id
    assert ids[1, 1, :2].tolist() == [tokenizer.bos_token_id, tokenizer.eos_token_id]
    ids_1 = tokenize(sdxl.tokenizer, [LONG_CAPTION, "a"], 150)
    with torch.no_grad():
        states, pooled = encode_sdxl(sdxl.text_encoder, sdxl.text_encoder_2, ids_1, ids, clip_skip=1)
    assert states.shape[:2] == (2, 152) and pooled.shape[0] == 2
