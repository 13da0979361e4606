"""A1111's extras and listing routes under ``/sdapi/v1``: upscaling, and what this studio has of each kind.

Every listing answers from what Atelier really has, in A1111's shapes, so tools that read them before calling
work: upscalers are the built-in ones (model upscalers need spandrel, which needs torchvision, which Atelier does
not install), latent upscale modes are those the hires fix offers, VAEs and embeddings are the registered ones,
and kinds Atelier has none of (hypernetworks, face restorers, extensions) are empty lists. ``docs/a1111.md`` lists the
differences.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from atelier.errors import AtelierError
from atelier.service.api.a1111_requests import current_model
from atelier.service.security import decode_upload
from atelier.service.studio import Studio

# A1111's resize_mode of the extras tab: 0 = scale by upscaling_resize, 1 = to upscaling_resize_w x _h.
EXTRAS_RESIZE_MODES = (0, 1)


class ExtrasOptions(BaseModel):
    """The fields of A1111's ``ExtrasBaseRequest``."""

    model_config = ConfigDict(extra="ignore")

    resize_mode: int = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(default=0, ge=0, le=1)
    codeformer_visibility: float = Field(default=0, ge=0, le=1)
    codeformer_weight: float = Field(default=0, ge=0, le=1)
    upscaling_resize: float = Field(default=2, gt=0, le=8)
    upscaling_resize_w: int = Field(default=512, ge=1)
    upscaling_resize_h: int = Field(default=512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(default=0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleRequest(ExtrasOptions):
    image: str = Field(description="base64 image")


class ImageItem(BaseModel):
    data: str
    name: str = ""


class ExtrasBatchRequest(ExtrasOptions):
    imageList: list[ImageItem] = Field(description="images as {data: base64, name}")  # noqa: N815 - A1111's name


def _upscale_one(studio: Studio, encoded: str, options: ExtrasOptions, field: str) -> str:
    from atelier.engine import check_upscaler_name, upscale

    if options.gfpgan_visibility > 0 or options.codeformer_visibility > 0:
        which = "gfpgan_visibility" if options.gfpgan_visibility > 0 else "codeformer_visibility"
        raise AtelierError(
            f"{which}: face restoration needs a GFPGAN or CodeFormer model, and Atelier has no face restorer "
            "(set it to 0)",
            field=which,
        )
    if options.resize_mode not in EXTRAS_RESIZE_MODES:
        raise AtelierError("resize_mode must be 0 (scale by) or 1 (to a size)", field="resize_mode")
    check_upscaler_name(options.upscaler_1, field="upscaler_1")
    check_upscaler_name(options.upscaler_2, field="upscaler_2")
    limit = studio.config.max_image_pixels
    original, image = decode_upload(encoded, field=field, max_pixels=limit)
    if options.resize_mode == 0:
        target = (int(image.width * options.upscaling_resize), int(image.height * options.upscaling_resize))
        field_name = "upscaling_resize"
    else:
        target = (options.upscaling_resize_w, options.upscaling_resize_h)
        field_name = "upscaling_resize_w"
    if target[0] * target[1] > limit:
        raise AtelierError(
            f"the upscaled image would be {target[0]}x{target[1]}, over this studio's limit of {limit} pixels",
            field=field_name,
        )
    result = upscale(
        image,
        options.upscaler_1,
        scale=options.upscaling_resize if options.resize_mode == 0 else None,
        to=target if options.resize_mode == 1 else None,
        crop=options.upscaling_crop,
        second=options.upscaler_2,
        second_visibility=options.extras_upscaler_2_visibility,
    )
    return base64.b64encode(_upscaled_png(studio, result, image, original)).decode("ascii")


def _upscaled_png(studio: Studio, result: Any, image: Any, original: bytes) -> bytes:
    """The upscale keeps what its source declares: an AI picture stays disclosed as such (and is signed, the
    source as its parent). The upscalers here are classical filters, so a picture that declares nothing is
    resized without any claim being added."""
    from atelier.engine import Ingredient, Provenance, encode_image, source_type_of

    source_type = source_type_of(image)
    if source_type is None:
        buffer = io.BytesIO()
        result.save(buffer, format="PNG")
        return buffer.getvalue()
    provenance = Provenance(
        source_type, ingredients=(Ingredient("source image", original, "parentOf"),), action="c2pa.resized"
    )
    return encode_image(result, provenance, signer=studio.signer, title="upscaled.png")


def _memory() -> dict[str, Any]:
    """A1111's /memory: this API process's view of RAM, and CUDA when torch sees a GPU here."""
    import psutil

    ram = psutil.virtual_memory()
    process = psutil.Process(os.getpid()).memory_info()
    answer: dict[str, Any] = {
        "ram": {"free": float(ram.available), "used": float(process.rss), "total": float(ram.total)}
    }
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            answer["cuda"] = {"system": {"free": free, "used": total - free, "total": total}}
        else:
            answer["cuda"] = {"error": "no CUDA device in the API process (workers may have one)"}
    except ImportError:
        answer["cuda"] = {"error": "torch is not installed in the API process"}
    return answer


def build_a1111_extras_router() -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])

    @router.post("/extra-single-image", summary="Upscale one image (A1111 extras)")
    async def extra_single_image(body: ExtrasSingleRequest, request: Request) -> dict[str, Any]:
        studio: Studio = request.app.state.studio
        image = await run_in_threadpool(_upscale_one, studio, body.image, body, "image")
        return {"html_info": "", "image": image}

    @router.post("/extra-batch-images", summary="Upscale several images (A1111 extras)")
    async def extra_batch_images(body: ExtrasBatchRequest, request: Request) -> dict[str, Any]:
        studio: Studio = request.app.state.studio
        images = []
        for index, item in enumerate(body.imageList):
            images.append(
                await run_in_threadpool(_upscale_one, studio, item.data, body, f"imageList[{index}].data")
            )
        return {"html_info": "", "images": images}

    @router.get("/upscalers", summary="Image upscalers (built in: None, Lanczos, Nearest)")
    def upscalers() -> list[dict[str, Any]]:
        from atelier.engine import BUILTIN_UPSCALERS

        return [
            {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}
            for name in BUILTIN_UPSCALERS
        ]

    @router.get("/latent-upscale-modes", summary="Latent upscale modes of the hires fix")
    def latent_upscale_modes() -> list[dict[str, str]]:
        from atelier.engine import LATENT_UPSCALE_MODES

        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    @router.get("/realesrgan-models", summary="RealESRGAN models (none: model upscalers are not available)")
    def realesrgan_models() -> list[dict[str, Any]]:
        return []

    @router.get("/face-restorers", summary="Face restorers (none are available)")
    def face_restorers() -> list[dict[str, Any]]:
        return []

    @router.get("/hypernetworks", summary="Hypernetworks (not supported: none)")
    def hypernetworks() -> list[dict[str, Any]]:
        return []

    @router.get("/sd-vae", summary="External VAEs in models/vae/ (override_settings.sd_vae picks one)")
    def sd_vae(request: Request) -> list[dict[str, Any]]:
        studio: Studio = request.app.state.studio
        return [
            {"model_name": f"{record.name}.safetensors", "filename": record.filename}
            for record in studio.registry.list("vae")
        ]

    @router.get("/sd-modules", summary="Extra text-encoder modules (none)")
    def sd_modules() -> list[dict[str, Any]]:
        return []

    @router.get(
        "/embeddings",
        summary="Textual inversion embeddings: those for the current model's family, and the rest",
    )
    def embeddings(request: Request) -> dict[str, dict[str, Any]]:
        studio: Studio = request.app.state.studio
        try:
            family = current_model(studio).family
        except AtelierError:
            family = None
        answer: dict[str, dict[str, Any]] = {"loaded": {}, "skipped": {}}
        for record in studio.registry.list("embedding"):
            facts = (record.details.get("metadata") or {}) if isinstance(record.details, dict) else {}
            entry = {
                "step": None,
                "sd_checkpoint": None,
                "sd_checkpoint_name": None,
                "shape": int(facts.get("width", 0)) or None,
                "vectors": int(facts.get("vectors", 0)) or None,
            }
            answer["loaded" if record.family == family else "skipped"][record.name] = entry
        return answer

    @router.get("/extensions", summary="Extensions (Atelier has none; ControlNet is built in)")
    def extensions() -> list[dict[str, Any]]:
        return []

    @router.get("/script-info", summary="Scripts and their arguments (none yet)")
    def script_info() -> list[dict[str, Any]]:
        return []

    @router.get("/memory", summary="RAM (and CUDA) of the API process")
    def memory() -> dict[str, Any]:
        return _memory()

    return router


def build_internal_router() -> APIRouter:
    """A1111's ``/internal/ping``, which launchers poll to see that the server is up."""
    router = APIRouter(prefix="/internal", tags=["a1111"])

    @router.get("/ping", summary="Liveness, as A1111 answers it")
    def ping() -> dict[str, Any]:
        return {}

    return router
