"""The AUTOMATIC1111-compatible API under ``/sdapi/v1``, so tools written for A1111 work unmodified.

Request and response shapes follow A1111's ``modules/api/models.py`` and ``modules/api/api.py``:
``txt2img`` / ``img2img`` answer ``{images: [base64 PNG with infotext], parameters: {...}, info: "<json>"}``
where ``info`` carries ``all_seeds``, ``infotexts`` and the rest of A1111's ``Processed.js()``.

The difference is underneath: A1111 runs one request at a time behind a lock and other callers wait on it (or
time out). Here each request becomes a job in the durable queue and the handler waits for it, so concurrent
requests are queued, spread over all workers, and survive a worker crash.

Options that A1111 applies but Atelier cannot (face restoration, variation seeds, scripts other than the X/Y/Z
plot) are refused with 422 naming the field rather than silently ignored; docs/a1111.md lists them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from atelier import __version__
from atelier.errors import AtelierError, JobFailedError, JobTimeoutError, NotFoundError
from atelier.service.api.a1111_requests import (
    FIXED_OPTIONS,
    NO_EXTERNAL_VAE,
    A1111Response,
    Img2ImgRequest,
    PngInfoRequest,
    ProcessingRequest,
    Txt2ImgRequest,
    current_model,
    prepare_img2img,
    prepare_txt2img,
    studio_options,
    translate_error,
)
from atelier.service.api.a1111_sd_upscale import SCRIPT_NAME as SD_UPSCALE
from atelier.service.api.a1111_sd_upscale import run_sd_upscale
from atelier.service.api.a1111_xyz import SCRIPT_NAME, run_xyz
from atelier.service.api.common import request_caller, request_owner, require_admin
from atelier.service.config import is_loopback_host
from atelier.service.job_types import GenerateResult
from atelier.service.jobs import MAX_PRIORITY, Job
from atelier.service.registry import ModelRecord
from atelier.service.security import decode_image
from atelier.service.studio import Studio
from atelier.service.submit import PreparedGeneration, submit_generation
from atelier.service.worker_board import request_checkpoint_action

# A1111's scheduler names (modules/sd_schedulers.py) for the schedule types Atelier offers.
_SCHEDULER_RHO = {"Karras": 7.0}


def get_studio(request: Request) -> Studio:
    return request.app.state.studio


StudioDep = Annotated[Studio, Depends(get_studio)]


def _info(
    job: Job,
    prepared: PreparedGeneration,
    body: ProcessingRequest,
    *,
    infotexts: list[str] | None = None,
    seeds: list[int] | None = None,
) -> str:
    """A1111's ``Processed.js()`` for a finished job (``infotexts`` and ``seeds``: of a script's images)."""
    result = GenerateResult.model_validate(job.result) if job.state == "succeeded" else None
    if seeds is None:
        seeds = result.seeds if result else []
    if infotexts is None:
        infotexts = result.infotexts if result else []
    params = prepared.params
    count = len(seeds)
    info = {
        "prompt": body.prompt,
        "all_prompts": [body.prompt] * count,
        "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [body.negative_prompt] * count,
        "seed": seeds[0] if seeds else params["seed"],
        "all_seeds": seeds,
        "subseed": body.subseed,
        "all_subseeds": [body.subseed] * count,
        "subseed_strength": body.subseed_strength,
        "width": params["width"],
        "height": params["height"],
        "sampler_name": params["sampler"],
        "cfg_scale": params["cfg_scale"],
        "steps": params["steps"],
        "batch_size": params["batch_size"],
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": prepared.model.display_name,
        "sd_model_hash": prepared.model.short_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": body.seed_resize_from_w,
        "seed_resize_from_h": body.seed_resize_from_h,
        "denoising_strength": params.get("denoising_strength") if prepared.mode != "txt2img" else None,
        "extra_generation_params": {"Schedule type": params["schedule_type"]},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": body.styles or [],
        "job_timestamp": job.created_at.astimezone(UTC).strftime("%Y%m%d%H%M%S"),
        "clip_skip": params["clip_skip"],
        "is_using_inpainting_conditioning": prepared.model.architecture == "sd15-inpaint",
        "version": f"atelier {__version__}",
        "job_id": job.id,
    }
    return json.dumps(info)


def _priority(request: Request) -> int:
    """``X-Atelier-Priority``: A1111's API has no priority field, so batch tools (``atelier batch``) say it here.

    0 (interactive) when absent; higher runs first, as in the native API.
    """
    text = request.headers.get("x-atelier-priority")
    if text is None:
        return 0
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise AtelierError(
            f"X-Atelier-Priority must be a whole number from {-MAX_PRIORITY} to {MAX_PRIORITY}, got {text!r}",
            field="X-Atelier-Priority",
        )
    return value


async def _run(
    request: Request, body: ProcessingRequest, prepare: Any, *, include_images: bool = False
) -> dict[str, Any]:
    studio: Studio = request.app.state.studio
    script = (body.script_name or "").strip().lower()
    if script == SCRIPT_NAME or (script == SD_UPSCALE and isinstance(body, Img2ImgRequest)):
        priority = _priority(request)

        def submit(prepared: PreparedGeneration) -> Job:
            return submit_generation(
                studio, prepared, owner=request_owner(request), origin="a1111", priority=priority
            )

        run_script = run_xyz if script == SCRIPT_NAME else run_sd_upscale
        try:
            return await run_script(request, body, prepare, submit, _info)
        except AtelierError as problem:
            raise translate_error(problem) from None
    try:
        prepared = await run_in_threadpool(prepare, studio, body)
        priority = _priority(request)
        job = await run_in_threadpool(
            lambda: submit_generation(
                studio, prepared, owner=request_owner(request), origin="a1111", priority=priority
            )
        )
    except AtelierError as problem:
        raise translate_error(problem) from None
    timeout = studio.config.request_timeout_seconds
    try:
        job = await asyncio.wait_for(request.app.state.waiter.wait(job.id), timeout=timeout)
    except TimeoutError:
        raise JobTimeoutError(
            f"job {job.id} did not finish within {timeout:g} s; it goes on: follow it at /api/jobs/{job.id}",
            field="job_id",
        ) from None
    if job.state == "failed":
        if job.progress_info.get("user_error"):
            raise translate_error(
                AtelierError(job.error or "the job failed", field=job.progress_info.get("error_field"))
            )
        raise JobFailedError(f"job {job.id} failed: {job.error}", field="job_id")
    images = []
    if job.state == "succeeded" and body.send_images:
        keys = [image.key for image in GenerateResult.model_validate(job.result).images]
        contents = await run_in_threadpool(lambda: [studio.storage.get_bytes(key) for key in keys])
        images = [base64.b64encode(content).decode("ascii") for content in contents]
    parameters = body.model_dump()
    if not include_images and "init_images" in parameters:
        parameters["init_images"] = None
        parameters["mask"] = None
    return {"images": images, "parameters": parameters, "info": _info(job, prepared, body)}


def _sd_model(record: ModelRecord) -> dict[str, Any]:
    return {
        "title": record.title,
        "model_name": record.name,
        "hash": record.short_hash,
        "sha256": record.sha256,
        "filename": record.filename,
        "config": None,
    }


def build_a1111_router() -> APIRouter:
    """The ``/sdapi/v1`` routes."""
    router = APIRouter(prefix="/sdapi/v1", tags=["A1111-compatible"])

    @router.post("/txt2img", response_model=A1111Response, summary="Text to image (waits for the queued job)")
    async def txt2img(body: Txt2ImgRequest, request: Request) -> dict[str, Any]:
        return await _run(request, body, prepare_txt2img)

    @router.post("/img2img", response_model=A1111Response, summary="Image to image and inpainting")
    async def img2img(body: Img2ImgRequest, request: Request) -> dict[str, Any]:
        return await _run(request, body, prepare_img2img, include_images=body.include_init_images)

    @router.get("/sd-models")
    def sd_models(studio: StudioDep) -> list[dict[str, Any]]:
        return [_sd_model(record) for record in studio.registry.list("checkpoint")]

    @router.get("/loras")
    def loras(studio: StudioDep) -> list[dict[str, Any]]:
        return [
            {
                "name": record.name,
                "alias": record.name,
                "path": record.storage_key,
                "metadata": record.details.get("metadata", {}),
            }
            for record in studio.registry.list("lora")
        ]

    @router.get("/samplers")
    def samplers() -> list[dict[str, Any]]:
        from atelier.engine import SAMPLER_NAMES, supported_schedule_types

        return [
            {"name": name, "aliases": [], "options": {"schedule_types": supported_schedule_types(name)}}
            for name in SAMPLER_NAMES
        ]

    @router.get("/schedulers")
    def schedulers() -> list[dict[str, Any]]:
        from atelier.engine import SCHEDULE_TYPES

        return [
            {
                "name": label.lower().replace(" ", "_"),
                "label": label,
                "aliases": None,
                "default_rho": _SCHEDULER_RHO.get(label, -1.0),
                "need_inner_model": False,
            }
            for label in SCHEDULE_TYPES
        ]

    @router.get("/options")
    def get_options(studio: StudioDep) -> dict[str, Any]:
        options = studio_options(studio)
        try:
            current = current_model(studio)
        except NotFoundError:
            return options
        return {**options, "sd_model_checkpoint": current.title, "sd_checkpoint_hash": current.sha256}

    @router.post("/options")
    def set_options(values: dict[str, Any], request: Request, studio: StudioDep) -> None:
        require_admin(request, "changing studio options")
        updates = dict(values)
        if "sd_model_checkpoint" in updates:
            name = updates["sd_model_checkpoint"]
            if not isinstance(name, str):
                raise AtelierError("sd_model_checkpoint must be a model title", field="sd_model_checkpoint")
            updates["sd_model_checkpoint"] = studio.registry.find_checkpoint(
                name, field="sd_model_checkpoint"
            ).title
        if "sd_vae" in updates and updates["sd_vae"] not in NO_EXTERNAL_VAE:
            name = updates["sd_vae"]
            if not isinstance(name, str):
                raise AtelierError("sd_vae must be a VAE name, Automatic or None", field="sd_vae")
            updates["sd_vae"] = (
                studio.registry.get(name.removesuffix(".safetensors"), "vae").name + ".safetensors"
            )
        if "CLIP_stop_at_last_layers" in updates:
            value = updates["CLIP_stop_at_last_layers"]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
                raise AtelierError(
                    "CLIP_stop_at_last_layers must be 1 to 12", field="CLIP_stop_at_last_layers"
                )
        _check_acted_on_options(updates)
        for key, value in updates.items():
            if len(json.dumps(value, default=str)) > 10_000:
                raise AtelierError(f"option {key} is too large", field=key)
        studio.settings.update(updates)

    @router.get("/progress")
    def progress(request: Request, studio: StudioDep, skip_current_image: bool = False) -> dict[str, Any]:
        caller = request_caller(request)
        counts = studio.store.counts()
        # A user key follows its own generation, as A1111's single user does; an admin sees the oldest running.
        running = [
            job
            for job in studio.store.list(state="running", kind="generate", limit=100)
            if caller.may_see(job.owner)
        ]
        state = {
            "skipped": False,
            "interrupted": False,
            "stopping_generation": False,
            "job": "",
            "job_count": counts["queued"] + counts["running"],
            "job_timestamp": "0",
            "job_no": 0,
            "sampling_step": 0,
            "sampling_steps": 0,
        }
        if not running:
            return {
                "progress": 0.0,
                "eta_relative": 0.0,
                "state": state,
                "current_image": None,
                "textinfo": None,
            }
        current = min(running, key=lambda job: job.started_at or job.created_at)
        step, total = current.progress_step or 0, current.progress_total or 0
        fraction = min(1.0, 0.01 + step / total) if total else 0.01
        elapsed = (datetime.now(UTC) - (current.started_at or current.created_at)).total_seconds()
        state.update(
            job=current.id,
            interrupted=current.cancel_requested,
            job_timestamp=current.created_at.astimezone(UTC).strftime("%Y%m%d%H%M%S"),
            sampling_step=step,
            sampling_steps=total,
        )
        preview = (current.progress_info or {}).get("preview")
        return {
            "progress": fraction,
            "eta_relative": max(0.0, elapsed / fraction - elapsed),
            "state": state,
            # A1111 sends the live preview as bare base64 (no data: prefix); ours is a small JPEG.
            "current_image": None if skip_current_image or not preview else preview.split(",", 1)[-1],
            "textinfo": f"step {step} of {total}" if total else "starting",
        }

    @router.post("/interrupt")
    def interrupt(request: Request, studio: StudioDep) -> dict[str, Any]:
        # The caller's own running generations (an admin's: all), never another person's.
        caller = request_caller(request)
        for job in studio.store.list(state="running", kind="generate", limit=1000):
            if caller.may_see(job.owner):
                # As in A1111, the request then answers with the picture as it was at the stop.
                studio.store.cancel(job.id, keep_partial=True)
        return {}

    @router.post("/skip")
    def skip(request: Request, studio: StudioDep) -> dict[str, Any]:
        return interrupt(request, studio)

    @router.post("/png-info")
    def png_info(body: PngInfoRequest, studio: StudioDep) -> dict[str, Any]:
        from atelier.engine import parse_infotext, read_infotext

        image = decode_image(body.image, field="image", max_pixels=studio.config.max_image_pixels)
        text = read_infotext(image) or ""
        items = {
            key: value for key, value in image.info.items() if isinstance(value, str) and key != "parameters"
        }
        return {"info": text, "items": items, "parameters": parse_infotext(text) if text else {}}

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints(request: Request) -> None:
        _wake_watcher(request)

    @router.post("/refresh-loras")
    def refresh_loras(request: Request) -> None:
        _wake_watcher(request)

    @router.post("/refresh-embeddings")
    def refresh_embeddings(request: Request) -> None:
        _wake_watcher(request)

    @router.post("/refresh-vae")
    def refresh_vae(request: Request) -> None:
        _wake_watcher(request)

    @router.post("/unload-checkpoint", summary="Every generation worker drops its models (admin key)")
    def unload_checkpoint(request: Request, studio: StudioDep) -> None:
        require_admin(request, "unloading the models")
        request_checkpoint_action(studio.settings, "unload", time.time_ns())

    @router.post("/reload-checkpoint", summary="Every generation worker loads the default model again")
    def reload_checkpoint(request: Request, studio: StudioDep) -> None:
        require_admin(request, "reloading the models")
        request_checkpoint_action(studio.settings, "reload", time.time_ns())

    @router.get("/scripts")
    def scripts() -> dict[str, list[str]]:
        return {"txt2img": [SCRIPT_NAME], "img2img": [SCRIPT_NAME, SD_UPSCALE]}

    @router.get("/cmd-flags")
    def cmd_flags(request: Request) -> dict[str, Any]:
        # A1111's flags that describe this server; no paths of the server's disk.
        config = request.app.state.studio.config
        return {"api": True, "listen": not is_loopback_host(config.host), "port": config.port}

    return router


def _check_acted_on_options(updates: dict[str, Any]) -> None:
    """Options Atelier acts on get their type checked; ones it supports one value of refuse the others."""
    for key, allowed in FIXED_OPTIONS.items():
        if key in updates and updates[key] not in allowed:
            raise AtelierError(
                f"{key}: Atelier supports {' or '.join(map(repr, allowed))} only, got {updates[key]!r}",
                field=key,
            )
    if "live_previews_enable" in updates and not isinstance(updates["live_previews_enable"], bool):
        raise AtelierError("live_previews_enable must be true or false", field="live_previews_enable")
    if "show_progress_every_n_steps" in updates:
        value = updates["show_progress_every_n_steps"]
        if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 1000:
            raise AtelierError(
                "show_progress_every_n_steps must be a whole number from -1 to 1000",
                field="show_progress_every_n_steps",
            )


def _wake_watcher(request: Request) -> None:
    """Scan the buckets now rather than at the next tick (A1111's refresh buttons).

    Files still inside their settle time are left for a later scan, as always.
    """
    watcher = getattr(request.app.state, "watcher", None)
    if watcher is not None:
        watcher.scan()
