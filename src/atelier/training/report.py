"""What a run leaves for people to read: the loss-curve PNG, the per-step loss CSV and ``summary.json``.

The loss curve is drawn with Pillow (already a dependency) rather than matplotlib: a line chart with axes, a few
labelled ticks, the raw per-step loss in a light colour and its moving average on top.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from atelier.files import write_atomic, write_text_atomic

_WIDTH, _HEIGHT = 800, 450
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 40, 50
_RAW_COLOUR = (160, 190, 230)
_SMOOTH_COLOUR = (20, 70, 160)
_AXIS_COLOUR = (60, 60, 60)
_GRID_COLOUR = (225, 225, 225)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (shorter at the start)."""
    averaged, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        averaged.append(total / min(index + 1, window))
    return averaged


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw_step = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw_step)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.4g}"


def draw_loss_curve(points: Sequence[Sequence[float]], *, title: str = "training loss") -> Image.Image:
    """A line chart of ``(step, loss)`` points; an empty or one-point curve gives a labelled empty chart."""
    image = Image.new("RGB", (_WIDTH, _HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    plot_width, plot_height = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
    draw.text((_LEFT, 12), title, fill=_AXIS_COLOUR, font=font)
    finite = [(float(step), float(loss)) for step, loss in points if math.isfinite(loss)]
    if finite:
        steps = [step for step, _ in finite]
        losses = [loss for _, loss in finite]
        x_low, x_high = min(steps), max(max(steps), min(steps) + 1)
        y_low, y_high = min(losses), max(losses)
        if y_high - y_low < 1e-12:
            y_low, y_high = y_low - 0.5, y_high + 0.5

        def to_xy(step: float, loss: float) -> tuple[float, float]:
            x = _LEFT + (step - x_low) / (x_high - x_low) * plot_width
            y = _TOP + (1 - (loss - y_low) / (y_high - y_low)) * plot_height
            return x, y

        for tick in _ticks(y_low, y_high):
            _, y = to_xy(x_low, tick)
            draw.line([(_LEFT, y), (_LEFT + plot_width, y)], fill=_GRID_COLOUR)
            draw.text((6, y - 6), _label(tick), fill=_AXIS_COLOUR, font=font)
        for tick in _ticks(x_low, x_high):
            x, _ = to_xy(tick, y_low)
            draw.line([(x, _TOP + plot_height), (x, _TOP + plot_height + 5)], fill=_AXIS_COLOUR)
            draw.text((x - 10, _TOP + plot_height + 8), _label(tick), fill=_AXIS_COLOUR, font=font)
        window = max(1, len(losses) // 20)
        for series, colour, width in (
            (losses, _RAW_COLOUR, 1),
            (moving_average(losses, window), _SMOOTH_COLOUR, 2),
        ):
            xy = [to_xy(step, loss) for step, loss in zip(steps, series, strict=True)]
            if len(xy) == 1:
                x, y = xy[0]
                draw.ellipse([(x - 2, y - 2), (x + 2, y + 2)], fill=colour)
            else:
                draw.line(xy, fill=colour, width=width)
    else:
        draw.text((_LEFT + 10, _TOP + plot_height // 2), "no steps trained yet", fill=_AXIS_COLOUR, font=font)
    draw.line(
        [(_LEFT, _TOP), (_LEFT, _TOP + plot_height), (_LEFT + plot_width, _TOP + plot_height)],
        fill=_AXIS_COLOUR,
    )
    draw.text((_LEFT + plot_width // 2 - 12, _HEIGHT - 18), "step", fill=_AXIS_COLOUR, font=font)
    return image


def write_loss_curve(path: Path, points: Sequence[Sequence[float]], *, title: str = "training loss") -> Path:
    image = draw_loss_curve(points, title=title)
    return write_atomic(path, lambda temp: image.save(temp, format="PNG"))


def write_loss_csv(path: Path, points: Sequence[Sequence[float]]) -> Path:
    lines = ["step,loss"] + [f"{int(step)},{loss:.6g}" for step, loss in points]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    text = json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n"
    return write_text_atomic(path, text)
