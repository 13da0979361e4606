"""Routes of the provenance and rights records: a model's licence (set by an admin) and an output's audit trail.

``PATCH /api/models/{name}`` records the licence of a checkpoint, LoRA, embedding, VAE or ControlNet, and when the
licence table cannot tell (service/licenses.py), the use it allows. ``GET /api/provenance/{key}`` answers which
models, LoRAs (with their datasets' rights records), inputs and settings made an output, and who asked for it
(service/audit.py).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from atelier.errors import AtelierError, NotFoundError
from atelier.service.api.common import check_output_access, request_caller, require_admin
from atelier.service.audit import provenance_answer
from atelier.service.commercial import controlnet_license, controlnet_license_key, controlnet_name
from atelier.service.licenses import check_license_text, license_record
from atelier.service.registry import MODEL_KINDS
from atelier.service.studio import Studio

LICENSE_KINDS = (*MODEL_KINDS, "controlnet")


def get_studio(request: Request) -> Studio:
    return request.app.state.studio


StudioDep = Annotated[Studio, Depends(get_studio)]


class LicenseBody(BaseModel):
    """An admin's licence record for a model."""

    model_config = ConfigDict(extra="forbid")

    license: str = Field(description="the licence's name or link, e.g. creativeml-openrail-m, cc-by-nc-4.0")
    use: Literal["commercial", "non-commercial", "unknown"] | None = Field(
        default=None,
        description="what the licence allows here, when the licence table cannot tell (a conditional licence, "
        "a separate agreement with the model's maker); default: the table's reading of the licence",
    )
    note: str | None = Field(default=None, max_length=500, description="why, e.g. the agreement's reference")


def build_provenance_router() -> APIRouter:
    router = APIRouter(prefix="/api", tags=["provenance"])

    @router.patch(
        "/models/{name}",
        summary="Record a model's licence (admin key): checkpoint, LoRA, embedding, VAE or ControlNet",
    )
    def set_license(
        name: str,
        body: LicenseBody,
        request: Request,
        studio: StudioDep,
        kind: Annotated[str, Query(description=", ".join(LICENSE_KINDS))] = "checkpoint",
    ) -> dict[str, Any]:
        require_admin(request, "recording a model's licence")
        if kind not in LICENSE_KINDS:
            raise AtelierError(f"kind must be one of {', '.join(LICENSE_KINDS)}", field="kind")
        record = license_record(
            check_license_text(body.license),
            "admin",
            use=body.use,
            note=body.note.strip() if body.note else None,
            declared_by=request_caller(request).name,
        )
        if kind == "controlnet":
            return _set_controlnet_license(studio, name, record)
        return studio.registry.update_details(kind, name, {"license": record}).to_dict()

    @router.get(
        "/provenance/{key:path}",
        summary="An output's audit trail: models, LoRAs with their datasets' rights, inputs, settings, who asked",
    )
    def get_provenance(key: str, request: Request, studio: StudioDep) -> dict[str, Any]:
        if not key.startswith("outputs/"):
            raise NotFoundError("only files in the outputs bucket have an audit trail here", field="key")
        check_output_access(studio, request_caller(request), key)
        return provenance_answer(studio, key)

    return router


def _set_controlnet_license(studio: Studio, name: str, record: dict[str, Any]) -> dict[str, Any]:
    """ControlNets are not registered: the record is stored beside the ControlNet (service/commercial.py)."""
    from atelier.service.controlnets import controlnet_library

    library = controlnet_library(studio.storage, studio.config.cache_dir)
    canonical = controlnet_name(library.resolve(name, field="name"))
    studio.storage.put_bytes(controlnet_license_key(canonical), json.dumps(record, indent=2).encode("utf-8"))
    # Read back through the library, which refreshes this machine's mirror of an S3 bucket.
    path = controlnet_library(studio.storage, studio.config.cache_dir).resolve(canonical, field="name")
    return {"kind": "controlnet", "name": canonical, "license": controlnet_license(path)}
