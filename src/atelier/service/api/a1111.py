"""The AUTOMATIC1111-compatible API under ``/sdapi/v1``, so tools written for A1111 work unmodified.

Request and response shapes follow A1111's ``modules/api/models.py`` and ``modules/api/api.py``:
``txt2img`` / ``img2img`` answer ``{images: [base64 PNG with infotext], parameters: {...}, info: "<json>"}``
where ``info`` carries ``all_seeds``, ``infotexts`` and the rest of A1111's ``Processed.js()``.

The difference is underneath: A1111 runs one request at a time behind a lock and other callers wait on it (or
time out). Here each request becomes a job in the durable queue and the handler waits for it, so concurrent
requests are queued, spread over all workers, and survive a worker crash.

Options that A1111 applies but Atelier cannot (hires fix, face restoration, tiling, variation seeds, scripts)
are refused with 422 naming the field rather than silently ignored.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from atelier import __version__
from atelier.errors import AtelierError, JobFailedError, JobTimeoutError, NotFoundError
from atelier.service.api.common import request_caller, request_owner, require_admin
from atelier.service.config import is_loopback_host
from atelier.service.job_types import GenerateResult
from atelier.service.jobs import Job
from atelier.service.registry import ModelRecord
from atelier.service.security import decode_image
from atelier.service.studio import Studio
from atelier.service.submit import PreparedGeneration, prepare_generation, submit_generation

# GenerationRequest's field names -> the A1111 request field that carries the same value.
A1111_FIELDS = {
    "sampler": "sampler_name",
    "schedule_type": "scheduler",
    "batch_count": "n_iter",
    "model": "sd_model_checkpoint",
    "init_image": "init_images",
    "inpaint_only_masked": "inpaint_full_res",
    "inpaint_padding": "inpaint_full_res_padding",
    "mask_invert": "inpainting_mask_invert",
    "refiner": "refiner_checkpoint",
    "clip_skip": "CLIP_stop_at_last_layers",
    "lora": "prompt",
}
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
# A1111's scheduler names (modules/sd_schedulers.py) for the schedule types Atelier offers.
_SCHEDULER_RHO = {"Karras": 7.0}
DEFAULT_OPTIONS: dict[str, Any] = {
    "samples_format": "png",
    "CLIP_stop_at_last_layers": 1,
    "sd_vae": "Automatic",
    "sd_lora": "None",
}


def get_studio(request: Request) -> Studio:
    return request.app.state.studio


StudioDep = Annotated[Studio, Depends(get_studio)]


class _ProcessingRequest(BaseModel):
    """Fields common to A1111's txt2img and img2img requests (``StableDiffusionProcessing``)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    force_task_id: str | None = None
    infotext: str | None = None


class Txt2ImgRequest(_ProcessingRequest):
    enable_hr: bool = False
    denoising_strength: float | None = None
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Img2ImgRequest(_ProcessingRequest):
    init_images: list[str] | None = None
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False
    denoising_strength: float = 0.75


class PngInfoRequest(BaseModel):
    image: str


class A1111Response(BaseModel):
    images: list[str] | None = None
    parameters: dict[str, Any]
    info: str


def _translate(problem: AtelierError) -> AtelierError:
    """The same error, naming the A1111 request field instead of Atelier's."""
    field = A1111_FIELDS.get(problem.field or "", problem.field)
    return type(problem)(str(problem), field=field)


def _refuse_unsupported(body: _ProcessingRequest) -> None:
    unsupported = [
        ("restore_faces", bool(body.restore_faces), "face restoration is not available"),
        ("tiling", bool(body.tiling), "tiling is not available"),
        ("subseed_strength", body.subseed_strength != 0, "variation seeds are not available"),
        (
            "seed_resize_from_w",
            body.seed_resize_from_w > 0 or body.seed_resize_from_h > 0,
            "seed resize is not available",
        ),
        ("script_name", bool(body.script_name), "scripts are not available"),
        ("styles", bool(body.styles), "saved styles are not available; put the style text in the prompt"),
        (
            "alwayson_scripts",
            any(
                (value or {}).get("args")
                for name, value in body.alwayson_scripts.items()
                if isinstance(value, dict) and name.lower() != "controlnet"
            )
            or any(not isinstance(value, dict) for value in body.alwayson_scripts.values()),
            "extension scripts are not available",
        ),
    ]
    if isinstance(body, Txt2ImgRequest):
        unsupported.append(
            ("enable_hr", body.enable_hr, "hires fix is not available; generate at the final size")
        )
    for field, requested, reason in unsupported:
        if requested:
            raise AtelierError(f"{field}: {reason} in Atelier", field=field)


