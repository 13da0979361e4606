"""Writing generated images: ``<seed>_<timestamp>.png`` with A1111's ``parameters`` text chunk."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from atelier.engine.generate import GeneratedImage
from atelier.engine.infotext import write_png


def output_filename(seed: int, when: datetime) -> str:
    return f"{seed}_{when:%Y%m%d-%H%M%S}.png"


def save_image(
    item: GeneratedImage, out_dir: str | os.PathLike[str], *, when: datetime | None = None
) -> Path:
    """Save atomically; never overwrite an earlier image with the same seed and second."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = output_filename(item.seed, when or datetime.now())
    path = out / name
    counter = 1
    while path.exists():
        path = out / f"{Path(name).stem}-{counter}.png"
        counter += 1
    write_png(path, item.image, item.infotext)
    return path
