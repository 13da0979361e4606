"""Licences at work: the commercial-use gate at submission, and the licences written into each output's record.

A studio with ``commercial_use`` set (``ATELIER_COMMERCIAL_USE=1``) makes pictures for commercial use, so every
model a request names (checkpoint, refiner, VAE, LoRAs and embeddings in its prompts, ControlNets) and every
training base must have a licence that allows it (:mod:`atelier.service.licenses`). Anything else is refused when
the request arrives, with HTTP 403 naming the request field, the model and its licence. A studio without the
setting refuses nothing: its outputs still record the licence of everything that made them.

ControlNets are not registered (they are read from ``models/controlnet/``): their licence is an admin's record in
``models/controlnet/<name>.license.json`` (written by ``PATCH /api/models/<name>?kind=controlnet``), else the
file's ``modelspec.license`` or the folder's model card, read when they are used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from atelier.errors import AtelierError, ForbiddenError
from atelier.service.licenses import (
    COMMERCIAL,
    license_from_metadata,
    license_from_model_card,
    license_record,
    license_view,
)
from atelier.service.registry import ModelRecord

CONTROLNET_LICENSE_SUFFIX = ".license.json"
_LABELS = {"checkpoint": "model", "lora": "LoRA", "embedding": "embedding", "vae": "VAE"}


def refuse_unless_commercial(name: str, label: str, view: Mapping[str, Any], field: str) -> None:
    """:class:`ForbiddenError` (403) naming the model and its licence unless the licence allows commercial use."""
    if view["use"] == COMMERCIAL:
        return
    licence = view["name"] or "none recorded"
    raise ForbiddenError(
        f"{label} {name!r} cannot be used for commercial work: its licence is {licence} ({view['use']}). This "
        "studio is set for commercial use (commercial_use); pick another model, or an admin records a licence "
        f"that allows it (PATCH /api/models/{name})",
        field=field,
    )


def check_model(config: Any, record: ModelRecord, field: str) -> None:
    """Refuse ``record`` when the studio does commercial work and its licence does not allow it."""
    if config.commercial_use:
        view = license_view(record.details.get("license"))
        refuse_unless_commercial(record.name, _LABELS.get(record.kind, "model"), view, field)


def embeddings_in(texts: Sequence[str], embeddings: Iterable[ModelRecord]) -> list[ModelRecord]:
    """The registered embeddings a prompt uses: their names as words, case-insensitive (as the engine finds them)."""
    joined = "\n".join(texts).lower()
    return [
        record
        for record in embeddings
        if re.search(rf"(?<![0-9a-z]){re.escape(record.name.lower())}(?![0-9a-z])", joined)
    ]


def check_generation(
    studio: Any, prepared: Any, texts: Sequence[str], controlnet_paths: Sequence[Path]
) -> None:
    """The commercial gate for a checked generation request (``submit.prepare_generation`` calls it).

    ``texts`` are the request's prompts (embeddings are used by name in them); ``controlnet_paths`` the files of
    its ControlNet units, in unit order.
    """
    if not studio.config.commercial_use:
        return
    check_model(studio.config, prepared.model, "model")
    if prepared.refiner is not None:
        check_model(studio.config, prepared.refiner, "refiner")
    if prepared.params.get("vae"):
        check_model(studio.config, studio.registry.get(prepared.params["vae"], "vae"), "vae")
    for record in prepared.loras:
        check_model(studio.config, record, "lora")
    for record in embeddings_in(texts, studio.registry.list("embedding")):
        check_model(studio.config, record, "embedding")
    for index, path in enumerate(controlnet_paths):
        refuse_unless_commercial(
            controlnet_name(path), "ControlNet", controlnet_license(path), f"controlnet_units[{index}].model"
        )


def controlnet_name(path: Path) -> str:
    """A ControlNet's name, as the engine names it: the file's stem, or the folder's name."""
    return path.stem if path.is_file() else path.name


def controlnet_license(path: Path) -> dict[str, Any]:
    """The licence view of the ControlNet at ``path`` (a file or diffusers folder in ``models/controlnet/``)."""
    record_file = path.parent / f"{controlnet_name(path)}{CONTROLNET_LICENSE_SUFFIX}"
    if record_file.is_file():
        try:
            stored = json.loads(record_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, dict):
            return license_view(stored)
    if path.is_dir():
        name = license_from_model_card(path)
        return license_view(license_record(name, "README.md") if name else None)
    from atelier.engine import read_safetensors_header

    try:
        metadata = read_safetensors_header(path).get("__metadata__") or {}
    except AtelierError:
        metadata = {}
    name = license_from_metadata(metadata)
    return license_view(license_record(name, "modelspec.license") if name else None)


def controlnet_license_key(name: str) -> str:
    """Where an admin's licence record of the ControlNet ``name`` is stored."""
    return f"models/controlnet/{name}{CONTROLNET_LICENSE_SUFFIX}"


def licensed_generation(
    generation: Mapping[str, Any],
    *,
    checkpoint: ModelRecord,
    refiner: ModelRecord | None,
    vae: ModelRecord | None,
    loras: Mapping[str, ModelRecord],
    embeddings: Mapping[str, ModelRecord],
    controlnets: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """The engine's generation record with each model's licence (name and the use it allows) added.

    The engine records what made a picture from the files; the licences are the studio's records (an uploader's
    or admin's word counts), so they are added here, before the record is signed and stored in the sidecar.
    """

    def licence(view: Mapping[str, Any]) -> dict[str, Any]:
        return {"name": view["name"], "use": view["use"]}

    def of(record: ModelRecord) -> dict[str, Any]:
        return licence(license_view(record.details.get("license")))

    out = {key: value for key, value in generation.items()}
    for role, record in (("checkpoint", checkpoint), ("refiner", refiner), ("vae", vae)):
        if record is not None and isinstance(out.get(role), Mapping):
            out[role] = {**out[role], "license": of(record)}
    for role, records in (("loras", loras), ("embeddings", embeddings)):
        out[role] = [
            {**entry, "license": of(records[entry["name"]])} if entry.get("name") in records else dict(entry)
            for entry in out.get(role) or []
        ]
        if not out[role]:
            del out[role]
    if out.get("controlnets"):
        out["controlnets"] = [
            {**entry, "license": licence(controlnets[entry["name"]])}
            if entry.get("name") in controlnets
            else entry
            for entry in out["controlnets"]
        ]
    return out
