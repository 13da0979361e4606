"""Atelier's own JSON API under ``/api``: asynchronous jobs, uploads, models, progress events.

Jobs are submitted with ``202 Accepted`` and a job id; clients then poll ``GET /api/jobs/{id}``, follow
``GET /api/jobs/{id}/events`` (server-sent events), or give a ``webhook_url`` to be called when it finishes.
Uploads are raw request bodies (``curl -T shoes.zip .../api/training-data/shoes.zip``), so files of any size
stream to disk without a multipart parser.
"""

from __future__ import annotations

import mimetypes
import zipfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from atelier import __version__
from atelier.errors import AtelierError, ConflictError, NotFoundError
from atelier.service.api.common import (
    check_output_access,
    request_caller,
    request_owner,
    require_admin,
    visible_job,
)
from atelier.service.api.uploads import (
    check_upload_filename,
    discard_upload,
    object_version,
    receive_to_file,
    upload_path,
)
from atelier.service.config import StudioConfig
from atelier.service.controlnets import parse_units
from atelier.service.events import job_events, job_label, job_progress
from atelier.service.job_types import CaptionResult, GenerateResult, ProductResult, TrainResult
from atelier.service.jobs import MAX_PRIORITY, Job
from atelier.service.provenance import converted_file, credentials_answer
from atelier.service.security import decode_image
from atelier.service.studio import Studio
from atelier.service.submit import (
    check_train_config,
    check_training_archive,
    prepare_generation,
    read_train_config,
    submit_generation,
    submit_training,
)

MAX_CONFIG_BYTES = 1024 * 1024
_UPLOAD_CHUNK = 1024 * 1024


def get_studio(request: Request) -> Studio:
    return request.app.state.studio


StudioDep = Annotated[Studio, Depends(get_studio)]


