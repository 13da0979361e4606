"""ControlNet routes: the native ``/api/controlnet/...`` and sd-webui-controlnet's ``/controlnet/...``.

Generation itself takes control units through the generate routes (``controlnet_units`` natively,
``alwayson_scripts.controlnet.args`` on the A1111 routes); these routes list models and modules and run a
preprocessor alone, so a user sees the map before generating.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from atelier.engine import (
    MODULE_ALIASES,
    MODULES,
    PROCESSOR_RES_RANGE,
    RESIZE_MODES,
    canonical_module,
    needs_model,
    preprocess,
)
from atelier.errors import AtelierError
from atelier.service.commercial import controlnet_license
from atelier.service.controlnets import controlnet_library, parse_units, png_base64
from atelier.service.security import decode_image
from atelier.service.studio import Studio

# The extension's API version that webuiapi's ControlNet calls expect.
EXTENSION_API_VERSION = 2
MAX_PREVIEW_SIDE = 2048


def get_studio(request: Request) -> Studio:
    return request.app.state.studio


StudioDep = Annotated[Studio, Depends(get_studio)]


class PreviewBody(BaseModel):
    """One image through one preprocessor, fitted to the generation size as the ControlNet will see it."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(default=None, description="base64 image")
    image_key: str | None = Field(default=None, description="a stored output image instead of image")
    module: str = "none"
    width: int = Field(default=512, ge=64, le=MAX_PREVIEW_SIDE)
    height: int = Field(default=512, ge=64, le=MAX_PREVIEW_SIDE)
    resize_mode: str | int = "Crop and Resize"
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    pixel_perfect: bool = False


class DetectBody(BaseModel):
    """sd-webui-controlnet's ``/controlnet/detect``."""

    model_config = ConfigDict(extra="ignore")

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_processor_res: int = 512
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1


def _modules() -> list[dict[str, Any]]:
    return [{"name": module, "needs_model": needs_model(module)} for module in MODULES]


