"""Comparison grids with labels, as A1111's X/Y/Z plot draws them: values of X above the columns, of Y left of
the rows, and one titled grid per value of Z, side by side.

A team compares LoRA epochs, CFG scales or samplers by looking at one picture; the labels make the picture
self-explanatory when it is shared. Text uses the bundled fonts (``campaign/text.py``), so a grid looks the same
on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from atelier.campaign.text import BUNDLED_FAMILIES, DEFAULT_FAMILY, draw_fitted_text, fit_text

PAPER = (255, 255, 255)
INK = (20, 20, 22)


def _label_size(cell_height: int) -> int:
    return max(12, min(32, cell_height // 12))


def labelled_grid(
    cells: Sequence[Image.Image],
    *,
    columns: int,
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    title: str = "",
    margin: int = 0,
) -> Image.Image:
    """``cells`` (row by row, ``columns`` per row) in one picture, with column and row labels and a title.

    Empty label lists leave that band out, so a plot along one axis has no empty margin.
    """
    family = BUNDLED_FAMILIES[DEFAULT_FAMILY]
    cell_width = max(cell.width for cell in cells)
    cell_height = max(cell.height for cell in cells)
    rows = -(-len(cells) // columns)
    size = _label_size(cell_height)
    pad = size // 2
    label_height = round(size * 1.3) * 2 + pad if any(x_labels) else 0
    title_height = round(size * 1.5) + pad if title else 0
    label_width = 0
    if any(y_labels):
        label_width = min(cell_width, max(_text_width(label, size) for label in y_labels) + 2 * pad)
    width = label_width + columns * cell_width + (columns - 1) * margin
    height = title_height + label_height + rows * cell_height + (rows - 1) * margin
    canvas = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(canvas)

    def text(
        value: str, left: int, top: int, box_width: int, box_height: int, weight: str = "regular"
    ) -> None:
        fitted = fit_text(
            value,
            family,
            weight,
            max_width=box_width,
            max_height=box_height,
            max_size=size,
            min_size=8,
            max_lines=2,
        )
        centred_top = top + max(0, (box_height - fitted.height) // 2)
        draw_fitted_text(
            draw,
            fitted,
            family,
            weight,
            left=left,
            top=centred_top,
            width=box_width,
            align="center",
            fill=INK,
        )

    if title:
        text(title, 0, 0, width, title_height, "bold")
    top = title_height + label_height
    for index, label in enumerate(x_labels[:columns]):
        left = label_width + index * (cell_width + margin)
        text(label, left + pad, title_height, cell_width - 2 * pad, label_height)
    for row in range(rows):
        y = top + row * (cell_height + margin)
        if row < len(y_labels) and label_width:
            text(y_labels[row], pad, y, label_width - 2 * pad, cell_height)
        for column in range(columns):
            index = row * columns + column
            if index < len(cells):
                cell = cells[index].convert("RGB")
                canvas.paste(cell, (label_width + column * (cell_width + margin), y))
    return canvas


def side_by_side(grids: Sequence[Image.Image], *, gap: int = 0) -> Image.Image:
    """Grids in one row, top-aligned (the sub-grids of an X/Y/Z plot, one per Z value)."""
    width = sum(grid.width for grid in grids) + gap * (len(grids) - 1)
    canvas = Image.new("RGB", (width, max(grid.height for grid in grids)), PAPER)
    left = 0
    for grid in grids:
        canvas.paste(grid, (left, 0))
        left += grid.width + gap
    return canvas


def _text_width(value: str, size: int) -> int:
    from atelier.campaign.text import get_font, ink_width

    return ink_width(get_font(BUNDLED_FAMILIES[DEFAULT_FAMILY], "regular", size), value)