class GenerateBody(BaseModel):
    """A generation job. Field names and meanings are A1111's; images are base64 (PNG, JPEG, WebP)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="the prompt, in A1111 syntax, including <lora:name:weight> tags")
    negative_prompt: str | None = None
    model: str | None = Field(
        default=None, description="checkpoint name; default: the studio's current model"
    )
    sampler: str | None = Field(default=None, description="A1111 sampler name, e.g. 'DPM++ 2M'")
    schedule_type: str | None = Field(default=None, description="Automatic, Karras, Exponential, ...")
    steps: int | None = None
    cfg_scale: float | None = None
    seed: int | None = Field(default=None, description="-1 or absent: random (fixed when the job is queued)")
    width: int | None = None
    height: int | None = None
    batch_size: int | None = None
    batch_count: int | None = None
    clip_skip: int | None = None
    init_image: str | None = Field(default=None, description="img2img / inpainting source image (base64)")
    mask: str | None = Field(default=None, description="inpainting mask (base64), white = repaint")
    denoising_strength: float | None = None
    mask_blur: int | None = None
    inpaint_only_masked: bool | None = None
    inpaint_padding: int | None = None
    inpainting_fill: str | int | None = Field(
        default=None, description="fill, original, latent noise, latent nothing (or A1111's index 0-3)"
    )
    mask_invert: bool | None = None
    refiner: str | None = Field(default=None, description="SDXL refiner checkpoint name")
    refiner_prompt: str | None = None
    refiner_negative_prompt: str | None = None
    refiner_switch_at: float | None = None
    tiling: bool | None = Field(default=None, description="seamless: the picture repeats without a seam")
    fast: str | None = Field(
        default=None,
        description="off (default), deepcache or tome: faster drafts with a small quality cost (README 'Speed')",
    )
    vae: str | None = Field(
        default=None,
        description="an external VAE by name (GET /api/models?kind=vae); default: the model's own",
    )
    enable_hr: bool | None = Field(
        default=None, description="hires fix: generate at width x height, upscale, denoise again (txt2img)"
    )
    hr_scale: float | None = Field(default=None, description="hires fix: upscale factor, 1-4 (default 2)")
    hr_resize_x: int | None = Field(default=None, description="hires fix: final width instead of hr_scale")
    hr_resize_y: int | None = Field(default=None, description="hires fix: final height instead of hr_scale")
    hr_upscaler: str | None = Field(
        default=None,
        description="Latent (default), Latent (antialiased/bicubic/nearest...), Lanczos, Nearest",
    )
    hr_second_pass_steps: int | None = Field(default=None, description="0: as many as steps")
    hr_sampler: str | None = None
    hr_prompt: str | None = None
    hr_negative_prompt: str | None = None
    styles: list[str] | None = Field(
        default=None, description="saved prompt styles to apply, in order (GET /api/styles lists them)"
    )
    controlnet_units: list[dict[str, Any]] | None = Field(
        default=None,
        description="ControlNet units: image (base64) or image_key, module, model, weight, guidance_start, "
        "guidance_end, control_mode, resize_mode, processor_res, threshold_a, threshold_b, pixel_perfect",
    )
    priority: int = Field(default=0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="higher runs first")
    webhook_url: str | None = Field(default=None, description="called with the finished job (POST, JSON)")


class TrainBody(BaseModel):
    """A LoRA training job on a zip already in the training-data bucket."""

    model_config = ConfigDict(extra="forbid")

    training_data: str = Field(description="the zip: 'shoes.zip' or 'training-data/shoes.zip'")
    config: dict[str, Any] = Field(default_factory=dict, description="hyper-parameters under kohya's names")
    base: str | None = Field(default=None, description="base checkpoint name; default: the studio's model")
    preset: str | None = Field(default=None, description="sd15-lora or sdxl-dreambooth-lora")
    rights: dict[str, Any] | None = Field(
        default=None,
        description="the images' rights record: owner, depicts_people, consent [{person, reference, date}] "
        "(default: rights.toml in the zip)",
    )
    priority: int = Field(default=-1, ge=-MAX_PRIORITY, le=MAX_PRIORITY)
    webhook_url: str | None = None


def job_links(job: Job) -> dict[str, str]:
    base = f"/api/jobs/{job.id}"
    return {
        "self": base,
        "events": f"{base}/events",
        "results": f"{base}/results",
        "cancel": f"{base}/cancel",
        "retry": f"{base}/retry",
    }


def job_view(studio: Studio, job: Job) -> dict[str, Any]:
    """A job as the native API shows it: progress, queue position, result and links."""
    return {
        **job_progress(studio.store, job),
        "label": job_label(job),
        "priority": job.priority,
        "owner": job.owner,
        "max_attempts": job.max_attempts,
        "result": job.result,
        "links": job_links(job),
    }


def _file_url(key: str) -> str:
    return f"/api/files/{key}"


def _inpainting_fill(value: str | int | None) -> str | None:
    from atelier.engine import INPAINTING_FILL_MODES

    if value is None or isinstance(value, str):
        return value
    if not 0 <= value < len(INPAINTING_FILL_MODES):
        raise AtelierError(
            f"inpainting_fill index must be 0 to {len(INPAINTING_FILL_MODES) - 1}, got {value}",
            field="inpainting_fill",
        )
    return INPAINTING_FILL_MODES[value]


def build_native_router(config: StudioConfig) -> APIRouter:
    """The ``/api`` routes; upload routes get the studio's upload size limit."""
    router = APIRouter(prefix="/api", tags=["studio"])

    @router.get("/health", summary="Liveness probe (no key needed)")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @router.get(
        "/health/ready",
        summary="Readiness probe: 200 once a generation worker has its model loaded, else 503 (no key needed)",
        responses={503: {"description": "no generation worker holds a model yet"}},
    )
    def ready(studio: StudioDep) -> JSONResponse:
        workers = studio.workers.live("generate")
        ready = studio.workers.generation_ready()
        body = {
            "ready": ready,
            "generation_workers": len(workers),
            "models_loaded": sorted({name for worker in workers for name in worker.loaded_models}),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.post("/generate", status_code=202, summary="Queue a txt2img / img2img / inpainting job")
    def generate(body: GenerateBody, request: Request, studio: StudioDep) -> dict[str, Any]:
        limit = studio.config.max_image_pixels
        init_image = (
            decode_image(body.init_image, field="init_image", max_pixels=limit) if body.init_image else None
        )
        mask = decode_image(body.mask, field="mask", max_pixels=limit) if body.mask else None
        values = body.model_dump(
            exclude_none=True,
            exclude={
                "model",
                "refiner",
                "init_image",
                "mask",
                "priority",
                "webhook_url",
                "controlnet_units",
                "styles",
            },
        )
        if "inpainting_fill" in values:
            values["inpainting_fill"] = _inpainting_fill(values["inpainting_fill"])
        controlnet_units = parse_units(body.controlnet_units, storage=studio.storage, max_pixels=limit)
        prepared = prepare_generation(
            studio,
            values,
            model=body.model,
            refiner=body.refiner,
            init_image=init_image,
            mask=mask,
            controlnet_units=controlnet_units,
            styles=body.styles,
        )
        job = submit_generation(
            studio,
            prepared,
            priority=body.priority,
            owner=request_owner(request),
            webhook_url=body.webhook_url,
            origin="api",
        )
        return job_view(studio, job)

    @router.post(
        "/train", status_code=202, summary="Queue LoRA training on a zip in the training-data bucket"
    )
    def train(body: TrainBody, request: Request, studio: StudioDep) -> dict[str, Any]:
        key = body.training_data
        if not key.startswith("training-data/"):
            key = f"training-data/{key}"
        job = submit_training(
            studio,
            key,
            config=body.config,
            base=body.base,
            preset=body.preset,
            priority=body.priority,
            owner=request_owner(request),
            webhook_url=body.webhook_url,
            rights=body.rights,
        )
        return job_view(studio, job)

    @router.get("/whoami", summary="The caller's key name and role (user or admin)")
    def whoami(request: Request, studio: StudioDep) -> dict[str, Any]:
        caller = request_caller(request)
        return {"name": caller.name, "role": caller.role, "keys_required": studio.keys.any_active()}

    @router.get("/webhooks/secret", summary="The secret that signs webhooks (Standard Webhooks; admin key)")
    def webhook_secret(request: Request, studio: StudioDep) -> dict[str, Any]:
        require_admin(request, "reading the webhook secret")
        return {"secret": studio.webhooks.secret(), "scheme": "https://www.standardwebhooks.com"}

    @router.get("/jobs", summary="List jobs, newest first (a user key sees its own)")
    def list_jobs(
        request: Request,
        studio: StudioDep,
        state: str | None = None,
        kind: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        caller = request_caller(request)
        owner = None if caller.is_admin else (caller.name or "")
        jobs = studio.store.list(state=state, kind=kind, limit=limit, offset=offset, owner=owner)
        return {"jobs": [job_view(studio, job) for job in jobs]}

    @router.get("/jobs/{job_id}", summary="One job: state, progress, queue position, result")
    def get_job(job_id: str, request: Request, studio: StudioDep) -> dict[str, Any]:
        return job_view(studio, visible_job(studio.store, request_caller(request), job_id))

    @router.post(
        "/jobs/{job_id}/cancel", summary="Cancel a queued job, or stop a running one at its next step"
    )
    def cancel_job(job_id: str, request: Request, studio: StudioDep) -> dict[str, Any]:
        visible_job(studio.store, request_caller(request), job_id)
        return job_view(studio, studio.store.cancel(job_id))

    @router.post(
        "/jobs/{job_id}/retry",
        status_code=202,
        summary="Queue a failed or canceled job again (a canceled training run resumes where it stopped)",
        responses={409: {"description": "the job is queued, running or succeeded"}},
    )
    def retry_job(job_id: str, request: Request, studio: StudioDep) -> dict[str, Any]:
        visible_job(studio.store, request_caller(request), job_id)
        return job_view(studio, studio.store.retry(job_id))

    @router.get("/jobs/{job_id}/events", summary="Live progress as server-sent events")
    async def job_event_stream(job_id: str, request: Request, studio: StudioDep) -> StreamingResponse:
        await run_in_threadpool(visible_job, studio.store, request_caller(request), job_id)
        return StreamingResponse(
            job_events(studio.store, job_id, is_disconnected=request.is_disconnected),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/jobs/{job_id}/results", summary="A job's images (or trained model) with download URLs")
    def job_results(job_id: str, request: Request, studio: StudioDep) -> dict[str, Any]:
        job = visible_job(studio.store, request_caller(request), job_id)
        out: dict[str, Any] = {"id": job.id, "kind": job.kind, "state": job.state, "error": job.error}
        if job.kind == "generate":
            images = GenerateResult.model_validate(job.result).images if job.state == "succeeded" else []
            out["images"] = [
                {**image.model_dump(), "url": _file_url(image.key), "sidecar_url": _file_url(image.sidecar)}
                for image in images
            ]
        elif job.kind == "caption":
            captioned = CaptionResult.model_validate(job.result) if job.state == "succeeded" else None
            out["caption"] = captioned.caption if captioned else None
        elif job.kind == "product":
            shots = ProductResult.model_validate(job.result) if job.state == "succeeded" else None
            out["images"] = (
                [{**image.model_dump(), "url": _file_url(image.key)} for image in shots.images]
                if shots
                else []
            )
            out["mask_url"] = _file_url(shots.mask_key) if shots and shots.mask_key else None
            out["cutout_url"] = _file_url(shots.cutout_key) if shots and shots.cutout_key else None
            out["segmentation_model"] = shots.segmentation_model if shots else None
        else:
            trained = (
                TrainResult.model_validate(job.result) if job.state == "succeeded" else TrainResult(model={})
            )
            out["model"] = trained.model or None
            out["samples"] = [{"key": key, "url": _file_url(key)} for key in trained.samples]
            # Each saved epoch is a LoRA of its own, named as kohya names the file: "parka-000004".
            out["epochs"] = [
                {"name": PurePosixPath(key).stem, "key": key}
                for key in trained.epoch_files
                if key.startswith("models/")
            ]
            if trained.summary:
                out["summary_url"] = _file_url(trained.summary)
        return out

    @router.get(
        "/files/{key:path}",
        summary="Download a file from the outputs bucket (an image also as JPEG or WebP: ?format=jpeg&quality=90)",
    )
    def get_file(
        key: str,
        request: Request,
        studio: StudioDep,
        output_format: Annotated[
            str | None,
            Query(
                alias="format",
                description="png, jpeg or webp: the image converted, its AI disclosure and infotext kept",
            ),
        ] = None,
        quality: Annotated[int | None, Query(description="jpeg / webp quality, 1-100 (default 90)")] = None,
    ) -> Response:
        if not key.startswith("outputs/"):
            raise NotFoundError("only files in the outputs bucket can be downloaded", field="key")
        check_output_access(studio, request_caller(request), key)
        if output_format is not None or quality is not None:
            data, mime, filename = converted_file(studio, key, output_format or "png", quality)
            return Response(
                data, media_type=mime, headers={"Content-Disposition": f'inline; filename="{filename}"'}
            )
        media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        local = studio.storage.local_path(key)
        if local is not None:
            if not local.is_file():
                raise NotFoundError(f"storage object {key!r} not found", field="key")
            return FileResponse(local, media_type=media_type)
        return Response(studio.storage.get_bytes(key), media_type=media_type)

    @router.get(
        "/credentials/{key:path}",
        summary="An output's AI disclosure (XMP) and its Content Credentials (C2PA), validated",
    )
    def get_credentials(key: str, request: Request, studio: StudioDep) -> dict[str, Any]:
        if not key.startswith("outputs/"):
            raise NotFoundError("only files in the outputs bucket have credentials here", field="key")
        check_output_access(studio, request_caller(request), key)
        return credentials_answer(studio, key)

    @router.put(
        "/training-data/{filename}",
        summary="Upload a training zip (starts training) or its .toml hyper-parameters (raw body)",
        max_body_size=config.max_upload_bytes,
        responses={201: {"description": "stored"}, 202: {"description": "stored, training job queued"}},
    )
    async def upload_training_data(
        filename: str,
        request: Request,
        response: Response,
        studio: StudioDep,
        start: bool = True,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        check_upload_filename(filename, (".zip", ".toml"), "training data")
        key = f"training-data/{filename}"
        # A zip already there may be another person's data behind a queued run; its .toml is copied into the
        # job when it is queued, so replacing that is harmless.
        if filename.lower().endswith(".zip") and await run_in_threadpool(studio.storage.exists, key):
            if not overwrite:
                raise ConflictError(
                    f"{key} already exists; send overwrite=true (admin key) to replace it, or choose another name",
                    field="file",
                )
            require_admin(request, "replacing training data")
        if filename.lower().endswith(".toml"):
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_CONFIG_BYTES:
                    raise AtelierError(f"{filename} is larger than {MAX_CONFIG_BYTES} bytes", field="file")
            await run_in_threadpool(_store_train_config, studio, key, body)
            response.status_code = 201
            return {"key": key}
        staging = upload_path(studio.config, filename)
        try:
            await receive_to_file(request, staging)
            if not zipfile.is_zipfile(staging):
                raise AtelierError(f"{filename} is not a zip archive", field="file")
            # Checked before it is stored: a bad archive is refused here, not hours later in a worker.
            zip_rights = await run_in_threadpool(_check_training_upload, studio, staging, key)
            await run_in_threadpool(studio.storage.put_file, key, staging)
        finally:
            discard_upload(staging)
        if not start:
            await run_in_threadpool(_hold_training_upload, studio, key)
            response.status_code = 201
            return {"key": key, "job": None}
        job = await run_in_threadpool(_start_training_upload, studio, key, request_owner(request), zip_rights)
        response.status_code = 202
        return {"key": key, "job": job_view(studio, job) if job else None}

    @router.get("/uploads", summary="What the bucket watchers did with each uploaded object")
    def uploads(
        studio: StudioDep,
        bucket: str | None = None,
        state: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        return {
            "uploads": [
                entry.to_dict() for entry in studio.ledger.list(bucket=bucket, state=state, limit=limit)
            ]
        }

    return router


def _store_train_config(studio: Studio, key: str, body: bytes) -> None:
    config = read_train_config(body, name=PurePosixPath(key).name)
    check_train_config(studio, config)
    studio.storage.put_bytes(key, body)


def _hold_training_upload(studio: Studio, key: str) -> None:
    """``start=false``: record the upload as handled so the bucket watcher does not train it on its own."""
    version = object_version(studio.storage, key)
    if studio.ledger.claim_object("training-data", key, version, worker_id="api"):
        studio.ledger.mark_done("training-data", key, version)


def _check_training_upload(studio: Studio, staging: Path, key: str) -> Any:
    """The door check of a training zip, with the .toml already uploaded beside it (if any); the zip's
    ``rights.toml`` (None without one)."""
    config_key = key[: -len(".zip")] + ".toml"
    config = {}
    if studio.storage.exists(config_key):
        config = read_train_config(studio.storage.get_bytes(config_key), name=PurePosixPath(config_key).name)
    return check_training_archive(staging, PurePosixPath(key).name, config)


def _start_training_upload(studio: Studio, key: str, owner: str | None, zip_rights: Any) -> Job | None:
    """Queue training for a just-uploaded zip, unless a watcher already took this version of it."""
    version = object_version(studio.storage, key)
    if not studio.ledger.claim_object("training-data", key, version, worker_id="api"):
        return None
    toml_key = key[: -len(".zip")] + ".toml"
    try:
        config = {}
        config_key: str | None = None
        if studio.storage.exists(toml_key):
            config = read_train_config(studio.storage.get_bytes(toml_key), name=PurePosixPath(toml_key).name)
            config_key = toml_key
        job = submit_training(
            studio,
            key,
            config=config,
            config_key=config_key,
            owner=owner,
            archive_checked=True,
            zip_rights=zip_rights,
        )
    except AtelierError as problem:
        studio.ledger.mark_failed("training-data", key, version, str(problem))
        raise
    studio.ledger.mark_done("training-data", key, version)
    return job
