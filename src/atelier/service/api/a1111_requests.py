"""What an A1111 request means here: its body models, the options Atelier refuses, and its translation into a
:class:`~atelier.service.submit.PreparedGeneration` (``/sdapi/v1/txt2img`` and ``img2img``).

The routes, the waiting and the answer's ``info`` are in ``a1111.py``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from atelier.errors import AtelierError
from atelier.service.registry import ModelRecord
from atelier.service.security import decode_image
from atelier.service.studio import Studio
from atelier.service.submit import PreparedGeneration, prepare_generation

# GenerationRequest's field names -> the A1111 request field that carries the same value.
A1111_FIELDS = {
    "hr_sampler": "hr_sampler_name",
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
    "vae": "sd_vae",
}
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
# A1111's options as a stock install reports them, with its defaults. Honoured (setting them changes what
# Atelier does): sd_model_checkpoint, sd_vae, CLIP_stop_at_last_layers, live_previews_enable,
# show_progress_every_n_steps. Fixed (only this value is accepted): samples_format. Stored and ignored
# (they steer A1111's own UI or features Atelier does not have): the rest. docs/a1111.md lists them.
DEFAULT_OPTIONS: dict[str, Any] = {
    "samples_format": "png",
    "CLIP_stop_at_last_layers": 1,
    "sd_vae": "Automatic",
    "sd_lora": "None",
    "live_previews_enable": True,
    "show_progress_every_n_steps": 10,
    "send_seed": True,
    "send_size": True,
    "save_images_add_number": True,
    "grid_save": True,
    "enable_pnginfo": True,
    "eta_noise_seed_delta": 0,
    "img2img_fix_steps": False,
    "enable_emphasis": True,
    "use_old_emphasis_implementation": False,
    "comma_padding_backtrack": 20,
    "upscaler_for_img2img": None,
    "face_restoration": False,
    "face_restoration_model": "CodeFormer",
    "sd_checkpoint_cache": 0,
    "sd_vae_checkpoint_cache": 0,
    "hires_fix_use_firstpass_conditioning": False,
    "interrogate_keep_models_in_memory": False,
    "outdir_samples": "",
    "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_img2img_samples": "outputs/img2img-images",
    "outdir_extras_samples": "outputs/extras-images",
}
# Options whose value Atelier checks because it acts on them (or accepts only one value of).
FIXED_OPTIONS = {"samples_format": ("png",)}
# sd_vae values that keep the checkpoint's own VAE. (A1111's "Automatic" also picks a VAE file named like the
# checkpoint; Atelier does not guess: a VAE is used only when named.)
NO_EXTERNAL_VAE = ("Automatic", "None", "")


def studio_options(studio: Studio) -> dict[str, Any]:
    from atelier.service.styles import STYLES_KEY

    # Saved styles share the settings table but are not an option: /prompt-styles lists them.
    stored = {key: value for key, value in studio.settings.all().items() if key != STYLES_KEY}
    return {**DEFAULT_OPTIONS, **stored}


def current_model(studio: Studio) -> ModelRecord:
    return studio.registry.default_checkpoint(studio.settings.get("sd_model_checkpoint"))


class ProcessingRequest(BaseModel):
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


class Txt2ImgRequest(ProcessingRequest):
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


class Img2ImgRequest(ProcessingRequest):
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


def translate_error(problem: AtelierError) -> AtelierError:
    """The same error, naming the A1111 request field instead of Atelier's."""
    field = A1111_FIELDS.get(problem.field or "", problem.field)
    return type(problem)(str(problem), field=field)


