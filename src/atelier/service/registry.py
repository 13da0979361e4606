"""The model registry: which checkpoints and LoRAs the studio can use, by name, shared by every process.

A model file in the ``models/`` bucket becomes usable once it is registered here: the bucket watcher
registers uploads after validating them, a training job registers the LoRA it wrote, and ``atelier serve``
registers the demo model. The API answers "which models exist" from this table (never by scanning the bucket),
and workers find a model's storage key and hash here before downloading it.

Checkpoints and LoRAs have separate name spaces, as in A1111 (``sd_model_checkpoint`` vs ``<lora:name:w>``).
A name is the file name without ``.safetensors`` (or a diffusers folder's name); it never contains a folder,
so a name typed into a prompt or a request cannot reach other files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from atelier.errors import AtelierError, ConflictError, NotFoundError, UnsafeFileError
from atelier.service.database import UtcDateTime, json_row, metadata, migrate, utc_now, write_engine
from atelier.service.licenses import METADATA_KEY as LICENSE_METADATA_KEY
from atelier.service.licenses import (
    license_from_metadata,
    license_from_model_card,
    license_record,
    license_view,
)

MODEL_KINDS = ("checkpoint", "lora", "embedding", "vae")
# The error field and the label of each kind in messages (A1111's names for the fields).
_KIND_FIELDS = {"checkpoint": "model", "lora": "lora", "embedding": "embedding", "vae": "sd_vae"}
_KIND_LABELS = {"checkpoint": "model", "lora": "LoRA", "embedding": "embedding", "vae": "VAE"}
MODEL_SOURCES = ("upload", "training", "demo")
MODEL_SUFFIX = ".safetensors"
MAX_METADATA_KEYS = 64
MAX_METADATA_VALUE = 2000
_ALWAYS_SHOWN = ("modelspec.license", "atelier.rights")
# Characters that would break a `<lora:name:w>` tag or a file name on some system.
_FORBIDDEN_NAME_CHARACTERS = re.compile(r"[<>:\"/\\|?*\x00-\x1f]")


def kind_field(kind: str) -> str:
    """The request field that names a model of this kind, for errors."""
    return _KIND_FIELDS.get(kind, "model")


models_table = sa.Table(
    "registered_models",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("storage_key", sa.String(1024), nullable=False, unique=True),
    sa.Column("is_folder", sa.Boolean, nullable=False),
    sa.Column("architecture", sa.String(32), nullable=False),
    sa.Column("family", sa.String(16), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("lora_hash", sa.String(64)),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("version", sa.String(256), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("label", sa.String(255)),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)


@dataclass(frozen=True)
class ModelFileInfo:
    """What validating a model file (or diffusers folder) found, before it is registered."""

    kind: str
    architecture: str  # checkpoints: sd15, sd15-inpaint, sdxl, sdxl-refiner; LoRAs: their family
    family: str  # "sd15", "sdxl" or (LoRAs only) "unknown"
    sha256: str
    lora_hash: str | None
    size: int
    # A LoRA's safetensors metadata (kohya's ss_* training notes), shown by A1111's /sdapi/v1/loras.
    metadata: dict[str, str] = field(default_factory=dict)
    # The licence the file names (modelspec.license, a model card's license:) and where it says so.
    license: str | None = None
    license_source: str | None = None
    # A LoRA's training rights record (atelier.training.rights), from its metadata.
    rights: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelRecord:
    """One registered checkpoint or LoRA."""

    kind: str
    name: str
    storage_key: str
    is_folder: bool
    architecture: str
    family: str
    sha256: str
    lora_hash: str | None
    size: int
    version: str
    source: str
    label: str | None
    details: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @property
    def short_hash(self) -> str:
        """The 10-character hash A1111 shows for checkpoints."""
        return self.sha256[:10]

    @property
    def display_name(self) -> str:
        """The name with its label, e.g. ``atelier-demo-sd15 (demo: random weights)``."""
        return f"{self.name} ({self.label})" if self.label else self.name

    @property
    def filename(self) -> str:
        """The path inside the models bucket, as A1111 shows checkpoint files."""
        return self.storage_key.removeprefix("models/")

    @property
    def title(self) -> str:
        """A1111's checkpoint title: file name and short hash (the value of ``sd_model_checkpoint``)."""
        shown = f"{self.filename} ({self.label})" if self.label else self.filename
        return f"{shown} [{self.short_hash}]"

    @property
    def license(self) -> dict[str, Any]:
        """The model's licence: name, the use it allows (commercial, non-commercial, unknown) and its source."""
        return license_view(self.details.get("license"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe values, datetimes as ISO 8601 strings, plus the derived title, display name and licence
        (and for a LoRA, the rights record of its training images, or None)."""
        out = json_row(self)
        out["title"] = self.title
        out["display_name"] = self.display_name
        out["short_hash"] = self.short_hash
        out["license"] = self.license
        if self.kind == "lora":
            out["rights"] = self.details.get("rights")
        return out


_RECORD_FIELDS = tuple(item.name for item in fields(ModelRecord))


def _record(row: sa.Row[Any]) -> ModelRecord:
    values = {name: row._mapping[name] for name in _RECORD_FIELDS}
    values["is_folder"] = bool(values["is_folder"])
    return ModelRecord(**values)


def check_model_name(name: object, *, what: str = "model") -> str:
    """Return ``name`` if it can name a model; :class:`UnsafeFileError` otherwise (folders, ``..``, ``:``)."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or name != name.strip()
        or name.startswith(".")
        or len(name.encode("utf-8")) > 255
        or _FORBIDDEN_NAME_CHARACTERS.search(name)
    ):
        raise UnsafeFileError(
            f"invalid {what} name {name!r}: use a plain file name without folders, ':' or '<>'", field=what
        )
    return name


def model_name_for_key(key: str) -> str:
    """The name a model gets from its storage key: the file name without ``.safetensors``, or the folder name.

    A diffusers LoRA (``<name>/pytorch_lora_weights.safetensors``, as diffusers' DreamBooth scripts and
    AutoTrain write it) is named after its folder, as its users name it.
    """
    from atelier.engine import DIFFUSERS_LORA_FILE

    path = PurePosixPath(key)
    if path.name == DIFFUSERS_LORA_FILE and len(path.parts) > 2:
        return path.parent.name
    last = path.name
    return last[: -len(MODEL_SUFFIX)] if last.lower().endswith(MODEL_SUFFIX) else last


def inspect_model(path: str | os.PathLike[str]) -> ModelFileInfo:
    """Validate a local checkpoint or LoRA without loading its weights, and hash it.

    Reads only the safetensors header (architecture detection) and the bytes (sha256). Pickle formats are
    refused before anything is read. Raises :class:`AtelierError` for files that are neither a Stable
    Diffusion checkpoint nor a LoRA.
    """
    from atelier.engine import (
        base_family,
        detect_architecture,
        model_sha256,
        read_safetensors_header,
        refuse_pickle,
        safetensors_kind,
        validate_safetensors,
    )

    path = Path(path)
    refuse_pickle(path)
    if path.is_dir():
        architecture = detect_architecture(path)
        for weights in sorted(path.rglob("*.safetensors")):
            validate_safetensors(weights)
        size = sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
        card_license = license_from_model_card(path)
        return ModelFileInfo(
            "checkpoint",
            architecture,
            base_family(architecture),
            model_sha256(path),
            None,
            size,
            license=card_license,
            license_source="README.md" if card_license else None,
        )
    if path.suffix.lower() != MODEL_SUFFIX:
        raise AtelierError(
            f"{path.name}: only .safetensors files (or diffusers folders) are accepted as models",
            field="file",
        )
    # The same rule as the CLI's model and LoRA folders (engine.models.safetensors_kind).
    try:
        validate_safetensors(path)
        kind = safetensors_kind(path)
    except AtelierError as problem:
        raise AtelierError(str(problem), field="file") from None
    stored = read_safetensors_header(path).get("__metadata__") or {}
    info = _inspect_file(path, kind, stored)
    named = license_from_metadata(stored)
    return replace(info, license=named, license_source=LICENSE_METADATA_KEY if named else None)


def _inspect_file(path: Path, kind: str, stored: Mapping[str, Any]) -> ModelFileInfo:
    """What a single ``.safetensors`` model of ``kind`` is, from its header (``stored``: its metadata)."""
    from atelier.engine import (
        base_family,
        detect_architecture,
        embedding_family,
        inspect_lora,
        lora_sha256,
        model_sha256,
    )

    if kind == "embedding":
        family, vectors, width = embedding_family(path)
        facts = {"vectors": str(vectors), "width": str(width)}  # A1111's /embeddings shows them
        return ModelFileInfo(
            "embedding", family, family, model_sha256(path), None, path.stat().st_size, facts
        )
    if kind == "vae":
        # A VAE file does not say which family it is for; loading it into a checkpoint tells (engine/vae.py).
        return ModelFileInfo("vae", "vae", "unknown", model_sha256(path), None, path.stat().st_size)
    if kind == "lora":
        from atelier.training import rights_from_metadata

        family, _width = inspect_lora(path)
        return ModelFileInfo(
            "lora",
            family,
            family,
            model_sha256(path),
            lora_sha256(path),
            path.stat().st_size,
            _lora_metadata(stored),
            rights=rights_from_metadata(stored),
        )
    try:
        architecture = detect_architecture(path)
    except AtelierError as problem:
        raise AtelierError(str(problem), field="file") from None
    return ModelFileInfo(
        "checkpoint", architecture, base_family(architecture), model_sha256(path), None, path.stat().st_size
    )


def _lora_metadata(stored: Mapping[str, Any]) -> dict[str, str]:
    # Tag frequencies and dataset dumps can be megabytes; the listing keeps what fits in a glance, and always the
    # licence and the rights record, which whoever picks the LoRA must see (however many ss_* keys come first).
    kept = {key: stored[key] for key in _ALWAYS_SHOWN if isinstance(stored.get(key), str)}
    for key, value in stored.items():
        if len(kept) >= MAX_METADATA_KEYS:
            break
        if isinstance(value, str) and len(value) <= MAX_METADATA_VALUE:
            kept.setdefault(str(key), value)
    return kept


def _file_details(info: ModelFileInfo) -> dict[str, Any]:
    """What a model file says about itself, for the record's details: metadata, licence, rights record."""
    details: dict[str, Any] = {}
    if info.metadata:
        details["metadata"] = info.metadata
    if info.license:
        details["license"] = license_record(info.license, info.license_source or "file")
    if info.rights is not None:
        details["rights"] = info.rights
    return details


class ModelRegistry:
    """The registry table on a SQLAlchemy engine from :func:`atelier.service.jobs.open_database`."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self._write_engine = write_engine(engine)
        self._clock = clock
        migrate(engine)

    def register(
        self,
        *,
        name: str,
        storage_key: str,
        info: ModelFileInfo,
        version: str,
        is_folder: bool = False,
        source: str = "upload",
        label: str | None = None,
        details: Mapping[str, Any] | None = None,
        keep_source: bool = False,
    ) -> ModelRecord:
        """Add or update the model stored at ``storage_key``; return the registered record.

        With ``keep_source``, a record of the same key and content keeps its source, label and details (the
        watcher re-reading a file that training or ``serve`` registered does not relabel it as an upload).
        Raises :class:`AtelierError` when another file already holds the name for this kind of model.
        """
        what = _KIND_FIELDS[info.kind]
        check_model_name(name, what=what)
        if source not in MODEL_SOURCES:
            raise AtelierError(f"source must be one of {', '.join(MODEL_SOURCES)}", field="source")
        now = self._clock()
        values: dict[str, Any] = {
            "kind": info.kind,
            "name": name,
            "storage_key": storage_key,
            "is_folder": is_folder,
            "architecture": info.architecture,
            "family": info.family,
            "sha256": info.sha256,
            "lora_hash": info.lora_hash,
            "size": info.size,
            "version": version,
            "source": source,
            "label": label,
            "details": {**_file_details(info), **(details or {})},
            "updated_at": now,
        }
        try:
            with self._write_engine.begin() as conn:
                # One name, one model: a LoRA named like a checkpoint would make "windbreaker" ambiguous, and
                # writing it to the checkpoint's file would lose the checkpoint.
                other_kind = conn.execute(
                    sa.select(models_table.c.kind, models_table.c.storage_key).where(
                        models_table.c.name == name,
                        models_table.c.kind != info.kind,
                        # The same file, replaced in the bucket by a model of the other kind, is re-registered.
                        models_table.c.storage_key != storage_key,
                    )
                ).first()
                if other_kind is not None:
                    raise ConflictError(
                        f"a {other_kind.kind} named {name!r} already exists ({other_kind.storage_key}); names "
                        "are unique across checkpoints and LoRAs: rename the file",
                        field=what,
                    )
                existing = conn.execute(
                    sa.select(models_table).where(models_table.c.storage_key == storage_key)
                ).one_or_none()
                if existing is None:
                    conn.execute(models_table.insert().values(created_at=now, **values))
                else:
                    if keep_source and existing.sha256 == info.sha256:
                        values.update(
                            source=existing.source, label=existing.label, details=existing.details or {}
                        )
                    conn.execute(
                        models_table.update()
                        .where(models_table.c.storage_key == storage_key)
                        .values(**values)
                    )
        except IntegrityError:
            holder = self._find(info.kind, name)
            where = holder.storage_key if holder else "another file"
            raise ConflictError(
                f"a {info.kind} named {name!r} is already registered from {where}; rename the file",
                field=what,
            ) from None
        record = self.by_key(storage_key)
        assert record is not None
        return record

    def holder(self, name: str) -> ModelRecord | None:
        """The model of any kind registered under ``name``: names are unique across checkpoints and LoRAs."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models_table).where(models_table.c.name == name).limit(1)).first()
        return None if row is None else _record(row)

    def _find(self, kind: str, name: str) -> ModelRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(models_table).where(models_table.c.kind == kind, models_table.c.name == name)
            ).one_or_none()
        return None if row is None else _record(row)

    def get(self, name: str, kind: str = "checkpoint") -> ModelRecord:
        """The model of this kind and exact name; :class:`NotFoundError` naming what is available."""
        if kind not in MODEL_KINDS:
            raise AtelierError(f"kind must be one of {', '.join(MODEL_KINDS)}", field="kind")
        what = _KIND_FIELDS[kind]
        if not isinstance(name, str):
            raise AtelierError(f"{what} must be a name (text)", field=what)
        record = self._find(kind, name)
        if record is None:
            available = ", ".join(item.name for item in self.list(kind)) or "none"
            label = _KIND_LABELS[kind]
            raise NotFoundError(f"unknown {label} {name!r}; available: {available}", field=what)
        return record

    def find_checkpoint(self, text: str, *, field: str = "model") -> ModelRecord:
        """A checkpoint by any name A1111 clients use: name, title, file name, short hash or sha256."""
        if not isinstance(text, str) or not text.strip():
            raise AtelierError("model name is empty", field=field)
        wanted = text.strip()
        checkpoints = self.list("checkpoint")
        for record in checkpoints:
            if wanted in (
                record.name,
                record.title,
                record.filename,
                record.storage_key,
                record.display_name,
                record.short_hash,
                record.sha256,
            ):
                return record
        # "name [hash]" as older A1111 versions wrote it, or a title whose label changed.
        bare = re.sub(r"\s*\[[0-9a-f]{8,64}\]$", "", wanted).removesuffix(MODEL_SUFFIX)
        for record in checkpoints:
            if bare in (record.name, record.filename.removesuffix(MODEL_SUFFIX), record.display_name):
                return record
        available = ", ".join(record.name for record in checkpoints) or "none"
        hint = ""
        if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", wanted):
            hint = (
                " (this looks like a Hugging Face id: Atelier never downloads models; upload the model's "
                ".safetensors file to the models bucket)"
            )
        raise NotFoundError(f"unknown model {wanted!r}; available: {available}{hint}", field=field)

    def by_key(self, storage_key: str) -> ModelRecord | None:
        """The model registered from this storage key, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(models_table).where(models_table.c.storage_key == storage_key)
            ).one_or_none()
        return None if row is None else _record(row)

    def list(self, kind: str | None = None) -> list[ModelRecord]:
        """Registered models (of one kind if given), by kind then name."""
        query = sa.select(models_table).order_by(models_table.c.kind, models_table.c.name)
        if kind is not None:
            if kind not in MODEL_KINDS:
                raise AtelierError(f"kind must be one of {', '.join(MODEL_KINDS)}", field="kind")
            query = query.where(models_table.c.kind == kind)
        with self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query).all()]

    def update_details(self, kind: str, name: str, changes: Mapping[str, Any]) -> ModelRecord:
        """Set some keys of a model's details (an admin's licence record), keeping the others."""
        record = self.get(name, kind)
        with self._write_engine.begin() as conn:
            row = conn.execute(
                sa.select(models_table.c.details).where(models_table.c.storage_key == record.storage_key)
            ).one_or_none()
            if row is None:
                raise NotFoundError(
                    f"{_KIND_LABELS[kind]} {name!r} was just removed", field=_KIND_FIELDS[kind]
                )
            conn.execute(
                models_table.update()
                .where(models_table.c.storage_key == record.storage_key)
                .values(details={**(row.details or {}), **changes}, updated_at=self._clock())
            )
        return self.get(name, kind)

    def remove(self, storage_key: str) -> bool:
        """Forget the model registered from ``storage_key``; False if none was."""
        with self.engine.begin() as conn:
            return (
                conn.execute(models_table.delete().where(models_table.c.storage_key == storage_key)).rowcount
                == 1
            )

    def default_checkpoint(self, preferred: str | None = None) -> ModelRecord:
        """The checkpoint to use when a request names none.

        ``preferred`` (the ``sd_model_checkpoint`` option) wins if it is still registered; then the first real
        checkpoint by name; the demo model only when nothing else exists.
        """
        if preferred:
            try:
                return self.find_checkpoint(preferred)
            except NotFoundError:
                pass
        checkpoints = [record for record in self.list("checkpoint") if record.architecture != "sdxl-refiner"]
        real = [record for record in checkpoints if record.source != "demo"]
        if real:
            return real[0]
        if checkpoints:
            return checkpoints[0]
        raise NotFoundError(
            "no model is registered yet; upload a .safetensors checkpoint to the models bucket", field="model"
        )


settings_table = sa.Table(
    "studio_settings",
    metadata,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)


class StudioSettings:
    """Studio-wide options (A1111's ``/sdapi/v1/options``), kept in the database so every API process agrees."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self._clock = clock
        migrate(engine)

    def all(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(settings_table.c.key, settings_table.c.value)).all()
        return {key: value for key, value in rows}

    def get(self, key: str, default: Any = None) -> Any:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(settings_table.c.value).where(settings_table.c.key == key)
            ).one_or_none()
        return default if value is None else value[0]

    def insert_if_missing(self, key: str, value: Any) -> None:
        """Set ``key`` unless it is set: of two processes racing to make a value, the first one wins."""
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        with self.engine.begin() as conn:
            conn.execute(
                insert(settings_table)
                .values(key=key, value=value, updated_at=self._clock())
                .on_conflict_do_nothing(index_elements=[settings_table.c.key])
            )

    def update(self, values: Mapping[str, Any]) -> None:
        """Set several options in one transaction."""
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        now = self._clock()
        with self.engine.begin() as conn:
            for key, value in values.items():
                if not isinstance(key, str) or not 1 <= len(key) <= 128:
                    raise AtelierError("option names must be text of 1 to 128 characters", field="options")
                statement = insert(settings_table).values(key=key, value=value, updated_at=now)
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=[settings_table.c.key],
                        set_={"value": statement.excluded.value, "updated_at": now},
                    )
                )
