"""Folders of captioned training images, read the way kohya-ss sd-scripts reads DreamBooth-style datasets.

Each image ``photo.png`` takes its caption from ``photo.txt`` (or ``photo.caption``; whichever extension is
configured is tried first, then the other, because kohya's ``.caption`` default silently loses ``.txt``
captions). As in kohya only the first line of a caption file is used.

An image without a caption file, or with an empty one, is captioned with its subset's class tokens (the
``oue car`` of a ``10_oue car`` folder, kohya's rule) or else with the caller's instance prompt, and a warning
lists those images. With neither, scanning stops with an error naming the image: training on an empty caption
teaches the model nothing about the subject, so it is never done silently.

Every image is decoded once while scanning, so a truncated or corrupt file is reported before training starts
rather than hours into it.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import ExifTags, Image

from atelier.errors import AtelierError
from atelier.images import open_image
from atelier.training.dataset_config import (
    DEFAULT_CAPTION_EXTENSION,
    IMAGE_EXTENSIONS,
    DatasetConfig,
    SubsetConfig,
    folder_subsets,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageItem",
    "balance_regularization",
    "image_size",
    "list_images",
    "load_image",
    "process_caption",
    "read_caption",
    "scan_dataset",
    "scan_folder",
    "scan_subset",
    "tag_frequency",
]

logger = logging.getLogger(__name__)

CAPTION_EXTENSIONS = (".txt", ".caption")
_NAMES_SHOWN = 5
# EXIF orientations 5-8 rotate by 90 degrees, so the displayed width and height swap.
_ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass
class ImageItem:
    """One training image with its caption, how often it is seen per epoch, and the subset it came from."""

    path: Path
    caption: str
    repeats: int
    is_reg: bool
    subset: SubsetConfig
    # (width, height) as displayed, after EXIF orientation; filled in by scanning.
    size: tuple[int, int] | None = None


Warn = Callable[[str], None]


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive, as kohya), sorted, dotfiles skipped."""
    return sorted(
        entry
        for entry in Path(folder).iterdir()
        if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_EXTENSIONS
    )


def read_caption(
    image_path: str | os.PathLike[str], caption_extension: str = DEFAULT_CAPTION_EXTENSION
) -> tuple[str, Path] | None:
    """Return ``(caption, caption_file)`` for an image, or None when it has no caption file.

    The caption is the first non-blank line, stripped; an empty file gives ``""``.
    """
    image = Path(image_path)
    extensions = [caption_extension] + [ext for ext in CAPTION_EXTENSIONS if ext != caption_extension]
    for extension in extensions:
        caption_file = image.parent / (image.stem + extension)
        if not caption_file.is_file():
            continue
        try:
            text = caption_file.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise AtelierError(f"caption file {caption_file} is not UTF-8 text", field="captions") from exc
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return (lines[0] if lines else ""), caption_file
    return None


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Decode the whole image (catching truncated files) and return its displayed ``(width, height)``."""
    with open_image(path, field="images", label=str(path)) as image:
        width, height = image.size
        if image.getexif().get(ExifTags.Base.Orientation) in _ROTATED_ORIENTATIONS:
            width, height = height, width
    return width, height


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image for training: EXIF orientation applied, transparency flattened onto white, RGB.

    White, not black, because transparent product cut-outs are meant to be seen on a white page.
    """
    image = open_image(path, field="images", label=str(path), orient=True)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _names(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:_NAMES_SHOWN])
    hidden = len(paths) - _NAMES_SHOWN
    return f"{shown} and {hidden} more" if hidden > 0 else shown


def scan_subset(
    subset: SubsetConfig,
    *,
    instance_prompt: str | None = None,
    resolution: tuple[int, int] | None = None,
    warn: Warn = logger.warning,
) -> list[ImageItem]:
    """Read one subset's images and captions; every image is decoded to catch corrupt files.

    With ``resolution``, images with fewer pixels than it get one warning listing them (they will be upscaled).
    """
    folder = subset.image_dir
    if not folder.is_dir():
        raise AtelierError(f"image folder not found: {folder}", field="image_dir")
    images = list_images(folder)
    if not images:
        extensions = ", ".join(IMAGE_EXTENSIONS)
        raise AtelierError(f"no images ({extensions}) found in {folder}", field="image_dir")

    fallback = subset.class_tokens or (instance_prompt.strip() if instance_prompt else None)
    uncaptioned: list[str] = []
    too_small: list[str] = []
    items: list[ImageItem] = []
    for image in images:
        found = read_caption(image, subset.caption_extension)
        caption = found[0] if found else ""
        if not caption:
            if fallback is None:
                reason = f"its caption file {found[1]} is empty" if found else "it has no caption file"
                raise AtelierError(
                    f"{image}: {reason} (expected {image.stem}{subset.caption_extension}), and there is no "
                    f"instance prompt or class tokens to use instead",
                    field="captions",
                )
            caption = fallback
            uncaptioned.append(image.name)

        size = image_size(image)
        if resolution is not None and size[0] * size[1] < resolution[0] * resolution[1]:
            too_small.append(f"{image.name} ({size[0]}x{size[1]})")
        items.append(ImageItem(image, caption, subset.num_repeats, subset.is_reg, subset, size))

    if uncaptioned:
        warn(
            f"{len(uncaptioned)} image(s) in {folder} have no caption (or an empty caption file) and are "
            f"captioned {fallback!r}: {_names(uncaptioned)}"
        )
    if too_small:
        assert resolution is not None  # images are only found too small against a given resolution
        warn(
            f"{len(too_small)} image(s) in {folder} are smaller than the training resolution "
            f"{resolution[0]}x{resolution[1]} and will be upscaled, which softens detail: {_names(too_small)}"
        )
    return items


