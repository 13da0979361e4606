"""Receiving uploads: raw request bodies streamed to a staging file of their own, names checked first."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from fastapi import Request

from atelier.errors import AtelierError, NotFoundError, UnsafeFileError
from atelier.service.config import StudioConfig
from atelier.service.registry import check_model_name
from atelier.service.storage import TEMP_PREFIX, Storage
from atelier.service.watcher import PICKLE_SUFFIXES


def object_version(storage: Storage, key: str) -> str:
    for item in storage.list(key):
        if item.key == key:
            return item.version
    raise NotFoundError(f"{key} was not stored", field="key")


async def receive_to_file(request: Request, destination: Path) -> int:
    """Stream the request body into ``destination`` (size limited by the route's max_body_size)."""
    size = 0
    with destination.open("wb") as handle:
        async for chunk in request.stream():
            size += len(chunk)
            handle.write(chunk)
    return size


def upload_path(config: StudioConfig, filename: str) -> Path:
    """Where an upload is received: under its own name (messages about it name the user's file), in a
    folder of its own; :func:`discard_upload` removes both."""
    folder = config.cache_dir / "uploads" / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / filename


def discard_upload(staging: Path) -> None:
    shutil.rmtree(staging.parent, ignore_errors=True)


def check_upload_filename(filename: str, suffixes: tuple[str, ...], what: str) -> str:
    if filename.lower().endswith(PICKLE_SUFFIXES):
        raise UnsafeFileError(
            f"{filename} is a Python pickle; Atelier never loads those (they can run code). Upload the "
            ".safetensors version.",
            field="file",
        )
    if not filename.lower().endswith(suffixes):
        raise AtelierError(f"{what} must be a {' or '.join(suffixes)} file, got {filename!r}", field="file")
    stem = filename[: filename.rindex(".")]
    check_model_name(stem, what="file")
    return filename
