"""Model folders read by name from the models bucket, and a worker's local copy of one.

Some models are transformers folders that are never registered as checkpoints: captioning models
(``models/captioning/<name>/``) and segmentation models (``models/segmentation/<name>/``). The API lists them
from the bucket, so it never loads torch; the worker that runs a job loads one from its local folder: in place
on local storage, else a mirror in its cache that downloads only the files new or changed since the last job.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from atelier.errors import NotFoundError
from atelier.files import write_text_atomic
from atelier.service.storage import Storage

SEGMENTATION_PREFIX = "models/segmentation"  # SAM folders that cut products out (campaign/product)
MARKER = "config.json"  # what makes a folder under the prefix a model
_MIRROR_VERSIONS = ".versions.json"


def stored_model_folders(storage: Storage, prefix: str) -> list[str]:
    """Names of the folders directly under ``prefix`` that hold a config.json, sorted."""
    names = set()
    for item in storage.list(prefix):
        parts = item.key[len(prefix) :].strip("/").split("/")
        if len(parts) == 2 and parts[1] == MARKER and not parts[0].startswith("."):
            names.add(parts[0])
    return sorted(names)


def local_model_folder(
    storage: Storage, cache_dir: str | os.PathLike[str], prefix: str, name: str, *, what: str
) -> Path:
    """The folder ``<prefix>/<name>`` on this machine; :class:`NotFoundError` naming ``what`` when it is not there."""
    key = f"{prefix}/{name}"
    missing = NotFoundError(f"{what} {name!r} is not in {prefix}/", field="model")
    local = storage.local_path(key)
    if local is not None:
        if not (local / MARKER).is_file():
            raise missing
        return local
    mirror = Path(cache_dir) / prefix.removeprefix("models/") / name
    if MARKER not in mirror_prefix(storage, key, mirror):
        raise missing
    return mirror


def mirror_prefix(storage: Storage, prefix: str, mirror: Path) -> dict[str, str]:
    """Make ``mirror`` a copy of the objects under ``prefix``: new or changed files are downloaded, files gone
    from the bucket are removed (they must not be loaded). Returns the mirrored files' versions by path."""
    mirror.mkdir(parents=True, exist_ok=True)
    versions_file = mirror / _MIRROR_VERSIONS
    known = json.loads(versions_file.read_text()) if versions_file.is_file() else {}
    current = {}
    for item in storage.list(prefix):
        relative = item.key[len(prefix) :].lstrip("/")
        current[relative] = item.version
        if known.get(relative) != item.version or not (mirror / relative).is_file():
            storage.get_file(item.key, mirror / relative)
    for relative in set(known) - set(current):
        (mirror / relative).unlink(missing_ok=True)
    write_text_atomic(versions_file, json.dumps(current))
    return current
