"""Captioning models in the service: which ones the models bucket holds, and a worker's local folder of one.

A captioning model is a transformers folder in ``models/captioning/<name>/`` (see
:mod:`atelier.engine.captioning`). Like ControlNets they are not registered as checkpoints (the bucket watcher
leaves the folder alone) but read by name. The API only lists the bucket, so it never loads torch; the worker
that runs a caption job loads the model from its local folder (with S3 storage, a mirror in its cache).

A1111's ``/sdapi/v1/interrogate`` names two models: ``clip`` (A1111's BLIP caption plus CLIP's artist and
style terms) is served by the studio's captioning model, the first by name when there are several; a
captioning model's own name may be given too. ``deepdanbooru`` (a booru tag model) has no counterpart here.
"""

from __future__ import annotations

import os
from pathlib import Path

from atelier.errors import NotFoundError
from atelier.service.model_folders import local_model_folder, stored_model_folders
from atelier.service.storage import Storage

CAPTIONING_PREFIX = "models/captioning"
A1111_CAPTION_MODEL = "clip"
A1111_TAGGER_MODEL = "deepdanbooru"


def stored_captioning_models(storage: Storage) -> list[str]:
    """Names of the folders in ``models/captioning/`` that hold a config.json, sorted."""
    return stored_model_folders(storage, CAPTIONING_PREFIX)


def _hint() -> str:
    from atelier.engine import captioning_model_hint

    return captioning_model_hint("models")


def resolve_captioning_model(storage: Storage, model: str) -> str:
    """The captioning model that serves A1111's ``model`` (``clip``, or a captioning model's name).

    Raises :class:`NotFoundError` naming ``models/captioning/`` and what to put there when there is none.
    """
    names = stored_captioning_models(storage)
    if model == A1111_TAGGER_MODEL:
        raise NotFoundError(
            f"model {A1111_TAGGER_MODEL!r}: Atelier has no booru tagger; use {A1111_CAPTION_MODEL!r}, the "
            f"captioning model in {CAPTIONING_PREFIX}/",
            field="model",
        )
    if not names:
        raise NotFoundError(f"no captioning model in {CAPTIONING_PREFIX}/: {_hint()}", field="model")
    if model == A1111_CAPTION_MODEL:
        return names[0]
    if model in names:
        return model
    raise NotFoundError(
        f"model {model!r} not found: use {A1111_CAPTION_MODEL!r} (the captioning model {names[0]}) or one of "
        f"the captioning models in {CAPTIONING_PREFIX}/: {', '.join(names)}",
        field="model",
    )


def local_captioning_model(storage: Storage, cache_dir: str | os.PathLike[str], name: str) -> Path:
    """The folder of captioning model ``name`` on this machine: in place on local storage, else mirrored."""
    return local_model_folder(storage, cache_dir, CAPTIONING_PREFIX, name, what="captioning model")
