"""Fonts and text fitting for ad layouts.

Text in an ad must never spill out of its box, whatever the marketer types: :func:`fit_text` wraps on
words, shrinks the font (binary search between a maximum and a minimum size) and, only when even the
minimum size cannot hold the text, cuts it with an ellipsis and says so (``FittedText.truncated``).

Fonts are bundled with the package (Roboto, Apache License 2.0, see ``fonts/LICENSE-Roboto.txt``) so a
layout renders the same on every machine; a spec may also name its own .ttf/.otf file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import ImageDraw, ImageFont

from atelier.errors import AtelierError

FONTS_DIR = Path(__file__).parent / "fonts"
WEIGHTS = ("regular", "medium", "bold", "black")
ELLIPSIS = "\u2026"


@dataclass(frozen=True)
class FontFamily:
    """One typeface: a font file per weight (a single-file family serves every weight)."""

    name: str
    files: dict[str, Path] = field(hash=False)

    def path_for(self, weight: str) -> Path:
        """The file for ``weight``, falling back to the nearest lighter weight the family has."""
        if weight not in WEIGHTS:
            raise AtelierError(f"unknown font weight {weight!r} (use one of: {', '.join(WEIGHTS)})")
        for candidate in reversed(WEIGHTS[: WEIGHTS.index(weight) + 1]):
            if candidate in self.files:
                return self.files[candidate]
        return next(iter(self.files.values()))


BUNDLED_FAMILIES: dict[str, FontFamily] = {
    "roboto": FontFamily(
        "roboto",
        {weight: FONTS_DIR / f"Roboto-{weight.title()}.ttf" for weight in WEIGHTS},
    ),
}
DEFAULT_FAMILY = "roboto"


def bundled_font_names() -> list[str]:
    """Names accepted as ``font = "..."`` in an ad spec."""
    return sorted(BUNDLED_FAMILIES)


def font_family_from_file(path: Path) -> FontFamily:
    """A family made of one user-supplied font file; fails with a clear message if it is not a font."""
    if path.suffix.lower() not in (".ttf", ".otf"):
        raise AtelierError(f"font file must be .ttf or .otf: {path.name}", field="font")
    if not path.is_file():
        raise AtelierError(f"font file not found: {path}", field="font")
    try:
        ImageFont.truetype(str(path), 12)
    except OSError as exc:
        raise AtelierError(f"cannot read font file {path.name}: {exc}", field="font") from exc
    return FontFamily(path.stem, {"regular": path})


@functools.lru_cache(maxsize=256)
def _load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def get_font(family: FontFamily, weight: str, size: int) -> ImageFont.FreeTypeFont:
    """The font of ``family`` at ``weight`` and ``size`` pixels (cached)."""
    return _load_font(str(family.path_for(weight)), int(size))


def ink_width(font: ImageFont.FreeTypeFont, text: str) -> int:
    """Width of the pixels ``text`` covers (not its advance), so alignment can be exact."""
    if not text:
        return 0
    left, _, right, _ = font.getbbox(text, anchor="ls")
    return int(right - left)  # Pillow's boxes are whole pixels here, though typed as floats


@functools.lru_cache(maxsize=65536)
def _advance(path: str, size: int, text: str) -> float:
    return _load_font(path, size).getlength(text)


def _advance_of(font: ImageFont.FreeTypeFont, text: str) -> float:
    # Measuring each word once per size (instead of every growing candidate line) keeps fitting fast;
    # lines are checked against their real ink width afterwards.
    return _advance(str(font.path), int(font.size), text)


@dataclass(frozen=True)
class FittedText:
    """Text wrapped and sized to fit a box.

    ``ascent`` is the distance from the box's top to the first baseline and ``descent`` from the last
    baseline to the bottom; both cover the font's metrics and the ink of the actual first/last line.
    """

    lines: tuple[str, ...]
    size: int
    line_height: int
    ascent: int
    descent: int
    width: int
    height: int
    truncated: bool

    @property
    def empty(self) -> bool:
        return not self.lines


def _vertical_extent(
    lines: list[str], font: ImageFont.FreeTypeFont, line_height: int
) -> tuple[int, int, int]:
    """(ascent, descent, height) of ``lines``; accents can rise above the font's nominal ascent."""
    if not lines:
        return 0, 0, 0
    ascent, descent = font.getmetrics()
    # int(): Pillow's boxes are whole pixels here, though typed as floats.
    ascent = max(ascent, int(-font.getbbox(lines[0], anchor="ls")[1]))
    descent = max(descent, int(font.getbbox(lines[-1], anchor="ls")[3]))
    return ascent, descent, ascent + descent + (len(lines) - 1) * line_height


