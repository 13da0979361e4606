"""The bundled CLIP tokenizer: the same ids as an independent implementation, and the hub-free loading paths."""

from __future__ import annotations

import random
import unicodedata

import pytest

from atelier.engine.tokenizer import CLIP_VOCAB_SIZE, clip_backend, clip_tokenizer

WORDS = (
    (
        "a product photo of a yellow windbreaker in a lush forest, raining, foggy, masterpiece, highres, hdr, "
        "sharp focus, 85mm, f/1.8, bokeh, on a marble table, soft window light, e-commerce packshot, white "
        "background, leather handbag, sneakers, perfume bottle, wabi-sabi living room, don't, it's, we're, you'll, "
        "I've, they'd, 3D render, 4k, 1024x1024, SKU-0042, #hashtag, @brand, 50% off, $19.99, rock'n'roll"
    )
    .replace(",", " ,")
    .split()
)
SYNTAX = (
    "(yellow windbreaker:1.3)",
    "((masterpiece))",
    "[low quality]",
    "(red:0.5)",
    "[red|blue|green] shoe",
    "[cat:dog:0.4]",
    "[from::10]",
    "<lora:oue_scooter:0.8>",
    "<lora:shoes:1:0.5>",
    "BREAK",
    "\\(literal\\)",
    "beach AND sunglasses:0.8",
    "# a comment",
    "(embroidered:-0.3)",
    "photo_of_product",
    "{curly}",
)
UNICODE = (
    "café crème",
    "naïve façade",
    "Zürich straße",
    "日本の着物",
    "한국 패션",
    "Москва зимой",
    "Ελληνικά νησιά",
    "مرحبا",
    "emoji 🙂👟🛍️",
    "flag 🇫🇷",
    "“curly quotes” and ‘single’",
    "em — dash – en",
    "ﬁne ligature",
    "ＦＵＬＬＷＩＤＴＨ",
    "tab\tand\nnewline",
    "many    spaces",
    "ÀÉÎÕÜ uppercase accents",
    "x² ½ ™ ©",
    "zero\u200bwidth",
)


def _prompts() -> list[str]:
    rng = random.Random(20261207)
    prompts = list(SYNTAX) + list(UNICODE)
    for _ in range(240):
        parts = rng.sample(WORDS, rng.randint(1, 14))
        if rng.random() < 0.4:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(SYNTAX))
        if rng.random() < 0.3:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(UNICODE))
        text = " ".join(parts)
        prompts.append(text.upper() if rng.random() < 0.1 else text)
    # Long prompts: several 75-token chunks' worth.
    for length in (80, 160, 300):
        prompts.append(" ".join(rng.choice(WORDS) for _ in range(length)))
    return prompts


PROMPTS = _prompts()


@pytest.fixture(scope="module")
def reference():
    """instant-clip-tokenizer: a Rust reimplementation of OpenAI's tokenizer with its own copy of the vocabulary."""
    instant_clip_tokenizer = pytest.importorskip("instant_clip_tokenizer")
    return instant_clip_tokenizer.Tokenizer()


def test_the_bundled_tokenizer_gives_the_ids_of_an_independent_implementation(reference):
    tokenizer = clip_tokenizer("clip-l")
    assert len(tokenizer) == CLIP_VOCAB_SIZE
    assert len(PROMPTS) >= 250
    backend = clip_backend()  # what `atelier prompt` counts with, without transformers
    different = []
    for prompt in PROMPTS:
        expected = reference.encode(prompt)
        if tokenizer(prompt, add_special_tokens=False).input_ids != expected:
            different.append(("transformers", prompt))
        if backend.encode(prompt, add_special_tokens=False).ids != expected:
            different.append(("tokenizers", prompt))
    assert different == []
    assert tokenizer("a photo").input_ids == [reference.start_of_text(), 320, 1125, reference.end_of_text()]


def test_decomposed_accents_read_as_composed_ones():
    """Text pasted from macOS can carry decomposed accents; CLIP (ftfy) and transformers compose them."""
    tokenizer = clip_tokenizer("clip-l")
    composed = "café crème naïve"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert tokenizer(decomposed).input_ids == tokenizer(composed).input_ids


def test_sd15_and_sdxl_tokenizers_differ_only_in_padding():
    first, second = clip_tokenizer("clip-l"), clip_tokenizer("clip-g")
    text = "a leather bag, (studio light:1.2)"
    assert first(text).input_ids == second(text).input_ids
    padded_l = first(text, padding="max_length", max_length=77).input_ids
    padded_g = second(text, padding="max_length", max_length=77).input_ids
    length = len(first(text).input_ids)
    assert padded_l[length:] == [49407] * (77 - length)  # <|endoftext|>
    assert padded_g[length:] == [0] * (77 - length)  # "!"
    assert second.convert_ids_to_tokens(0) == "!"