def _generation_values(body: _ProcessingRequest, options: dict[str, Any]) -> dict[str, Any]:
    overrides = body.override_settings or {}
    clip_skip = overrides.get("CLIP_stop_at_last_layers", options.get("CLIP_stop_at_last_layers", 1))
    values: dict[str, Any] = {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "sampler": body.sampler_name or body.sampler_index or "Euler",
        "schedule_type": body.scheduler,
        "steps": body.steps,
        "cfg_scale": body.cfg_scale,
        "seed": body.seed,
        "width": body.width,
        "height": body.height,
        "batch_size": body.batch_size,
        "batch_count": body.n_iter,
        "clip_skip": clip_skip,
    }
    if body.refiner_switch_at is not None:
        values["refiner_switch_at"] = body.refiner_switch_at
    return values


def resize_image(image: Any, mode: int, width: int, height: int) -> Any:
    """A1111's img2img resize modes: 0/3 stretch, 1 crop to the aspect ratio, 2 fit and fill the borders."""
    from PIL import Image

    if mode in (0, 3):
        return image.resize((width, height), Image.Resampling.LANCZOS)
    scale = (
        max(width / image.width, height / image.height)
        if mode == 1
        else min(width / image.width, height / image.height)
    )
    resized_width, resized_height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    resized = image.resize((resized_width, resized_height), Image.Resampling.LANCZOS)
    if mode == 1:
        left, top = (resized_width - width) // 2, (resized_height - height) // 2
        return resized.crop((left, top, left + width, top + height))
    canvas = Image.new(resized.mode, (width, height))
    left, top = (width - resized_width) // 2, (height - resized_height) // 2
    canvas.paste(resized, (left, top))
    # The uncovered bands repeat the image's outermost rows or columns, as A1111 fills them.
    if top > 0:
        canvas.paste(resized.crop((0, 0, resized_width, 1)).resize((resized_width, top)), (left, 0))
        bottom = height - top - resized_height
        if bottom > 0:
            edge = resized.crop((0, resized_height - 1, resized_width, resized_height))
            canvas.paste(edge.resize((resized_width, bottom)), (left, top + resized_height))
    if left > 0:
        canvas.paste(resized.crop((0, 0, 1, resized_height)).resize((left, resized_height)), (0, top))
        right = width - left - resized_width
        if right > 0:
            edge = resized.crop((resized_width - 1, 0, resized_width, resized_height))
            canvas.paste(edge.resize((right, resized_height)), (left + resized_width, top))
    return canvas


