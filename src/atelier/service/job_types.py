"""The typed contract of each job kind: what ``submit`` writes into a job, and what its worker writes back.

The queue stores payloads and results as JSON. These models are the one definition of that JSON: ``submit``
builds a payload model and stores its dump, a handler reads it back with ``model_validate``, and both APIs
read results the same way. Unknown keys are ignored on reading, so a job queued by an older release still runs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GeneratePayload(_Record):
    """A generation: the request in A1111's vocabulary, registry names, and where its input images are."""

    request: dict[str, Any] = Field(description="GenerationRequest fields (prompt, steps, seed, ...)")
    model: str
    refiner: str | None = None
    loras: list[str] = Field(default_factory=list)
    mode: str = "txt2img"
    init_image_key: str | None = None
    mask_key: str | None = None
    controlnet_units: list[dict[str, Any]] | None = None
    origin: str | None = Field(default=None, description="api or a1111: which API queued it")


class TrainPayload(_Record):
    """A LoRA training run on a zip in the training-data bucket."""

    training_data: str
    config: dict[str, Any] = Field(default_factory=dict, description="kohya-named settings")
    config_key: str | None = None
    base: str
    preset: str | None = None
    output_name: str | None = Field(default=None, description="the LoRA's name, free of other models' names")
    rights: dict[str, Any] | None = Field(
        default=None, description="the training images' rights record (owner, people shown, consent)"
    )


class CaptionPayload(_Record):
    """A picture to caption (A1111's interrogate) with a model in ``models/captioning/``."""

    image_key: str
    model: str = Field(description="the captioning model's folder name")
    origin: str | None = Field(default=None, description="which API queued it")


class ProductPayload(_Record):
    """A product shot (campaign/product): the product cut out of its photo, a scene generated around it."""

    photo_key: str
    mask_key: str | None = None
    model: str
    scene: str
    prompt: str | None = Field(default=None, description="replaces the scene preset's prompt")
    negative_prompt: str | None = Field(default=None, description="replaces the scene preset's negative")
    product: str = Field(default="", description="what the product is, put in front of the scene's prompt")
    count: int = 1
    seed: int
    width: int = 1024
    height: int = 1024
    steps: int = 30
    sampler: str = "DPM++ 2M"
    schedule_type: str | None = "Karras"
    cfg_scale: float = 7.0
    shadow: dict[str, Any] | None = Field(default_factory=dict, description="ShadowParams; None: no shadow")
    channels: list[str] = Field(default_factory=list)
    upscale_by: float | None = None
    segmentation_model: str | None = None
    cutout_only: bool = False
    expand_only: bool = Field(
        default=False, description="expand the picture itself to the channels, no cut-out"
    )
    origin: str | None = None


class ProductImage(_Record):
    key: str
    kind: str = Field(description="shot, channel or upscale")
    channel: str | None = None
    box: list[int] = Field(default_factory=list, description="where the product is: left, top, right, bottom")
    seed: int | None
    width: int
    height: int
    note: str = ""
    infotext: str = ""


class ProductResult(_Record):
    mask_key: str | None = Field(default=None, description="the product's mask (white = product), PNG")
    cutout_key: str | None = Field(default=None, description="the product on transparency, PNG")
    images: list[ProductImage] = Field(default_factory=list)
    segmentation_model: dict[str, Any] | None = Field(default=None, description="name and licence, when used")
    model: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)


class GeneratedImage(_Record):
    key: str
    sidecar: str
    seed: int
    width: int
    height: int
    infotext: str


class GenerateResult(_Record):
    images: list[GeneratedImage]
    seeds: list[int]
    infotexts: list[str]
    model: dict[str, Any]
    params: dict[str, Any]
    timings: dict[str, float] = Field(default_factory=dict)


class CaptionResult(_Record):
    caption: str
    model: str
    seconds: float = 0.0


class TrainResult(_Record):
    model: dict[str, Any] = Field(description="the registered LoRA")
    samples: list[str] = Field(default_factory=list)
    epoch_files: list[str] = Field(default_factory=list)
    summary: str | None = None


PAYLOAD_TYPES: dict[str, type[_Record]] = {
    "generate": GeneratePayload,
    "train": TrainPayload,
    "caption": CaptionPayload,
    "product": ProductPayload,
}
RESULT_TYPES: dict[str, type[_Record]] = {
    "generate": GenerateResult,
    "train": TrainResult,
    "caption": CaptionResult,
    "product": ProductResult,
}
