"""LoRA training for Stable Diffusion 1.5 and SDXL, compatible with kohya-ss sd-scripts datasets.

A pure library (no web, no database) on top of the engine. The layers above use it through the names below
and nothing else (``make lint`` checks that); they load on first use, so reading a config imports no torch.

The data layer is pure Python (no torch):

- :mod:`atelier.training.archive` extracts an uploaded ``training_data.zip`` safely.
- :mod:`atelier.training.dataset_config` reads kohya's ``dataset.toml`` or builds the same structure from a
  plain folder of captioned images (``10_oue car`` style subfolders included).
- :mod:`atelier.training.dataset` scans those folders into captioned :class:`~atelier.training.dataset.ImageItem`
  records and processes captions the way kohya does (shuffle, keep_tokens, dropout, tag frequency).
- :mod:`atelier.training.buckets` does kohya's aspect-ratio bucketing, resize-and-crop and per-bucket batching.
- :mod:`atelier.training.recipe` is the training loop (torchtune-style), :mod:`atelier.training.report` its
  summary, loss curve and resume fingerprint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from atelier.lazy import lazy_exports

_EXPORTS = {
    "check_zip": "archive",
    "extract_zip": "archive",
    "FIELD_NAMES": "config",
    "FIELD_TYPES": "config",
    "PRESETS": "config",
    "TrainConfig": "config",
    "load_train_config": "config",
    "IMAGE_EXTENSIONS": "dataset_config",
    "RIGHTS_FILE": "rights",
    "RightsRecord": "rights",
    "find_rights": "rights",
    "parse_rights": "rights",
    "read_rights": "rights",
    "rights_from_metadata": "rights",
    "rights_in_zip": "rights",
    "TrainProgress": "recipe",
    "TrainResult": "recipe",
    "train_lora": "recipe",
    "STATE_FILE": "state",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from atelier.training.archive import check_zip, extract_zip
    from atelier.training.config import FIELD_NAMES, FIELD_TYPES, PRESETS, TrainConfig, load_train_config
    from atelier.training.dataset_config import IMAGE_EXTENSIONS
    from atelier.training.recipe import TrainProgress, TrainResult, train_lora
    from atelier.training.rights import (
        RIGHTS_FILE,
        RightsRecord,
        find_rights,
        parse_rights,
        read_rights,
        rights_from_metadata,
        rights_in_zip,
    )
    from atelier.training.state import STATE_FILE
