"""A1111's ``POST /sdapi/v1/interrogate``: a caption for a picture, from the studio's captioning model.

The shapes are A1111's (``modules/api/models.py``): ``{"image": base64, "model": "clip"}`` answers
``{"caption": "..."}``, which is what ``webuiapi``'s ``interrogate`` sends and reads. ``clip`` is served by
the captioning model in ``models/captioning/`` (BLIP or Florence-2, see ``service/captioning.py``); A1111 adds
CLIP-ranked artist and style terms to its BLIP caption, Atelier answers the caption alone. ``deepdanbooru``
is refused (404, as A1111 answers a model it does not have), and so is ``clip`` while no captioning model is
installed, with what to put where.

As for txt2img, the request becomes a job ("caption") that a generation worker runs while the handler
waits: the API process loads no model, concurrent requests queue instead of failing, and a worker's crash is
survived.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from atelier.errors import AtelierError, JobFailedError, JobTimeoutError
from atelier.service.api.common import request_owner
from atelier.service.job_types import CaptionResult
from atelier.service.jobs import Job
from atelier.service.security import decode_image
from atelier.service.studio import Studio
from atelier.service.submit import submit_caption


class InterrogateRequest(BaseModel):
    """A1111's ``InterrogateRequest``."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field(default="", description="the picture, base64 (or a data: URL)")
    model: str = Field(
        default="clip",
        description="clip: the studio's captioning model (models/captioning/); or a captioning model's name",
    )


class InterrogateResponse(BaseModel):
    caption: str | None = Field(default=None, description="the caption")


def build_a1111_interrogate_router() -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["A1111-compatible"])

    @router.post(
        "/interrogate",
        response_model=InterrogateResponse,
        summary="Caption a picture (waits for the queued caption job)",
    )
    async def interrogate(body: InterrogateRequest, request: Request) -> dict[str, Any]:
        studio: Studio = request.app.state.studio

        def submit() -> Job:
            image = decode_image(body.image, field="image", max_pixels=studio.config.max_image_pixels)
            return submit_caption(studio, image, body.model, owner=request_owner(request), origin="a1111")

        job = await run_in_threadpool(submit)
        timeout = studio.config.request_timeout_seconds
        try:
            job = await asyncio.wait_for(request.app.state.waiter.wait(job.id), timeout=timeout)
        except TimeoutError:
            raise JobTimeoutError(
                f"job {job.id} did not finish within {timeout:g} s; it goes on: follow it at "
                f"/api/jobs/{job.id}",
                field="job_id",
            ) from None
        if job.state == "failed" and job.progress_info.get("user_error"):
            # The model folder is not a usable model (pickle weights, an unknown type): the request's 4xx.
            raise AtelierError(job.error or "the job failed", field=job.progress_info.get("error_field"))
        if job.state != "succeeded":
            raise JobFailedError(f"job {job.id} {job.state}: {job.error or 'no caption'}", field="job_id")
        return {"caption": CaptionResult.model_validate(job.result).caption}

    return router
