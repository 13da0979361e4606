"""The audit trail of an output: which models, LoRAs (with their datasets' rights), inputs and settings made a
picture, and who asked for it.

One answer, built from everything the picture and the studio keep about it:

- the **sidecar** (``<name>.json`` beside a stored output): the job, its owner (the name of the API key that
  queued it), the settings, the input files, and the generation record with each model's licence;
- the **embedded data**: the XMP digital source type, the Content Credentials (validated; their
  ``com.atelier.generation`` assertion is the generation record signed into the file) and A1111's infotext;
- in the studio, the **job** (its owner is authoritative: the sidecar is a copy) and the **registry** (a LoRA's
  full rights record, people's names included, which the picture itself does not carry).

``GET /api/provenance/{key}`` answers with :func:`provenance_answer`; ``atelier provenance FILE`` with
:func:`audit_record` on a file and the sidecar beside it. Neither changes anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from atelier.errors import AtelierError, NotFoundError

# The generation record's single models and lists of models, by role.
_SINGLE_ROLES = ("checkpoint", "refiner", "vae")
_LIST_ROLES = ("embeddings", "controlnets")


def audit_record(
    data: bytes,
    *,
    sidecar: Mapping[str, Any] | None,
    credentials: Mapping[str, Any] | None,
    job: Mapping[str, Any] | None = None,
    lora_rights: Callable[[Mapping[str, Any]], dict[str, Any] | None] | None = None,
    max_pixels: int | None = None,
) -> dict[str, Any]:
    """The audit answer for a picture's bytes.

    ``sidecar``: its stored JSON sidecar; ``credentials``: ``Credentials.summary()`` of its C2PA manifest;
    ``job``: the studio's job (id, kind, owner, origin, times); ``lora_rights``: the registry's rights record of a
    LoRA entry of the generation record (None when the registry no longer holds that file).
    """
    from atelier.engine import declared_source_type, parse_infotext

    sidecar = dict(sidecar or {})
    infotext = _infotext(data, max_pixels)
    source_type = declared_source_type(data)
    generation, generation_from = _generation(sidecar, credentials)
    found_in = [
        name
        for name, present in (
            ("sidecar", bool(sidecar)),
            ("xmp", source_type is not None),
            ("c2pa", credentials is not None),
            ("infotext", infotext is not None),
        )
        if present
    ]
    settings = sidecar.get("params")
    if settings is None and infotext:
        settings = parse_infotext(infotext)
    owner = job.get("owner") if job else sidecar.get("owner")
    return {
        "asked_by": owner,
        "job": dict(job) if job else _job_from_sidecar(sidecar),
        "digital_source_type": source_type,
        "credentials": _credentials_view(credentials),
        "models": {role: generation[role] for role in (*_SINGLE_ROLES, *_LIST_ROLES) if generation.get(role)},
        "loras": [_lora(entry, lora_rights) for entry in generation.get("loras") or []],
        "inputs": _inputs(sidecar, credentials),
        "settings": settings,
        "infotext": infotext,
        "generation_from": generation_from,
        "found_in": found_in,
    }


def _infotext(data: bytes, max_pixels: int | None) -> str | None:
    from atelier.engine import read_infotext
    from atelier.images import DEFAULT_MAX_PIXELS, open_image

    try:
        with open_image(data, field="file", max_pixels=max_pixels or DEFAULT_MAX_PIXELS) as image:
            return read_infotext(image)
    except AtelierError:
        return None  # a video, or not a picture Pillow reads: no infotext to show


def _generation(
    sidecar: Mapping[str, Any], credentials: Mapping[str, Any] | None
) -> tuple[dict[str, Any], str | None]:
    """The generation record: the sidecar's (the studio's own copy, licences included), else the one signed into
    the file."""
    stored = (sidecar.get("provenance") or {}).get("generation")
    if isinstance(stored, Mapping) and stored:
        return dict(stored), "sidecar"
    signed = (credentials or {}).get("generation")
    if isinstance(signed, Mapping) and signed:
        return dict(signed), "c2pa"
    return {}, None


def _lora(
    entry: Mapping[str, Any], lora_rights: Callable[[Mapping[str, Any]], dict[str, Any] | None] | None
) -> dict[str, Any]:
    """A LoRA of the record with its dataset's rights: the registry's full record, else what the picture carries."""
    training = entry.get("training") or {}
    rights = lora_rights(entry) if lora_rights else None
    return {
        **{key: value for key, value in entry.items() if key != "training"},
        "training": {key: value for key, value in training.items() if key != "rights"},
        "rights": rights if rights is not None else training.get("rights"),
        "rights_from": "registry" if rights is not None else ("file" if training.get("rights") else None),
    }


def _inputs(sidecar: Mapping[str, Any], credentials: Mapping[str, Any] | None) -> dict[str, Any]:
    inputs = dict(sidecar.get("inputs") or {})
    ingredients = (credentials or {}).get("ingredients") or []
    if ingredients:
        inputs["ingredients"] = [
            {"title": item.get("title"), "relationship": item.get("relationship")} for item in ingredients
        ]
    return inputs


def _credentials_view(credentials: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if credentials is None:
        return None
    keys = ("state", "valid", "trusted", "signer", "actions", "digital_source_type", "failures")
    return {key: credentials.get(key) for key in keys}


def _job_from_sidecar(sidecar: Mapping[str, Any]) -> dict[str, Any] | None:
    if not sidecar.get("job_id"):
        return None
    return {
        "id": sidecar["job_id"],
        "owner": sidecar.get("owner"),
        "origin": sidecar.get("origin"),
        "created_at": sidecar.get("created_at"),
    }


# -- in the studio ------------------------------------------------------------------------------------------------


def sidecar_key(key: str) -> str:
    """Where the sidecar of a stored output is: the same name with ``.json``."""
    stem = key.rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else key
    return f"{stem}.json"


def provenance_answer(studio: Any, key: str) -> dict[str, Any]:
    """``GET /api/provenance/{key}``: the audit answer for a stored output (the caller's access already checked)."""
    from atelier.engine import read_credentials
    from atelier.service.provenance import trust_anchors

    if not studio.storage.exists(key):
        raise NotFoundError(f"storage object {key!r} not found", field="key")
    data = studio.storage.get_bytes(key)
    sidecar = _stored_sidecar(studio, key)
    credentials = read_credentials(data, trust_anchors=trust_anchors(studio.config))
    answer = audit_record(
        data,
        sidecar=sidecar,
        credentials=credentials.summary() if credentials is not None else None,
        job=_job(studio, key),
        lora_rights=lambda entry: _registry_rights(studio, entry),
        max_pixels=studio.config.max_output_pixels,
    )
    return {"key": key, **answer}


def _stored_sidecar(studio: Any, key: str) -> dict[str, Any] | None:
    other = sidecar_key(key)
    if other == key or not studio.storage.exists(other):
        return None
    try:
        stored = json.loads(studio.storage.get_bytes(other))
    except ValueError:
        return None
    return stored if isinstance(stored, dict) else None


def _job(studio: Any, key: str) -> dict[str, Any] | None:
    """The job that made ``outputs/<job id>/...`` (ads, ``outputs/ads/<id>/``, have their owner in ad.json)."""
    parts = key.split("/")
    if len(parts) < 3:
        return None
    if parts[1] == "ads":
        try:
            ad = json.loads(studio.storage.get_bytes(f"outputs/ads/{parts[2]}/ad.json"))
        except (AtelierError, ValueError):
            return None
        return {"id": parts[2], "kind": "ad", "owner": ad.get("owner")} if isinstance(ad, dict) else None
    try:
        job = studio.store.get(parts[1])
    except NotFoundError:
        return None
    return {
        "id": job.id,
        "kind": job.kind,
        "owner": job.owner,
        "origin": (job.payload or {}).get("origin"),
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def _registry_rights(studio: Any, entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """The registry's rights record of the LoRA a generation used, if the registry still holds that very file."""
    name = entry.get("name")
    if not isinstance(name, str):
        return None
    try:
        record = studio.registry.get(name, "lora")
    except AtelierError:
        return None
    if entry.get("sha256") not in (record.sha256, record.lora_hash):
        return None
    rights = record.details.get("rights")
    return rights if isinstance(rights, dict) else None