def balance_regularization(items: Sequence[ImageItem], *, warn: Warn = logger.warning) -> list[ImageItem]:
    """Give regularization images as many steps per epoch as training images, as kohya does.

    kohya walks the regularization images in order, granting each its subset's repeats until their total
    reaches the training total, then adds one repeat at a time round-robin; images never reached are dropped.
    """
    train = [item for item in items if not item.is_reg]
    reg = [item for item in items if item.is_reg]
    if not reg:
        return list(items)
    if not train:
        raise AtelierError("the dataset has only regularization images; add training images", field="images")

    train_total = sum(item.repeats for item in train)
    repeats: list[int] = []
    seen = 0
    while seen < train_total:
        for index, item in enumerate(reg):
            if len(repeats) <= index:
                repeats.append(item.repeats)
                seen += item.repeats
            else:
                repeats[index] += 1
                seen += 1
            if seen >= train_total:
                break
    if len(repeats) < len(reg):
        warn(
            f"{len(reg) - len(repeats)} of {len(reg)} regularization images are not used: there are more of them "
            f"than training images ({train_total} with repeats)"
        )
    balanced = [replace(item, repeats=count) for item, count in zip(reg, repeats, strict=False)]
    return train + balanced


def scan_dataset(
    config: DatasetConfig, *, instance_prompt: str | None = None, warn: Warn = logger.warning
) -> list[ImageItem]:
    """Scan every subset of a dataset, then balance regularization repeats against training images."""
    small_image_limit = None if (config.enable_bucket and config.bucket_no_upscale) else config.resolution
    items: list[ImageItem] = []
    scanned: set[tuple[Path, bool]] = set()
    for subset in config.subsets:
        key = (subset.image_dir, subset.is_reg)
        if key in scanned:
            # kohya keeps the first of two subsets with the same folder; training it twice would double it.
            warn(f"skipping {subset.image_dir}: it is listed twice in the dataset; the first entry is used")
            continue
        scanned.add(key)
        items += scan_subset(subset, instance_prompt=instance_prompt, resolution=small_image_limit, warn=warn)
    return balance_regularization(items, warn=warn)


def scan_folder(
    root: str | os.PathLike[str],
    *,
    caption_extension: str = DEFAULT_CAPTION_EXTENSION,
    instance_prompt: str | None = None,
    default_repeats: int = 1,
    resolution: tuple[int, int] | None = None,
    warn: Warn = logger.warning,
) -> list[ImageItem]:
    """Scan a plain folder: images in ``root`` itself repeat ``default_repeats`` times, ``N_name`` subfolders N.

    Raises :class:`AtelierError` when no images are found, naming the folder.
    """
    extension = caption_extension if caption_extension.startswith(".") else "." + caption_extension
    found = folder_subsets(root, num_repeats=default_repeats, warn=warn)
    if not found:
        raise AtelierError(f"no training images found in {Path(root)}", field="train_data_dir")
    items: list[ImageItem] = []
    for settings in found:
        subset = SubsetConfig(
            image_dir=settings["image_dir"],
            num_repeats=settings["num_repeats"],
            caption_extension=extension,
            class_tokens=settings.get("class_tokens"),
        )
        items += scan_subset(subset, instance_prompt=instance_prompt, resolution=resolution, warn=warn)
    return items


def process_caption(
    caption: str, *, shuffle: bool, keep_tokens: int, dropout_rate: float, rng: random.Random
) -> str:
    """Prepare a caption for one training step, as kohya does.

    With probability ``dropout_rate`` the caption is dropped (``""``, unconditional training). Otherwise, when
    ``shuffle`` is set, the comma-separated tags after the first ``keep_tokens`` are shuffled and the tags are
    joined with ``", "``; without ``shuffle`` the caption is returned unchanged.
    """
    if not 0.0 <= dropout_rate <= 1.0:
        raise ValueError(f"dropout_rate must be between 0 and 1, got {dropout_rate}")
    if keep_tokens < 0:
        raise ValueError(f"keep_tokens must not be negative, got {keep_tokens}")
    if dropout_rate > 0 and rng.random() < dropout_rate:
        return ""
    if not shuffle:
        return caption
    tags = [tag.strip() for tag in caption.split(",")]
    tags = [tag for tag in tags if tag]
    kept, shuffled = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(shuffled)
    return ", ".join(kept + shuffled)


def tag_frequency(items: Sequence[ImageItem]) -> dict[str, dict[str, int]]:
    """Count caption tags per image folder name, in kohya's ``ss_tag_frequency`` metadata shape.

    Each image counts once whatever its repeats; tags are stripped and lower-cased, as kohya records them.
    """
    frequency: dict[str, dict[str, int]] = {}
    for item in items:
        counts = frequency.setdefault(item.subset.image_dir.name, {})
        for raw_tag in item.caption.split(","):
            tag = raw_tag.strip().lower()
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return frequency
