"""Product shots in the studio: checking a request at the door and queueing it (the worker side is
``handlers/product.py``, the flow itself ``campaign/product``).

Everything a worker would refuse later is refused here, before anything is stored: an unknown scene or
channel, shadow settings out of range, a photo too small or too large, a model that does not exist, and a fully
opaque photo with neither a mask nor a segmentation model in ``models/segmentation/``.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from PIL import Image

from atelier.errors import AtelierError, NotFoundError
from atelier.service.job_types import ProductPayload
from atelier.service.jobs import Job
from atelier.service.model_folders import SEGMENTATION_PREFIX, stored_model_folders
from atelier.service.studio import Studio
from atelier.service.submit import png_for_job, submit_job

MAX_SEED = 2**32 - 1


def stored_segmentation_models(studio: Studio) -> list[str]:
    return stored_model_folders(studio.storage, SEGMENTATION_PREFIX)


def check_product_options(options: dict[str, Any]) -> None:
    """The campaign library's own checks of scene, channels, shadow and shot settings (no model runs)."""
    from atelier.campaign.product import ShadowParams, channel, scene_preset

    scene_preset(options["scene"])
    for name in options.get("channels") or []:
        channel(name)
    if options.get("shadow") is not None:
        shadow_settings(options["shadow"]).check()
    shot_settings(options).check()
    if options.get("upscale_by") is not None:
        from atelier.campaign.product.upscale import upscaled_size

        upscaled_size((options["width"], options["height"]), options["upscale_by"])
    _ = ShadowParams  # the type the shadow settings become


def shadow_settings(values: dict[str, Any]) -> Any:
    from atelier.campaign.product import ShadowParams

    known = set(ShadowParams.__dataclass_fields__)
    for key in values:
        if key not in known:
            raise AtelierError(
                f"unknown shadow setting {key!r}; use {', '.join(sorted(known))}", field="shadow"
            )
    settings = dict(values)
    if "color" in settings and isinstance(settings["color"], list):
        settings["color"] = tuple(settings["color"])
    return ShadowParams(**settings)


def shot_settings(options: dict[str, Any]) -> Any:
    from atelier.campaign.product import InpaintSettings, ShotSettings

    inpaint = InpaintSettings(
        steps=options["steps"],
        sampler=options["sampler"],
        schedule_type=options.get("schedule_type"),
        cfg_scale=options["cfg_scale"],
        seed=options["seed"],
    )
    shadow = options.get("shadow")
    return ShotSettings(
        size=(options["width"], options["height"]),
        count=options["count"],
        shadow=None if shadow is None else shadow_settings(shadow),
        inpaint=inpaint,
    )


def submit_product(
    studio: Studio,
    photo: Image.Image,
    options: dict[str, Any],
    *,
    mask: Image.Image | None = None,
    model: str | None = None,
    priority: int = 0,
    owner: str | None = None,
    origin: str | None = None,
) -> Job:
    """Check a product-shot request and queue it as a ``product`` job; return the job."""
    from atelier.campaign.product import alpha_mask
    from atelier.campaign.product.mask import check_not_empty, check_photo

    options = dict(options)
    if options.get("seed", -1) == -1:
        options["seed"] = random.randrange(MAX_SEED - 64)
    check_photo(photo)
    if mask is not None and mask.size != photo.size:
        raise AtelierError(
            f"mask is {mask.width}x{mask.height} but the photo is {photo.width}x{photo.height}", field="mask"
        )
    check_product_options(options)
    checkpoint = (
        studio.registry.find_checkpoint(model)
        if model
        else studio.registry.default_checkpoint(studio.settings.get("sd_model_checkpoint"))
    )
    if checkpoint.architecture == "sdxl-refiner":
        raise AtelierError(
            f"{checkpoint.name} is an SDXL refiner; pick a base or inpainting model", field="model"
        )
    _check_models(studio, checkpoint, options)
    if options.get("expand_only"):
        if not options.get("channels"):
            raise AtelierError("expand_only needs at least one channel to expand to", field="channels")
        if mask is not None:
            raise AtelierError("expand_only expands the whole picture; it takes no mask", field="mask")
    expand_only = bool(options.get("expand_only"))  # the picture is kept whole: nothing to cut out
    alpha = alpha_mask(photo)
    if mask is None and alpha is not None and not expand_only:
        check_not_empty(alpha)  # a fully transparent picture: no product, refused before a job is queued
    options["segmentation_model"] = _segmentation_model(
        studio,
        options.get("segmentation_model"),
        needed=mask is None and alpha is None and not expand_only,
    )
    job_id = uuid.uuid4().hex
    photo_key = f"outputs/{job_id}/inputs/photo.png"
    studio.storage.put_bytes(photo_key, png_for_job(photo))
    mask_key = None
    if mask is not None:
        mask_key = f"outputs/{job_id}/inputs/mask.png"
        studio.storage.put_bytes(mask_key, png_for_job(mask))
    payload = ProductPayload(
        photo_key=photo_key, mask_key=mask_key, model=checkpoint.name, origin=origin, **options
    )
    return submit_job(studio, "product", payload, job_id, priority, owner, None)


def _check_models(studio: Studio, checkpoint: Any, options: dict[str, Any]) -> None:
    """The prompt's LoRAs exist and fit the checkpoint; with commercial use on, every model's licence allows it
    (the same checks as a generation's, see service/commercial.py)."""
    from atelier.campaign.product import scene_preset
    from atelier.prompts.parser import parse_prompt
    from atelier.service.commercial import check_model, embeddings_in

    preset = scene_preset(options["scene"])
    prompt = options.get("prompt") if options.get("prompt") is not None else preset.prompt
    negative = (
        options.get("negative_prompt") if options.get("negative_prompt") is not None else preset.negative
    )
    full_prompt = f"{options.get('product') or ''}, {prompt}"
    check_model(studio.config, checkpoint, "model")
    for tag in parse_prompt(full_prompt).loras:
        lora = studio.registry.get(tag.name, "lora")
        if lora.family not in ("unknown", checkpoint.family):
            raise AtelierError(
                f"LoRA {lora.name!r} was trained for {lora.family.upper()} but the model {checkpoint.name!r} is "
                f"{checkpoint.family.upper()}",
                field="lora",
            )
        check_model(studio.config, lora, "lora")
    for embedding in embeddings_in([full_prompt, negative or ""], studio.registry.list("embedding")):
        check_model(studio.config, embedding, "embedding")


def _segmentation_model(studio: Studio, wanted: str | None, *, needed: bool) -> str | None:
    stored = stored_segmentation_models(studio)
    if wanted:
        if wanted not in stored:
            raise NotFoundError(
                f"no segmentation model {wanted!r} in {SEGMENTATION_PREFIX}/; available: {', '.join(stored) or 'none'}",
                field="segmentation_model",
            )
        return wanted if needed else None
    if not needed:
        return None
    if not stored:
        raise AtelierError(
            "the photo has no transparency and no mask was given, and the studio has no segmentation model: "
            f"upload a PNG or WebP cut-out, paint a mask, or put a SAM model folder (for example "
            f"facebook/sam-vit-base, .safetensors) in {SEGMENTATION_PREFIX}/",
            field="photo",
        )
    return stored[0]
