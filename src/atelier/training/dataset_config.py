"""kohya-ss ``dataset.toml`` files, and the same structure built from a plain folder of captioned images.

A kohya dataset config has three levels::

    [general]                 # defaults for every dataset and subset
    [[datasets]]              # resolution, batch size, bucketing; defaults for its subsets
      [[datasets.subsets]]    # one image folder: image_dir, num_repeats, captions, is_reg

A value set on a subset wins over its dataset's, which wins over ``[general]``, which wins over the caller's
``defaults`` (kohya's command-line arguments), which win over kohya's built-in defaults. Keys and types are
checked strictly: a typo in a key would otherwise silently train with a default.

Atelier departs from kohya in two documented places: relative ``image_dir`` paths resolve against the TOML's own
folder (not the current directory), and the default ``caption_extension`` is ``.txt`` (kohya's ``.caption``
default silently drops the far more common ``.txt`` captions; the scanner also falls back between the two).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atelier.errors import AtelierError, UnsafeFileError
from atelier.files import read_toml

logger = logging.getLogger(__name__)

DEFAULT_CAPTION_EXTENSION = ".txt"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# kohya DreamBooth folder names: "<repeats>_<class tokens>", e.g. "10_oue car". ASCII digits only, since int()
# would also accept other scripts' digits and surrounding spaces.
_REPEAT_FOLDER = re.compile(r"^([0-9]+)(?:_(.*))?$", re.DOTALL)


@dataclass(frozen=True)
class SubsetConfig:
    """One folder of training images and how its captions are used (kohya's ``[[datasets.subsets]]``)."""

    image_dir: Path
    num_repeats: int = 1
    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    shuffle_caption: bool = False
    keep_tokens: int = 0
    class_tokens: str | None = None
    is_reg: bool = False
    flip_aug: bool = False
    caption_dropout_rate: float = 0.0


@dataclass
class DatasetConfig:
    """One kohya ``[[datasets]]`` entry: how its images are sized and batched, and its subsets."""

    resolution: tuple[int, int]
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    subsets: list[SubsetConfig] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Key checking


def toml_type_name(value: Any) -> str:
    """The TOML name of a value's type, for error messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _wrong_type(key: str, where: str, expected: str, value: Any) -> AtelierError:
    return AtelierError(
        f"`{key}` in {where} must be {expected}, got {value!r} ({toml_type_name(value)})", field=key
    )


def _as_bool(key: str, value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _wrong_type(key, where, "true or false", value)
    return value


def _as_int(key: str, value: Any, where: str, *, minimum: int) -> int:
    # TOML booleans are Python ints; `batch_size = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(key, where, "an integer", value)
    if value < minimum:
        raise AtelierError(f"`{key}` in {where} must be at least {minimum}, got {value}", field=key)
    return value


def _positive_int(key: str, value: Any, where: str) -> int:
    return _as_int(key, value, where, minimum=1)


def _non_negative_int(key: str, value: Any, where: str) -> int:
    return _as_int(key, value, where, minimum=0)


def _multiple_of_8(key: str, value: Any, where: str) -> int:
    number = _positive_int(key, value, where)
    if number % 8:
        # The VAE works in 8-pixel cells; anything else cannot be encoded to latents.
        raise AtelierError(f"`{key}` in {where} must be a multiple of 8, got {number}", field=key)
    return number


def _resolution(key: str, value: Any, where: str) -> tuple[int, int]:
    if isinstance(value, list):
        if len(value) != 2:
            raise _wrong_type(key, where, "an integer or [width, height]", value)
        width, height = (_multiple_of_8(key, side, where) for side in value)
        return width, height
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(key, where, "an integer or [width, height]", value)
    side = _multiple_of_8(key, value, where)
    return side, side


def _rate(key: str, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(key, where, "a number", value)
    if not 0.0 <= value <= 1.0:
        raise AtelierError(f"`{key}` in {where} must be between 0 and 1, got {value}", field=key)
    return float(value)


def _string(key: str, value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _wrong_type(key, where, "a string", value)
    return value


def _caption_extension(key: str, value: Any, where: str) -> str:
    extension = _string(key, value, where).strip()
    if not extension or extension == ".":
        raise AtelierError(f"`{key}` in {where} must not be empty", field=key)
    # kohya accepts "txt" and means ".txt".
    return extension if extension.startswith(".") else "." + extension


def _class_tokens(key: str, value: Any, where: str) -> str | None:
    return _string(key, value, where).strip() or None


def _image_dir(key: str, value: Any, where: str) -> str:
    text = _string(key, value, where)
    if not text.strip():
        raise AtelierError(f"`{key}` in {where} must not be empty", field=key)
    return text


_Checker = Callable[[str, Any, str], Any]

_DATASET_KEYS: dict[str, _Checker] = {
    "resolution": _resolution,
    "batch_size": _positive_int,
    "enable_bucket": _as_bool,
    "min_bucket_reso": _multiple_of_8,
    "max_bucket_reso": _multiple_of_8,
    "bucket_reso_steps": _multiple_of_8,
    "bucket_no_upscale": _as_bool,
}
# Subset settings that may also be set on a dataset or in [general] as defaults.
_SUBSET_DEFAULT_KEYS: dict[str, _Checker] = {
    "num_repeats": _positive_int,
    "caption_extension": _caption_extension,
    "shuffle_caption": _as_bool,
    "keep_tokens": _non_negative_int,
    "class_tokens": _class_tokens,
    "flip_aug": _as_bool,
    "caption_dropout_rate": _rate,
}
_SUBSET_ONLY_KEYS: dict[str, _Checker] = {"image_dir": _image_dir, "is_reg": _as_bool}

# [general] and [[datasets]] accept the same keys: dataset settings plus defaults for subsets.
_GENERAL_TABLE = {**_DATASET_KEYS, **_SUBSET_DEFAULT_KEYS}
_SUBSET_TABLE = {**_SUBSET_DEFAULT_KEYS, **_SUBSET_ONLY_KEYS}

# Options kohya understands that Atelier's trainer does not implement: named apart so the error says so
# instead of calling them typos.
_KOHYA_UNSUPPORTED = frozenset(
    {
        "alpha_mask",
        "cache_info",
        "caption_dropout_every_n_epochs",
        "caption_prefix",
        "caption_separator",
        "caption_suffix",
        "caption_tag_dropout_rate",
        "color_aug",
        "conditioning_data_dir",
        "enable_wildcard",
        "face_crop_aug_range",
        "keep_tokens_separator",
        "metadata_file",
        "network_multiplier",
        "random_crop",
        "resize_interpolation",
        "secondary_separator",
        "token_warmup_min",
        "token_warmup_step",
    }
)


def _check_table(table: Mapping[str, Any], where: str, allowed: Mapping[str, _Checker]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for key, value in table.items():
        checker = allowed.get(key)
        if checker is None:
            raise _unknown_key(key, where)
        checked[key] = checker(key, value, where)
    return checked


def _unknown_key(key: str, where: str) -> AtelierError:
    if key in _KOHYA_UNSUPPORTED:
        return AtelierError(
            f"`{key}` in {where} is a kohya option Atelier does not support; remove it", field=key
        )
    if key in _SUBSET_ONLY_KEYS:
        return AtelierError(f"`{key}` in {where} is only allowed in [[datasets.subsets]]", field=key)
    if key in _DATASET_KEYS:
        return AtelierError(f"`{key}` in {where} is only allowed in [general] or [[datasets]]", field=key)
    return AtelierError(f"unknown key `{key}` in {where}", field=key)


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise AtelierError(f"{where} must be a table, got {toml_type_name(value)}", field=where)
    return value


def _array_of_tables(value: Any, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise AtelierError(f"{where} must be an array of tables (written [[{where}]])", field=where)
    return value


def _split(values: Mapping[str, Any], keys: Mapping[str, _Checker]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if key in keys}


# ---------------------------------------------------------------------------------------------------------------
# Building configs


def _make_subset(values: Mapping[str, Any], image_dir: Path) -> SubsetConfig:
    return SubsetConfig(
        image_dir=image_dir,
        num_repeats=values.get("num_repeats", 1),
        caption_extension=values.get("caption_extension", DEFAULT_CAPTION_EXTENSION),
        shuffle_caption=values.get("shuffle_caption", False),
        keep_tokens=values.get("keep_tokens", 0),
        class_tokens=values.get("class_tokens"),
        is_reg=values.get("is_reg", False),
        flip_aug=values.get("flip_aug", False),
        caption_dropout_rate=values.get("caption_dropout_rate", 0.0),
    )


def _make_dataset(values: Mapping[str, Any], subsets: list[SubsetConfig], where: str) -> DatasetConfig:
    if "resolution" not in values:
        raise AtelierError(
            f"{where} has no `resolution`; set it there or in [general] (e.g. resolution = 512)",
            field="resolution",
        )
    config = DatasetConfig(
        resolution=values["resolution"],
        batch_size=values.get("batch_size", 1),
        enable_bucket=values.get("enable_bucket", False),
        min_bucket_reso=values.get("min_bucket_reso", 256),
        max_bucket_reso=values.get("max_bucket_reso", 1024),
        bucket_reso_steps=values.get("bucket_reso_steps", 64),
        bucket_no_upscale=values.get("bucket_no_upscale", False),
        subsets=subsets,
    )
    _check_bucket_limits(config, where)
    return config


def _check_bucket_limits(config: DatasetConfig, where: str) -> None:
    # kohya ignores the bucket limits when bucketing is off, and when bucket_no_upscale derives buckets from
    # each image's own size.
    if not config.enable_bucket or config.bucket_no_upscale:
        return
    width, height = config.resolution
    steps = config.bucket_reso_steps
    if config.min_bucket_reso > min(width, height):
        raise AtelierError(
            f"{where}: min_bucket_reso ({config.min_bucket_reso}) must not exceed the resolution's shorter side "
            f"({min(width, height)})",
            field="min_bucket_reso",
        )
    if config.max_bucket_reso < max(width, height):
        raise AtelierError(
            f"{where}: max_bucket_reso ({config.max_bucket_reso}) must not be below the resolution's longer side "
            f"({max(width, height)})",
            field="max_bucket_reso",
        )
    for key in ("min_bucket_reso", "max_bucket_reso"):
        if getattr(config, key) % steps:
            raise AtelierError(
                f"{where}: {key} ({getattr(config, key)}) must be a multiple of bucket_reso_steps ({steps})",
                field=key,
            )


def _resolve_image_dir(raw: str, base_dir: Path, confine_to: Path | None, where: str) -> Path:
    path = Path(raw)
    resolved = (path if path.is_absolute() else base_dir / path).resolve()
    if confine_to is not None:
        root = confine_to.resolve()
        if not resolved.is_relative_to(root):
            raise UnsafeFileError(f"`image_dir` {raw!r} in {where} points outside {root}", field="image_dir")
    return resolved


def parse_dataset_config(
    data: Mapping[str, Any],
    base_dir: str | os.PathLike[str],
    *,
    defaults: Mapping[str, Any] | None = None,
    confine_to: str | os.PathLike[str] | None = None,
) -> list[DatasetConfig]:
    """Check an already-parsed kohya dataset config and return its datasets.

    ``base_dir`` is where relative ``image_dir`` values point from. ``defaults`` plays the part of kohya's
    command-line arguments: the same keys as ``[general]``, used where the file sets nothing. With
    ``confine_to``, an ``image_dir`` outside that folder is refused (for configs that came with an upload).
    """
    base = Path(base_dir)
    confine = Path(confine_to) if confine_to is not None else None
    for key in data:
        if key not in ("general", "datasets"):
            raise AtelierError(f"unknown top-level key `{key}` in the dataset config", field=key)

    fallback = _check_table(defaults or {}, "the default settings", _GENERAL_TABLE)
    general = _check_table(_table(data.get("general", {}), "[general]"), "[general]", _GENERAL_TABLE)
    datasets = _array_of_tables(data.get("datasets", []), "datasets")
    if not datasets:
        raise AtelierError("the dataset config has no [[datasets]] table", field="datasets")

    configs: list[DatasetConfig] = []
    for number, dataset_table in enumerate(datasets, start=1):
        where = f"[[datasets]] #{number}"
        own = {key: value for key, value in dataset_table.items() if key != "subsets"}
        dataset_values = _check_table(own, where, _GENERAL_TABLE)
        subset_tables = _array_of_tables(dataset_table.get("subsets", []), "datasets.subsets")
        if not subset_tables:
            raise AtelierError(f"{where} has no [[datasets.subsets]] with an image_dir", field="subsets")

        subset_defaults = {
            **_split(fallback, _SUBSET_DEFAULT_KEYS),
            **_split(general, _SUBSET_DEFAULT_KEYS),
            **_split(dataset_values, _SUBSET_DEFAULT_KEYS),
        }
        subsets: list[SubsetConfig] = []
        for subset_number, subset_table in enumerate(subset_tables, start=1):
            subset_where = f"[[datasets.subsets]] #{subset_number} of dataset #{number}"
            subset_values = {**subset_defaults, **_check_table(subset_table, subset_where, _SUBSET_TABLE)}
            if "image_dir" not in subset_values:
                raise AtelierError(f"{subset_where} has no `image_dir`", field="image_dir")
            image_dir = _resolve_image_dir(subset_values["image_dir"], base, confine, subset_where)
            subsets.append(_make_subset(subset_values, image_dir))

        merged = {
            **_split(fallback, _DATASET_KEYS),
            **_split(general, _DATASET_KEYS),
            **_split(dataset_values, _DATASET_KEYS),
        }
        configs.append(_make_dataset(merged, subsets, where))
    return configs


def load_dataset_config(
    path: str | os.PathLike[str],
    *,
    defaults: Mapping[str, Any] | None = None,
    confine_to: str | os.PathLike[str] | None = None,
) -> list[DatasetConfig]:
    """Read a kohya ``dataset.toml``; relative ``image_dir`` values resolve against the file's folder."""
    config_path = Path(path)
    data = read_toml(config_path, what="dataset config", field="dataset_config")
    return parse_dataset_config(data, config_path.parent, defaults=defaults, confine_to=confine_to)


# ---------------------------------------------------------------------------------------------------------------
# Plain folders


def parse_repeat_folder(name: str) -> tuple[int, str | None] | None:
    """Split a kohya DreamBooth folder name ``"10_oue car"`` into ``(10, "oue car")``; None if it is not one.

    As in kohya, everything after the first underscore is the class tokens (``"5_oue_car"`` -> ``"oue_car"``),
    used as the caption of images that have no caption file.
    """
    match = _REPEAT_FOLDER.match(name)
    if match is None:
        return None
    tokens = (match.group(2) or "").strip()
    return int(match.group(1)), tokens or None


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name == "__MACOSX"


def _has_images(folder: Path) -> bool:
    return any(
        entry.is_file() and not _is_hidden(entry) and entry.suffix.lower() in IMAGE_EXTENSIONS
        for entry in folder.iterdir()
    )


def folder_subsets(
    root: str | os.PathLike[str],
    *,
    num_repeats: int = 1,
    is_reg: bool = False,
    warn: Callable[[str], None] = logger.warning,
) -> list[dict[str, Any]]:
    """Find the image folders under ``root`` the way kohya reads ``train_data_dir``, as subset settings.

    Images directly in ``root`` form one subset with ``num_repeats``; each ``N_name`` subfolder is a subset with
    N repeats and class tokens ``name``. Subfolders of any other name are skipped with a warning (kohya skips
    them too), as are ``N_name`` folders with 0 repeats. A root holding nothing but one plain folder, which is
    what unzipping ``training_data.zip`` with a top-level ``sample/`` gives, is looked through.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise AtelierError(f"training image folder not found: {folder}", field="train_data_dir")
    while True:
        subdirs = sorted(entry for entry in folder.iterdir() if entry.is_dir() and not _is_hidden(entry))
        if _has_images(folder) or len(subdirs) != 1 or parse_repeat_folder(subdirs[0].name) is not None:
            break
        folder = subdirs[0]

    subsets: list[dict[str, Any]] = []
    if _has_images(folder):
        subsets.append({"image_dir": folder.resolve(), "num_repeats": num_repeats, "is_reg": is_reg})
    for subdir in subdirs:
        parsed = parse_repeat_folder(subdir.name)
        if parsed is None:
            warn(f"skipping folder {subdir}: its name does not start with a repeat count like '10_oue car'")
            continue
        repeats, class_tokens = parsed
        if repeats < 1:
            warn(f"skipping folder {subdir}: 0 repeats means its images are not used")
            continue
        subset: dict[str, Any] = {"image_dir": subdir.resolve(), "num_repeats": repeats, "is_reg": is_reg}
        if class_tokens is not None:
            subset["class_tokens"] = class_tokens
        subsets.append(subset)
    return subsets


def from_folder(
    root: str | os.PathLike[str],
    resolution: int | tuple[int, int],
    batch_size: int = 1,
    *,
    reg_root: str | os.PathLike[str] | None = None,
    warn: Callable[[str], None] = logger.warning,
    **options: Any,
) -> list[DatasetConfig]:
    """Build the dataset config kohya would use for ``--train_data_dir root [--reg_data_dir reg_root]``.

    ``options`` takes the ``[general]`` keys of a dataset.toml (``enable_bucket``, ``shuffle_caption``,
    ``keep_tokens``, ``num_repeats`` for images directly in ``root``, ...) and is checked the same way. Unlike
    kohya, bucketing is on unless ``enable_bucket=False``: product photos rarely share one aspect ratio.
    """
    general: dict[str, Any] = {
        "enable_bucket": True,
        **options,
        "resolution": list(resolution) if isinstance(resolution, tuple) else resolution,
        "batch_size": batch_size,
    }
    checked = _check_table(general, "the training options", _GENERAL_TABLE)
    repeats = checked.get("num_repeats", 1)

    found = folder_subsets(root, num_repeats=repeats, warn=warn)
    if not found:
        raise AtelierError(f"no training images found in {Path(root)}", field="train_data_dir")
    if reg_root is not None:
        found += folder_subsets(reg_root, num_repeats=repeats, is_reg=True, warn=warn)

    subset_defaults = _split(checked, _SUBSET_DEFAULT_KEYS)
    subsets = [
        _make_subset({**subset_defaults, **found_subset}, found_subset["image_dir"]) for found_subset in found
    ]
    return [_make_dataset(_split(checked, _DATASET_KEYS), subsets, "the training options")]
