"""Prompt styles in A1111's styles.csv format, applied as A1111 applies them."""

from __future__ import annotations

import pytest

from atelier.errors import AtelierError
from atelier.prompts.styles import PromptStyle, apply_styles, read_styles_csv, write_styles_csv

# As A1111 writes it (and a spreadsheet program saves it: with a byte-order mark), quoting included.
A1111_CSV = (
    "\ufeffname,prompt,negative_prompt\n"
    '"Studio shot","{prompt}, product photo, softbox lighting, white background","blurry, watermark"\n'
    'Film,"35mm film, grain",\n'
    ",orphan row without a name,\n"
)


def test_an_a1111_styles_csv_is_read_with_its_quoting_and_bom():
    styles = read_styles_csv(A1111_CSV)
    assert [style.name for style in styles] == ["Studio shot", "Film"]
    assert styles[0].prompt == "{prompt}, product photo, softbox lighting, white background"
    assert styles[1].negative_prompt == ""
    assert read_styles_csv(write_styles_csv(styles)) == styles


def test_styles_apply_in_order_with_the_prompt_placeholder_or_after_a_comma():
    studio, film = read_styles_csv(A1111_CSV)
    prompt, negative = apply_styles("a yellow parka", "low quality", [studio, film])
    assert prompt == "a yellow parka, product photo, softbox lighting, white background, 35mm film, grain"
    assert negative == "low quality, blurry, watermark"
    assert apply_styles("", "", [PromptStyle("x", "studio light")]) == ("studio light", "")


def test_a_csv_without_the_header_is_refused_in_one_line():
    with pytest.raises(AtelierError, match="header row name,prompt,negative_prompt"):
        read_styles_csv("Studio,product photo\n")
