"""Saved prompt styles in AUTOMATIC1111's ``styles.csv`` format: read, write, and apply to a prompt.

A style is a name, a prompt and a negative prompt. Applying one follows A1111's ``modules/styles.py``: a style
text holding ``{prompt}`` has the user's prompt put in its place; otherwise the style is appended after a comma.
Styles apply in the order given, to the prompt and the negative prompt alike.

The CSV is A1111's: a header row ``name,prompt,negative_prompt`` (other columns, such as newer A1111's
``description``, are ignored), one style per row, standard CSV quoting. A byte-order mark is tolerated because
spreadsheet programs write one.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass

from atelier.errors import AtelierError

PROMPT_PLACEHOLDER = "{prompt}"
CSV_FIELDS = ("name", "prompt", "negative_prompt")
MAX_STYLES = 1000


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "prompt": self.prompt, "negative_prompt": self.negative_prompt}


def merge_style(prompt: str, style_text: str) -> str:
    """``prompt`` with one style text applied, as A1111 merges them."""
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative_prompt: str, styles: Iterable[PromptStyle]) -> tuple[str, str]:
    """The prompt and negative prompt with every style applied, in order."""
    for style in styles:
        prompt = merge_style(prompt, style.prompt)
        negative_prompt = merge_style(negative_prompt, style.negative_prompt)
    return prompt, negative_prompt


def read_styles_csv(text: str) -> list[PromptStyle]:
    """Styles from the text of an A1111 ``styles.csv``; AtelierError naming the row for a bad one."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff")))
    if reader.fieldnames is None or "name" not in reader.fieldnames:
        raise AtelierError(
            "styles.csv must start with the header row name,prompt,negative_prompt", field="styles"
        )
    styles: dict[str, PromptStyle] = {}
    for row_number, row in enumerate(reader, start=2):
        name = (row.get("name") or "").strip()
        if not name:
            continue  # A1111 skips rows without a name too
        styles[name] = check_style(
            PromptStyle(name, row.get("prompt") or "", row.get("negative_prompt") or ""),
            where=f"row {row_number}",
        )
        if len(styles) > MAX_STYLES:
            raise AtelierError(f"styles.csv has more than {MAX_STYLES} styles", field="styles")
    return list(styles.values())


def write_styles_csv(styles: Iterable[PromptStyle]) -> str:
    """The styles as an A1111 ``styles.csv``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for style in styles:
        writer.writerow(style.to_dict())
    return buffer.getvalue()


def check_style(style: PromptStyle, *, where: str = "style") -> PromptStyle:
    if not style.name.strip() or len(style.name) > 200:
        raise AtelierError(f"{where}: a style needs a name of 1 to 200 characters", field="name")
    for field_name in ("prompt", "negative_prompt"):
        if len(getattr(style, field_name)) > 20_000:
            raise AtelierError(
                f"{where}: the style's {field_name} is over 20,000 characters", field=field_name
            )
    return style
