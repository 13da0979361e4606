"""The models routes of ``/api``: the registered checkpoints, LoRAs, embeddings and VAEs, uploads and deletion.

An upload is validated (architecture from the header, pickles refused), stored and registered at once, so it is
usable by name as soon as the request returns; the ledger entry keeps the bucket watcher from registering it a
second time. A model's licence is recorded here from the file or the uploader (service/licenses.py); an admin
changes it with ``PATCH /api/models/{name}`` (api/provenance.py).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from atelier.errors import AtelierError, ConflictError
from atelier.service.api.common import request_caller, require_admin
from atelier.service.api.native import StudioDep
from atelier.service.api.uploads import (
    check_upload_filename,
    discard_upload,
    object_version,
    receive_to_file,
    upload_path,
)
from atelier.service.config import StudioConfig
from atelier.service.licenses import check_license_text, license_record
from atelier.service.registry import inspect_model, model_name_for_key
from atelier.service.studio import Studio


def build_models_router(config: StudioConfig) -> APIRouter:
    """``/api/models`` routes; the upload route gets the studio's upload size limit."""
    router = APIRouter(prefix="/api", tags=["models"])

    @router.get("/models", summary="Registered checkpoints and LoRAs")
    def list_models(studio: StudioDep, kind: str | None = None) -> dict[str, Any]:
        return {"models": [record.to_dict() for record in studio.registry.list(kind)]}

    @router.put(
        "/models/{filename}",
        status_code=201,
        summary="Upload a checkpoint or LoRA (.safetensors, raw body); usable by name at once",
        max_body_size=config.max_upload_bytes,
    )
    async def upload_model(
        filename: str,
        request: Request,
        studio: StudioDep,
        overwrite: bool = False,
        license: Annotated[
            str | None,
            Query(description="the model's licence (e.g. creativeml-openrail-m), for files that name none"),
        ] = None,
    ) -> dict[str, Any]:
        check_upload_filename(filename, (".safetensors",), "a model")
        if license is not None:
            license = check_license_text(license)
        caller = request_caller(request)
        if overwrite:
            require_admin(request, "replacing a model")
        staging = upload_path(studio.config, filename)
        try:
            await receive_to_file(request, staging)
            record = await run_in_threadpool(
                _register_upload,
                studio,
                staging,
                f"models/{filename}",
                overwrite=overwrite and caller.is_admin,
                license=license,
                declared_by=caller.name,
                admin=caller.is_admin,
            )
        finally:
            discard_upload(staging)
        return record

    @router.delete("/models/{name}", summary="Delete a checkpoint or LoRA and its file (admin key)")
    def delete_model(
        name: str, request: Request, studio: StudioDep, kind: str = "checkpoint"
    ) -> dict[str, Any]:
        require_admin(request, "deleting a model")
        record = studio.registry.get(name, kind)
        keys = [record.storage_key]
        if record.is_folder:
            keys = [item.key for item in studio.storage.list(record.storage_key)]
        for key in keys:
            studio.storage.delete(key)
        studio.registry.remove(record.storage_key)
        return {"deleted": record.to_dict()}

    return router


def _register_upload(
    studio: Studio,
    staging: Path,
    key: str,
    *,
    overwrite: bool,
    license: str | None = None,
    declared_by: str | None = None,
    admin: bool = False,
) -> dict[str, Any]:
    """Validate an uploaded model, store it and register it; the ledger entry keeps the watcher off it.

    Nothing is replaced by accident: a name held by a model of the other kind is refused (names are unique
    across kinds), and replacing a model of the same kind (or any file already at that place) needs
    ``overwrite`` (an admin key). ``license`` is the uploader's word for a file that names no licence; a file
    that names one keeps it unless an admin uploads it (service/licenses.py).
    """
    info = inspect_model(staging)
    name = model_name_for_key(key)
    details = None
    if license is not None and (info.license or "").lower() != license.lower():
        if info.license and not admin:
            raise AtelierError(
                f"{PurePosixPath(key).name} names its licence itself ({info.license}); only an admin can record "
                f"another (PATCH /api/models/{name})",
                field="license",
            )
        details = {
            "license": license_record(license, "admin" if admin else "uploader", declared_by=declared_by)
        }
    holder = studio.registry.holder(name)
    if holder is not None and holder.kind != info.kind:
        raise ConflictError(
            f"a {holder.kind} named {name!r} already exists; names are unique across checkpoints and LoRAs: "
            "rename the file",
            field="file",
        )
    if holder is not None and holder.storage_key != key:
        raise ConflictError(
            f"a {info.kind} named {name!r} is already registered from {holder.filename}; rename the file",
            field="file",
        )
    if (holder is not None or studio.storage.exists(key)) and not overwrite:
        raise ConflictError(
            f"a {info.kind} named {name!r} already exists; send overwrite=true (admin key) to replace it",
            field="file",
        )
    studio.storage.put_file(key, staging)
    version = object_version(studio.storage, key)
    claimed = studio.ledger.claim_object("models", key, version, worker_id="api")
    record = studio.registry.register(
        name=name, storage_key=key, info=info, version=version, source="upload", details=details
    )
    if claimed:
        studio.ledger.mark_done("models", key, version)
    return record.to_dict()
