"""Text fitting: wraps on words, shrinks to fit, and never draws outside its box."""

from __future__ import annotations

import random

import pytest
from PIL import Image, ImageDraw

from atelier.campaign.text import (
    BUNDLED_FAMILIES,
    ELLIPSIS,
    FONTS_DIR,
    bundled_font_names,
    draw_fitted_text,
    fit_text,
    font_family_from_file,
)
from atelier.errors import AtelierError

ROBOTO = BUNDLED_FAMILIES["roboto"]
WORDS = [
    "rain",
    "trail",
    "forest",
    "windbreaker",
    "seam-sealed",
    "breathable",
    "pocket",
    "lightweight",
    "hood",
    "waterproof",
]


def fit(text: str, width: int, height: int, **kwargs):
    options = {"max_size": 80, "min_size": 12, "line_spacing": 1.2} | kwargs
    return fit_text(text, ROBOTO, "bold", max_width=width, max_height=height, **options)


def test_bundled_fonts_ship_with_their_licence():
    assert bundled_font_names() == ["roboto"]
    for weight in ("regular", "medium", "bold", "black"):
        assert ROBOTO.path_for(weight).is_file()
    assert (FONTS_DIR / "LICENSE-Roboto.txt").read_text().startswith(" " * 10)
    assert "Apache License" in (FONTS_DIR / "LICENSE-Roboto.txt").read_text()


def test_short_text_gets_the_largest_size_and_long_text_shrinks():
    short = fit("Rain-ready.", 800, 300)
    long = fit(" ".join(WORDS * 3), 800, 300)
    assert short.size == 80
    assert 12 <= long.size < short.size
    assert not long.truncated
    for fitted in (short, long):
        assert fitted.height <= 300
        assert fitted.width <= 800


def test_wraps_between_words_and_keeps_every_word():
    text = " ".join(WORDS)
    fitted = fit(text, 400, 600)
    assert len(fitted.lines) > 1
    assert " ".join(fitted.lines).split() == text.split()


def test_line_breaks_typed_by_the_author_are_kept():
    fitted = fit("Rain-ready.\nTrail-ready.", 1000, 400)
    assert fitted.lines == ("Rain-ready.", "Trail-ready.")


def test_text_that_cannot_fit_at_the_minimum_size_is_cut_with_an_ellipsis():
    fitted = fit(" ".join(WORDS * 20), 300, 60)
    assert fitted.truncated
    assert fitted.size == 12
    assert fitted.lines[-1].endswith(ELLIPSIS)
    assert fitted.height <= 60
    assert fitted.width <= 300


def test_a_word_longer_than_the_box_is_split_only_at_the_minimum_size():
    fitted = fit("Supercalifragilisticexpialidocious", 120, 400, max_size=40, min_size=20)
    assert fitted.size == 20
    assert len(fitted.lines) > 1
    assert "".join(fitted.lines) == "Supercalifragilisticexpialidocious"
    assert fitted.width <= 120


def test_a_box_too_small_for_a_single_line_holds_nothing_and_says_so():
    fitted = fit("Rain", 200, 5)
    assert fitted.empty
    assert fitted.truncated
    assert fit("Rain", 2, 400).empty


def test_max_lines_limits_the_wrap():
    fitted = fit(" ".join(WORDS * 3), 400, 2000, max_lines=2)
    assert len(fitted.lines) <= 2


def test_balanced_headlines_do_not_end_on_a_lone_word():
    text = "Built for the long wet days on the northern trails ahead"
    greedy = fit(text, 900, 400, max_size=60, min_size=60)
    balanced = fit(text, 900, 400, max_size=60, min_size=60, balance=True)
    assert len(balanced.lines) == len(greedy.lines) == 2
    greedy_words = [len(line.split()) for line in greedy.lines]
    balanced_words = [len(line.split()) for line in balanced.lines]
    assert max(balanced_words) - min(balanced_words) < max(greedy_words) - min(greedy_words)


@pytest.mark.parametrize("align", ["left", "center", "right"])
def test_drawn_pixels_stay_inside_the_box(align):
    chooser = random.Random(7)
    canvas = Image.new("RGB", (900, 900), "white")
    draw = ImageDraw.Draw(canvas)
    for _ in range(12):
        width, height = chooser.randint(60, 700), chooser.randint(20, 500)
        text = " ".join(
            chooser.choice(WORDS + ["Çå", "jÿ", "Éclair,", "(quick)"]) for _ in range(chooser.randint(1, 40))
        )
        fitted = fit(text, width, height, max_size=chooser.randint(20, 90), min_size=10)
        left, top = 100, 100
        bbox = draw_fitted_text(
            draw, fitted, ROBOTO, "bold", left=left, top=top, width=width, align=align, fill=(0, 0, 0)
        )
        if fitted.empty:
            assert bbox is None
            continue
        assert left <= bbox[0] and bbox[2] <= left + width, (text, width, bbox)
        assert top <= bbox[1] and bbox[3] <= top + height, (text, height, bbox)


def test_a_font_file_must_be_a_readable_ttf_or_otf(tmp_path):
    (tmp_path / "brand.woff").write_bytes(b"x")
    with pytest.raises(AtelierError, match="must be .ttf or .otf"):
        font_family_from_file(tmp_path / "brand.woff")
    (tmp_path / "broken.ttf").write_bytes(b"not a font")
    with pytest.raises(AtelierError, match="cannot read font file broken.ttf"):
        font_family_from_file(tmp_path / "broken.ttf")
    family = font_family_from_file(ROBOTO.path_for("medium"))
    assert family.path_for("black") == ROBOTO.path_for("medium")