def _refuse_unsupported(body: ProcessingRequest) -> None:
    unsupported = [
        ("restore_faces", bool(body.restore_faces), "face restoration is not available"),
        ("subseed_strength", body.subseed_strength != 0, "variation seeds are not available"),
        (
            "seed_resize_from_w",
            body.seed_resize_from_w > 0 or body.seed_resize_from_h > 0,
            "seed resize is not available",
        ),
        (
            "script_name",
            (body.script_name or "").strip().lower()
            not in ("", "x/y/z plot", *(("sd upscale",) if isinstance(body, Img2ImgRequest) else ())),
            "the scripts available are 'x/y/z plot' (txt2img and img2img) and 'sd upscale' (img2img)",
        ),
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
            (
                "hr_checkpoint_name",
                bool(
                    body.enable_hr
                    and body.hr_checkpoint_name
                    and body.hr_checkpoint_name != "Use same checkpoint"
                ),
                "a separate hires checkpoint is not available; the hires pass uses the request's model",
            )
        )
    for field, requested, reason in unsupported:
        if requested:
            raise AtelierError(f"{field}: {reason} in Atelier", field=field)


def _generation_values(body: ProcessingRequest, options: dict[str, Any]) -> dict[str, Any]:
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
        # A1111 makes latents of width // 8 x height // 8: other sizes are rounded down, not refused.
        "width": _round_to_8(body.width),
        "height": _round_to_8(body.height),
        "batch_size": body.batch_size,
        "batch_count": body.n_iter,
        "clip_skip": clip_skip,
        "tiling": bool(body.tiling),
    }
    vae = overrides.get("sd_vae", options.get("sd_vae", "Automatic"))
    if not isinstance(vae, str):
        raise AtelierError("sd_vae must be a VAE name, Automatic or None", field="sd_vae")
    if vae not in NO_EXTERNAL_VAE:
        values["vae"] = vae
    if body.refiner_switch_at is not None:
        values["refiner_switch_at"] = body.refiner_switch_at
    return values


def _round_to_8(value: int) -> int:
    return value // 8 * 8 if value >= 8 else value


def _hires_values(body: Txt2ImgRequest) -> dict[str, Any]:
    """A1111's hires-fix fields in Atelier's names (engine/hires.py)."""
    if not body.enable_hr:
        return {}
    values: dict[str, Any] = {
        "enable_hr": True,
        "hr_scale": body.hr_scale,
        "hr_resize_x": body.hr_resize_x,
        "hr_resize_y": body.hr_resize_y,
        "hr_upscaler": body.hr_upscaler or "Latent",
        "hr_second_pass_steps": body.hr_second_pass_steps,
        # A1111's UI default for the hires pass; the API leaves it unset.
        "denoising_strength": 0.7 if body.denoising_strength is None else body.denoising_strength,
    }
    if body.hr_sampler_name and body.hr_sampler_name != "Use same sampler":
        values["hr_sampler"] = body.hr_sampler_name
    if body.hr_prompt:
        values["hr_prompt"] = body.hr_prompt
    if body.hr_negative_prompt:
        values["hr_negative_prompt"] = body.hr_negative_prompt
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


def _model_name(body: ProcessingRequest) -> str | None:
    checkpoint = (body.override_settings or {}).get("sd_model_checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise AtelierError("sd_model_checkpoint must be a model title", field="sd_model_checkpoint")
    return checkpoint


def prepare_txt2img(studio: Studio, body: Txt2ImgRequest) -> PreparedGeneration:
    _refuse_unsupported(body)
    values = {**_generation_values(body, studio_options(studio)), **_hires_values(body)}
    return prepare_generation(
        studio,
        values,
        model=_model_name(body) or current_model(studio).name,
        refiner=body.refiner_checkpoint or None,
        controlnet_units=_controlnet_units(studio, body),
        styles=body.styles or None,
    )


def prepare_img2img(studio: Studio, body: Img2ImgRequest) -> PreparedGeneration:
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
    values = _generation_values(body, studio_options(studio))
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
        model=_model_name(body) or current_model(studio).name,
        init_image=init_image,
        mask=mask,
        controlnet_units=_controlnet_units(studio, body),
        styles=body.styles or None,
    )


def _controlnet_units(studio: Studio, body: ProcessingRequest) -> list[Any]:
    from atelier.service.controlnets import a1111_script_units

    return a1111_script_units(
        body.alwayson_scripts, storage=studio.storage, max_pixels=studio.config.max_image_pixels
    )