def build_controlnet_router() -> APIRouter:
    router = APIRouter(tags=["controlnet"])

    @router.get("/api/controlnet/models", summary="ControlNet models in models/controlnet/")
    def models(studio: StudioDep) -> dict[str, Any]:
        library = controlnet_library(studio.storage, studio.config.cache_dir)
        return {
            "models": library.model_list(),
            "max_units": studio.config.max_controlnet_units,
            # Each ControlNet's licence: name, the use it allows, where it was read (service/commercial.py).
            "licenses": {name: controlnet_license(path) for name, path in library.paths().items()},
        }

    @router.get("/api/controlnet/modules", summary="Preprocessors and the settings they take")
    def modules() -> dict[str, Any]:
        from atelier.engine import CONTROL_MODES

        return {
            "modules": _modules(),
            "aliases": MODULE_ALIASES,
            "control_modes": list(CONTROL_MODES),
            "resize_modes": list(RESIZE_MODES),
        }

    @router.post("/api/controlnet/preview", summary="The control map a preprocessor makes of an image (PNG)")
    def preview(body: PreviewBody, studio: StudioDep) -> dict[str, Any]:
        try:
            unit = parse_units(
                [body.model_dump(include={"image", "image_key", *_UNIT_PREVIEW_FIELDS}, exclude_none=True)],
                storage=studio.storage,
                max_pixels=studio.config.max_image_pixels,
            )[0]
            if unit.image is None:
                raise AtelierError("image is missing: send a base64 image or an image_key", field="image")
            unit.model = "preview"  # validate() wants a model name; a preview runs no ControlNet
            unit.validate(0)
            control_map = unit.control_image(unit.image, width=body.width, height=body.height)
        except AtelierError as problem:
            # The unit's checks name "controlnet_units[0].<field>"; this body has the fields at the top.
            unit_prefix = "controlnet_units[0]."
            field = (problem.field or "").removeprefix(unit_prefix) or None
            raise type(problem)(str(problem).replace(unit_prefix, ""), field=field) from None
        return {
            "image": png_base64(control_map),
            "module": unit.module,
            "width": control_map.width,
            "height": control_map.height,
        }

    @router.get("/controlnet/version", summary="sd-webui-controlnet API version")
    def version() -> dict[str, int]:
        return {"version": EXTENSION_API_VERSION}

    @router.get("/controlnet/model_list", summary="sd-webui-controlnet: ControlNet models")
    def model_list(studio: StudioDep) -> dict[str, list[str]]:
        return {"model_list": controlnet_library(studio.storage, studio.config.cache_dir).model_list()}

    @router.get("/controlnet/module_list", summary="sd-webui-controlnet: preprocessors")
    def module_list(alias_names: bool = False) -> dict[str, Any]:
        names = list(MODULES)
        if alias_names:
            aliases = {module: alias for alias, module in MODULE_ALIASES.items()}
            names = [aliases.get(name, name) for name in names]
        details = {name: {"model_free": not needs_model(name), "sliders": []} for name in MODULES}
        return {"module_list": names, "module_detail": details}

    @router.get("/controlnet/control_types", summary="sd-webui-controlnet: preprocessors and models by type")
    def control_types(studio: StudioDep) -> dict[str, Any]:
        # As the extension groups them: each type lists its preprocessors, and the models whose name says the
        # type (the extension's rule too, since model files carry no type of their own).
        models = controlnet_library(studio.storage, studio.config.cache_dir).model_list()
        types: dict[str, Any] = {
            "All": {
                "module_list": list(MODULES),
                "model_list": ["None", *models],
                "default_option": "none",
                "default_model": "None",
            }
        }
        for label, (modules, keywords) in CONTROL_TYPES.items():
            matching = [model for model in models if any(word in model.lower() for word in keywords)]
            types[label] = {
                "module_list": ["none", *modules],
                "model_list": ["None", *matching],
                "default_option": modules[0],
                "default_model": matching[0] if matching else "None",
            }
        return {"control_types": types}

    @router.get("/controlnet/settings", summary="sd-webui-controlnet: how many units a request may have")
    def settings(studio: StudioDep) -> dict[str, int]:
        return {"control_net_unit_count": studio.config.max_controlnet_units}

    @router.post("/controlnet/detect", summary="sd-webui-controlnet: run a preprocessor on images")
    def detect(body: DetectBody, studio: StudioDep) -> dict[str, Any]:
        module = canonical_module(body.controlnet_module)
        low, high = PROCESSOR_RES_RANGE
        if not low <= body.controlnet_processor_res <= high:
            raise AtelierError(
                f"controlnet_processor_res must be between {low} and {high}", field="controlnet_processor_res"
            )
        images = []
        for index, encoded in enumerate(body.controlnet_input_images):
            image = decode_image(
                encoded, field=f"controlnet_input_images[{index}]", max_pixels=studio.config.max_image_pixels
            )
            detected = preprocess(
                image,
                module,
                processor_res=body.controlnet_processor_res,
                threshold_a=body.controlnet_threshold_a,
                threshold_b=body.controlnet_threshold_b,
            )
            images.append(png_base64(Image.fromarray(detected)))
        return {"images": images, "info": "Success"}

    return router


# The extension's control types for the preprocessors Atelier has: (modules, words a model's name carries).
CONTROL_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Canny": (("canny", "invert"), ("canny",)),
    "Depth": (("depth_midas", "depth_anything"), ("depth",)),
    "Lineart": (("lineart_standard", "lineart_realistic", "lineart_coarse", "invert"), ("lineart",)),
    "SoftEdge": (("softedge_hed",), ("softedge", "hed")),
}

_UNIT_PREVIEW_FIELDS = (
    "module",
    "resize_mode",
    "processor_res",
    "threshold_a",
    "threshold_b",
    "pixel_perfect",
)
