"""Product shots over HTTP: ``POST /api/product-shots`` queues one (a ``product`` job), and the listings the
Product shot tab is built from (scene presets, channel sizes, segmentation models)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from atelier.service.api.common import request_owner
from atelier.service.api.native import StudioDep, job_view
from atelier.service.jobs import MAX_PRIORITY
from atelier.service.product import stored_segmentation_models, submit_product
from atelier.service.security import decode_image


class ProductShotBody(BaseModel):
    """A product shot. Images are base64 (PNG or WebP with transparency: the alpha is the product)."""

    model_config = ConfigDict(extra="forbid")

    photo: str = Field(description="the product photo (base64); its transparency, if any, is the product")
    mask: str | None = Field(default=None, description="the product's mask (base64), white = product")
    model: str | None = Field(default=None, description="checkpoint; default: the studio's current model")
    scene: str = Field(default="studio", description="a scene preset (GET /api/product/scenes)")
    prompt: str | None = Field(default=None, description="your own scene prompt instead of the preset's")
    negative_prompt: str | None = None
    product: str = Field(default="", description="what the product is: 'a leather handbag'", max_length=500)
    count: int = Field(default=1, description="how many shots (seeds seed, seed+1, ...)")
    seed: int = -1
    width: int | None = Field(default=None, description="shot width; default 512 (SD 1.5) or 1024 (SDXL)")
    height: int | None = None
    steps: int = 30
    sampler: str = "DPM++ 2M"
    schedule_type: str | None = "Karras"
    cfg_scale: float = 7.0
    shadow: dict[str, Any] | None = Field(
        default_factory=dict,
        description="direction (degrees, none: straight down), distance, softness, opacity, contact_opacity, "
        "contact_softness, contact_height, units (fraction or px), color; null: no shadow",
    )
    channels: list[str] = Field(
        default_factory=list, description="channel names or WxH to expand each shot to"
    )
    upscale_by: float | None = Field(default=None, description="upscale each shot by this factor (Lanczos)")
    segmentation_model: str | None = Field(default=None, description="a folder in models/segmentation/")
    cutout_only: bool = Field(default=False, description="only cut the product out (the preview)")
    expand_only: bool = Field(
        default=False,
        description="expand the photo itself (any picture, e.g. a shot) to the channels: its pixels kept, "
        "the new area generated from the scene's prompt",
    )
    priority: int = Field(default=0, ge=-MAX_PRIORITY, le=MAX_PRIORITY)


def build_product_router() -> APIRouter:
    router = APIRouter(prefix="/api", tags=["product shots"])

    @router.get("/product/scenes", summary="Scene presets for product shots")
    def scenes() -> dict[str, Any]:
        from atelier.campaign.product import load_scene_presets

        return {
            "scenes": [
                {
                    "name": s.name,
                    "title": s.title,
                    "prompt": s.prompt,
                    "negative": s.negative,
                    "light": s.light,
                }
                for s in load_scene_presets().values()
            ]
        }

    @router.get("/product/channels", summary="Channel sizes a shot can be expanded to")
    def channels() -> dict[str, Any]:
        from atelier.campaign.product import load_channels

        return {
            "channels": [
                {"name": c.name, "width": c.width, "height": c.height} for c in load_channels().values()
            ]
        }

    @router.get("/product/segmentation-models", summary="SAM models in models/segmentation/ (cut-outs)")
    def segmentation_models(studio: StudioDep) -> dict[str, Any]:
        return {"models": [{"name": name} for name in stored_segmentation_models(studio)]}

    @router.post("/product-shots", status_code=202, summary="Queue a product shot (or only its cut-out)")
    async def product_shots(body: ProductShotBody, request: Request, studio: StudioDep) -> dict[str, Any]:
        limit = studio.config.max_image_pixels
        photo = decode_image(body.photo, field="photo", max_pixels=limit)
        mask = decode_image(body.mask, field="mask", max_pixels=limit) if body.mask else None
        options = body.model_dump(exclude={"photo", "mask", "model", "priority"})
        job = await run_in_threadpool(
            _submit, studio, photo, mask, options, body.model, body.priority, request_owner(request)
        )
        return job_view(studio, job)

    return router


def _submit(
    studio: Any, photo: Any, mask: Any, options: dict[str, Any], model: str | None, priority: int, owner: Any
) -> Any:
    if options["width"] is None or options["height"] is None:
        record = (
            studio.registry.find_checkpoint(model)
            if model
            else studio.registry.default_checkpoint(studio.settings.get("sd_model_checkpoint"))
        )
        side = 1024 if record.family == "sdxl" else 512
        options["width"] = options["width"] or side
        options["height"] = options["height"] or side
    return submit_product(
        studio, photo, options, mask=mask, model=model, priority=priority, owner=owner, origin="api"
    )
