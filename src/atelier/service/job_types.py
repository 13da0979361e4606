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


class TrainResult(_Record):
    model: dict[str, Any] = Field(description="the registered LoRA")
    samples: list[str] = Field(default_factory=list)
    epoch_files: list[str] = Field(default_factory=list)
    summary: str | None = None


PAYLOAD_TYPES: dict[str, type[_Record]] = {"generate": GeneratePayload, "train": TrainPayload}
RESULT_TYPES: dict[str, type[_Record]] = {"generate": GenerateResult, "train": TrainResult}