def _split_long_word(word: str, font: ImageFont.FreeTypeFont, max_width: int) -> list[str]:
    pieces: list[str] = []
    current = ""
    for char in word:
        if current and ink_width(font, current + char) > max_width:
            pieces.append(current)
            current = char
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def _greedy_wrap(
    words: list[str], font: ImageFont.FreeTypeFont, max_width: int, measure: Callable[[str], float]
) -> list[str]:
    space = measure(" ")
    lines: list[str] = []
    current: list[str] = []
    width = 0.0
    for word in words:
        word_width = measure(word)
        if current and width + space + word_width <= max_width:
            current.append(word)
            width += space + word_width
            continue
        if current:
            lines.append(" ".join(current))
        current, width = [word], word_width
    if current:
        lines.append(" ".join(current))
    return lines


def wrap_words(
    text: str, font: ImageFont.FreeTypeFont, max_width: int, *, break_words: bool = False
) -> list[str] | None:
    """Greedy word wrap; explicit newlines start a new line.

    Returns None when a single word is wider than ``max_width`` and ``break_words`` is False; with
    ``break_words`` such a word is split between characters instead.
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        words = paragraph.split()
        if not words:
            continue
        # Only words whose advance comes near the limit need their exact ink width checked.
        too_wide = {
            word
            for word in words
            if _advance_of(font, word) > 0.8 * max_width and ink_width(font, word) > max_width
        }
        if too_wide:
            if not break_words:
                return None
            words = [
                piece
                for word in words
                for piece in (_split_long_word(word, font, max_width) if word in too_wide else [word])
            ]
        wrapped = _greedy_wrap(words, font, max_width, lambda part: _advance_of(font, part))
        if any(ink_width(font, line) > max_width for line in wrapped):
            # Summed advances were off by a pixel or two (kerning, overhangs): wrap with exact widths.
            wrapped = _greedy_wrap(words, font, max_width, lambda part: ink_width(font, part))
        lines.extend(wrapped)
    return lines


def _with_ellipsis(line: str, font: ImageFont.FreeTypeFont, max_width: int) -> str:
    """``line`` shortened (whole words first) until it fits ``max_width`` with an ellipsis after it."""
    candidate = line.rstrip()
    while candidate:
        shortened = candidate.rstrip(" ,.;:-\u2013\u2014") + ELLIPSIS
        if ink_width(font, shortened) <= max_width:
            return shortened
        head, _, _ = candidate.rpartition(" ")
        candidate = head if head else candidate[:-1]
    return ELLIPSIS if ink_width(font, ELLIPSIS) <= max_width else ""


def normalize_text(text: str) -> str:
    """Collapse runs of spaces and tabs but keep the line breaks the author typed."""
    return "\n".join(" ".join(line.split()) for line in text.strip().splitlines())


def fit_text(
    text: str,
    family: FontFamily,
    weight: str,
    *,
    max_width: int,
    max_height: int,
    max_size: int,
    min_size: int,
    line_spacing: float = 1.2,
    max_lines: int | None = None,
    balance: bool = False,
) -> FittedText:
    """Wrap ``text`` at the largest font size in ``[min_size, max_size]`` that fits the box.

    Sizes are searched by bisection over whole pixels. When no size fits, the text is set at
    ``min_size``, long words are split, and lines that still do not fit are dropped and the last kept
    line ends with an ellipsis (``truncated=True``). ``balance`` evens out line lengths (for headlines)
    without adding lines.
    """
    text = normalize_text(text)
    max_width = max(int(max_width), 0)
    max_height = max(int(max_height), 0)
    min_size = max(1, min(int(min_size), int(max_size)))
    max_size = max(min_size, int(max_size))

    def fitting_lines(size: int) -> list[str] | None:
        font = get_font(family, weight, size)
        lines = wrap_words(text, font, max_width)
        if lines is None or (max_lines is not None and len(lines) > max_lines):
            return None
        if _vertical_extent(lines, font, round(size * line_spacing))[2] > max_height:
            return None
        return lines

    best_size: int | None = None
    low, high = min_size, max_size
    while low <= high:
        middle = (low + high) // 2
        if fitting_lines(middle) is not None:
            best_size = middle
            low = middle + 1
        else:
            high = middle - 1

    truncated = False
    if best_size is not None:
        size = best_size
        font = get_font(family, weight, size)
        lines = fitting_lines(size) or []
        if balance and len(lines) > 1:
            balanced = _balanced(text, font, max_width, len(lines))
            # A different first or last line can carry taller accents; keep balancing only if it still fits.
            if _vertical_extent(balanced, font, round(size * line_spacing))[2] <= max_height:
                lines = balanced
    else:
        size = min_size
        font = get_font(family, weight, size)
        line_height = round(size * line_spacing)
        lines = wrap_words(text, font, max_width, break_words=True) or []
        # A box narrower than one character cannot hold even a split word; those lines are dropped too.
        room = next((i for i, line in enumerate(lines) if ink_width(font, line) > max_width), len(lines))
        if max_lines is not None:
            room = min(room, max_lines)
        while room > 0 and _vertical_extent(lines[:room], font, line_height)[2] > max_height:
            room -= 1
        if room < len(lines):
            truncated = True
            kept = lines[:room]
            if kept:
                kept[-1] = _with_ellipsis(kept[-1], font, max_width)
                if not kept[-1] or _vertical_extent(kept, font, line_height)[2] > max_height:
                    kept.pop()
            lines = kept

    line_height = round(size * line_spacing)
    ascent, descent, height = _vertical_extent(lines, font, line_height)
    return FittedText(
        lines=tuple(lines),
        size=size,
        line_height=line_height,
        ascent=ascent,
        descent=descent,
        width=max((ink_width(font, line) for line in lines), default=0),
        height=height,
        truncated=truncated,
    )


def _balanced(text: str, font: ImageFont.FreeTypeFont, max_width: int, line_count: int) -> list[str]:
    """The narrowest wrap that keeps ``line_count`` lines, so a headline does not end on a lone word."""
    low, high = max_width // 2, max_width
    while low < high:
        middle = (low + high) // 2
        lines = wrap_words(text, font, middle)
        if lines is not None and len(lines) <= line_count:
            high = middle
        else:
            low = middle + 1
    return wrap_words(text, font, high) or []


def draw_fitted_text(
    draw: ImageDraw.ImageDraw,
    fitted: FittedText,
    family: FontFamily,
    weight: str,
    *,
    left: int,
    top: int,
    width: int,
    align: str,
    fill: tuple[int, int, int],
) -> tuple[int, int, int, int] | None:
    """Draw ``fitted`` with its first ascent at ``top``; returns the bounding box of the drawn pixels."""
    if fitted.empty:
        return None
    font = get_font(family, weight, fitted.size)
    baseline = top + fitted.ascent
    union: tuple[int, int, int, int] | None = None
    for line in fitted.lines:
        ink_left, _, ink_right, _ = font.getbbox(line, anchor="ls")
        if align == "center":
            x = left + (width - (ink_right - ink_left)) // 2 - ink_left
        elif align == "right":
            x = left + width - ink_right
        else:
            x = left - ink_left
        draw.text((x, baseline), line, font=font, fill=fill, anchor="ls")
        # Whole pixels here (the position is), though Pillow types the box as floats.
        x0, y0, x1, y1 = (int(value) for value in draw.textbbox((x, baseline), line, font=font, anchor="ls"))
        if union is None:
            union = (x0, y0, x1, y1)
        else:
            union = (min(union[0], x0), min(union[1], y0), max(union[2], x1), max(union[3], y1))
        baseline += fitted.line_height
    return union
