"""Writing generated images: ``<seed>_<timestamp>.png`` (or ``.jpg`` / ``.webp``) with A1111's infotext and
the AI disclosure, signed with Content Credentials when a signer is given."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from atelier.engine.generate import GeneratedImage
from atelier.engine.provenance import (
    GENERATED,
    OUTPUT_FORMATS,
    Ingredient,
    Provenance,
    check_output_format,
    source_type_of,
    write_image,
)

if TYPE_CHECKING:
    from atelier.engine.credentials import ContentSigner


def output_filename(seed: int, when: datetime) -> str:
    return f"{seed}_{when:%Y%m%d-%H%M%S}.png"


def save_image(
    item: GeneratedImage,
    out_dir: str | os.PathLike[str],
    *,
    when: datetime | None = None,
    output_format: str = "png",
    quality: int | None = None,
    signer: ContentSigner | None = None,
    ingredients: Sequence[Ingredient] = (),
) -> Path:
    """Save atomically; never overwrite an earlier image with the same seed and second.

    ``ingredients`` are the files the picture came from (the init photo), for its Content Credentials.
    """
    name = check_output_format(output_format, quality)
    suffix = OUTPUT_FORMATS[name][2]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(output_filename(item.seed, when or datetime.now())).stem
    path = out / f"{stem}{suffix}"
    counter = 1
    while path.exists():
        path = out / f"{stem}-{counter}{suffix}"
        counter += 1
    # A picture from elsewhere (a studio over HTTP) says what it is in its own XMP.
    provenance = item.provenance or Provenance(source_type_of(item.image) or GENERATED)
    write_image(
        path,
        item.image,
        provenance.with_ingredients(*ingredients),
        output_format=name,
        quality=quality,
        infotext=item.infotext,
        signer=signer,
    )
    return path