def _model_name(body: _ProcessingRequest) -> str | None:
    checkpoint = (body.override_settings or {}).get("sd_model_checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise AtelierError("sd_model_checkpoint must be a model title", field="sd_model_checkpoint")
    return checkpoint


def _prepare_txt2img(studio: Studio, body: Txt2ImgRequest) -> PreparedGeneration:
    _refuse_unsupported(body)
    values = _generation_values(body, _options(studio))
    return prepare_generation(
        studio,
        values,
        model=_model_name(body) or _current_model(studio).name,
        refiner=body.refiner_checkpoint or None,
        controlnet_units=_controlnet_units(studio, body),
    )


def _prepare_img2img(studio: Studio, body: Img2ImgRequest) -> PreparedGeneration:
    _refuse_unsupported(body)
    if not body.init_images:
        raise AtelierError("init_images needs one base64 image", field="init_images")
    if len(body.init_images) != 1:
        raise AtelierError(
            "init_images: Atelier takes exactly one init image per request", field="init_images"
        )
    if body.resize_mode not in range(len(RESIZE_MODES)):
        raise AtelierError(f"resize_mode must be 0 to {len(RESIZE_MODES) - 1}", field="resize_mode")
    if body.mask_blur is None and body.mask_blur_x != body.mask_blur_y:
        raise AtelierError("mask_blur_x and mask_blur_y must be equal in Atelier", field="mask_blur_x")
    limit = studio.config.max_image_pixels
    init_image = decode_image(body.init_images[0], field="init_images", max_pixels=limit)
    mask = decode_image(body.mask, field="mask", max_pixels=limit) if body.mask else None
    if mask is not None and mask.size != init_image.size:
        raise AtelierError(
            f"mask size {mask.width}x{mask.height} differs from image size {init_image.width}x{init_image.height}",
            field="mask",
        )
    only_masked = mask is not None and bool(body.inpaint_full_res)
    if not only_masked:
        # A1111 brings the image (and mask) to the requested size with resize_mode before processing.
        init_image = resize_image(init_image, body.resize_mode, body.width, body.height)
        if mask is not None:
            mask = resize_image(mask, body.resize_mode, body.width, body.height)
    values = _generation_values(body, _options(studio))
    values["denoising_strength"] = body.denoising_strength
    if mask is not None:
        from atelier.engine import INPAINTING_FILL_MODES

        if body.inpainting_fill not in range(len(INPAINTING_FILL_MODES)):
            raise AtelierError(
                f"inpainting_fill must be 0 to {len(INPAINTING_FILL_MODES) - 1}", field="inpainting_fill"
            )
        values.update(
            mask_blur=body.mask_blur if body.mask_blur is not None else body.mask_blur_x,
            inpainting_fill=INPAINTING_FILL_MODES[body.inpainting_fill],
            inpaint_only_masked=only_masked,
            inpaint_padding=body.inpaint_full_res_padding,
            mask_invert=bool(body.inpainting_mask_invert),
        )
    return prepare_generation(
        studio,
        values,
        model=_model_name(body) or _current_model(studio).name,
        init_image=init_image,
        mask=mask,
        controlnet_units=_controlnet_units(studio, body),
    )


def _controlnet_units(studio: Studio, body: _ProcessingRequest) -> list[Any]:
    from atelier.service.controlnets import a1111_script_units

    return a1111_script_units(
        body.alwayson_scripts, storage=studio.storage, max_pixels=studio.config.max_image_pixels
    )


def _info(job: Job, prepared: PreparedGeneration, body: _ProcessingRequest) -> str:
    """A1111's ``Processed.js()`` for a finished job."""
    result = GenerateResult.model_validate(job.result) if job.state == "succeeded" else None
    seeds = result.seeds if result else []
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
        "infotexts": result.infotexts if result else [],
        "styles": body.styles or [],
        "job_timestamp": job.created_at.astimezone(UTC).strftime("%Y%m%d%H%M%S"),
        "clip_skip": params["clip_skip"],
        "is_using_inpainting_conditioning": prepared.model.architecture == "sd15-inpaint",
        "version": f"atelier {__version__}",
        "job_id": job.id,
    }
    return json.dumps(info)


async def _run(
    request: Request, body: _ProcessingRequest, prepare: Any, *, include_images: bool = False
) -> dict[str, Any]:
    studio: Studio = request.app.state.studio
    try:
        prepared = await run_in_threadpool(prepare, studio, body)
        job = await run_in_threadpool(
            lambda: submit_generation(studio, prepared, owner=request_owner(request), origin="a1111")
        )
    except AtelierError as problem:
        raise _translate(problem) from None
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
            raise _translate(
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


def _options(studio: Studio) -> dict[str, Any]:
    return {**DEFAULT_OPTIONS, **studio.settings.all()}


def _current_model(studio: Studio) -> ModelRecord:
    return studio.registry.default_checkpoint(studio.settings.get("sd_model_checkpoint"))


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
        return await _run(request, body, _prepare_txt2img)

    @router.post("/img2img", response_model=A1111Response, summary="Image to image and inpainting")
    async def img2img(body: Img2ImgRequest, request: Request) -> dict[str, Any]:
        return await _run(request, body, _prepare_img2img, include_images=body.include_init_images)

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
        options = _options(studio)
        try:
            current = _current_model(studio)
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
        if "CLIP_stop_at_last_layers" in updates:
            value = updates["CLIP_stop_at_last_layers"]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
                raise AtelierError(
                    "CLIP_stop_at_last_layers must be 1 to 12", field="CLIP_stop_at_last_layers"
                )
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
                studio.store.cancel(job.id)
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

    @router.get("/scripts")
    def scripts() -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    @router.get("/cmd-flags")
    def cmd_flags(request: Request) -> dict[str, Any]:
        # A1111's flags that describe this server; no paths of the server's disk.
        config = request.app.state.studio.config
        return {"api": True, "listen": not is_loopback_host(config.host), "port": config.port}

    return router


def _wake_watcher(request: Request) -> None:
    """Scan the buckets now rather than at the next tick (A1111's refresh buttons).

    Files still inside their settle time are left for a later scan, as always.
    """
    watcher = getattr(request.app.state, "watcher", None)
    if watcher is not None:
        watcher.scan()
