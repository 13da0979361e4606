"""Registered models as local files on one machine.

The engine loads models from local paths. With local storage the bucket folder already is local, so a
registered model is used where it lies. With S3 each worker downloads a model once into its cache, in a folder
named after the model's sha256, so a replaced file never reuses a stale copy.

LoRAs are named in prompts (``<lora:shoes:0.8>``) and the engine looks them up in one flat folder. Each worker
keeps such a folder in its cache and places (hard-links, or downloads) every LoRA a prompt needs into it before
generating, so LoRAs uploaded anywhere in the bucket, or on another machine, are usable by name. Textual
inversion embeddings (matched by name in any prompt, so the folder holds exactly the registered ones) and the
request's external VAE are placed the same way, in folders of their own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from atelier.errors import AtelierError, NotFoundError
from atelier.service.registry import ModelRecord, kind_field
from atelier.service.storage import TEMP_PREFIX, ObjectInfo, Storage

logger = logging.getLogger(__name__)

FOLDER_MODEL_MARKER = "model_index.json"
TOKENIZER_SUFFIX = ".tokenizer"
# TAESD preview decoders (diffusers folders taesd/ and taesdxl/), as A1111 keeps them in models/VAE-approx.
PREVIEW_PREFIX = "models/vae-approx"


def folder_version(objects: Iterable[ObjectInfo]) -> str:
    """One version string for a folder of objects: changes whenever any file is added, removed or replaced."""
    digest = hashlib.sha256()
    for item in sorted(objects, key=lambda found: found.key):
        digest.update(f"{item.key}\0{item.version}\n".encode())
    return f"folder:{digest.hexdigest()}"


def upload_folder(storage: Storage, local_dir: Path, key_prefix: str) -> list[ObjectInfo]:
    """Copy every file under ``local_dir`` to ``key_prefix/...``; return the stored objects."""
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            storage.put_file(f"{key_prefix}/{path.relative_to(local_dir).as_posix()}", path)
    return storage.list(key_prefix)


def _link_or_copy(source: Path, destination: Path) -> None:
    """Put ``source``'s content at ``destination`` atomically: a hard link when possible, else a copy."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(
        f"{TEMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{destination.name}"
    )
    temporary.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


class ModelFiles:
    """Local paths of registered models for one worker process."""

    def __init__(self, storage: Storage, cache_dir: Path) -> None:
        self.storage = storage
        self.cache_dir = Path(cache_dir)
        self.lora_dir = self.cache_dir / "loras"
        self.embedding_dir = self.cache_dir / "embeddings"
        self.vae_dir = self.cache_dir / "vae"
        self._lock = threading.Lock()
        # (folder, name) -> sha256 of what was placed there, so an unchanged file is not placed again
        self._placed: dict[tuple[str, str], str] = {}

    def _download_dir(self, record: ModelRecord) -> Path:
        return self.cache_dir / "models" / record.sha256[:32]

    def local_path(self, record: ModelRecord) -> Path:
        """A local path of the model (file or diffusers folder), downloading it first if needed."""
        local = self.storage.local_path(record.storage_key)
        if local is not None:
            if not local.exists():
                raise NotFoundError(
                    f"{record.kind} {record.name!r} is registered but {record.storage_key} is gone",
                    field=kind_field(record.kind),
                )
            return local
        with self._lock:
            return self._download(record)

    def _download(self, record: ModelRecord) -> Path:
        folder = self._download_dir(record)
        target = folder / PurePosixPath(record.storage_key).name
        if target.exists():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=folder))
        try:
            logger.info("downloading %s %s from %s", record.kind, record.name, record.storage_key)
            if record.is_folder:
                self._download_prefix(record.storage_key, staging / target.name)
            else:
                self.storage.get_file(record.storage_key, staging / target.name)
                if _file_sha256(staging / target.name) != record.sha256:
                    raise AtelierError(
                        f"{record.storage_key} changed since it was registered; it will be registered again "
                        "shortly, retry then",
                        field=kind_field(record.kind),
                    )
                # Single-file checkpoints take their tokenizer from a "<name>.tokenizer" folder beside them.
                tokenizer_key = record.storage_key.removesuffix(".safetensors") + TOKENIZER_SUFFIX
                if record.kind == "checkpoint" and self.storage.list(tokenizer_key):
                    self._download_prefix(tokenizer_key, staging / PurePosixPath(tokenizer_key).name)
            for item in staging.iterdir():
                os.replace(item, folder / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _download_prefix(self, prefix: str, destination: Path) -> None:
        objects = self.storage.list(prefix)
        if not objects:
            raise NotFoundError(f"nothing is stored under {prefix}", field="model")
        for item in objects:
            relative = item.key[len(prefix) :].lstrip("/")
            self.storage.get_file(item.key, destination / relative)

    def place_loras(self, records: Iterable[ModelRecord]) -> Path:
        """Make each LoRA available as ``<lora_dir>/<name>.safetensors``; return the folder."""
        return self._place(self.lora_dir, records)

    def place_vae(self, record: ModelRecord) -> Path:
        """Make a VAE available as ``<vae_dir>/<name>.safetensors``; return the folder."""
        return self._place(self.vae_dir, [record])

    def place_embeddings(self, records: Iterable[ModelRecord]) -> Path:
        """Make the embedding folder hold exactly these embeddings (a removed one must stop matching prompts)."""
        wanted = list(records)
        folder = self._place(self.embedding_dir, wanted)
        names = {f"{record.name}.safetensors" for record in wanted}
        with self._lock:
            for path in folder.iterdir():
                if path.name not in names:
                    path.unlink(missing_ok=True)
                    self._placed.pop((str(folder), path.name.removesuffix(".safetensors")), None)
        return folder

    def _place(self, folder: Path, records: Iterable[ModelRecord]) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for record in records:
            destination = folder / f"{record.name}.safetensors"
            with self._lock:
                if self._placed.get((str(folder), record.name)) == record.sha256 and destination.is_file():
                    continue
            source = self.local_path(record)
            with self._lock:
                _link_or_copy(source, destination)
                self._placed[(str(folder), record.name)] = record.sha256
        return folder
