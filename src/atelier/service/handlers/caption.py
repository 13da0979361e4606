"""The caption job: one picture captioned by a model in ``models/captioning/`` (A1111's interrogate).

The model is loaded for the job and let go after it, as A1111 does by default (its
``interrogate_keep_models_in_memory`` is off): captioning is occasional, and the memory of a generation worker
belongs to the checkpoint it keeps warm. Loading BLIP takes a second or two from a local disk.
"""

from __future__ import annotations

import time

from atelier.images import open_image
from atelier.service.captioning import local_captioning_model
from atelier.service.handlers.context import WorkerContext
from atelier.service.job_types import CaptionPayload, CaptionResult
from atelier.service.jobs import Job
from atelier.service.lease import JobLease


def run_caption(worker: WorkerContext, job: Job, lease: JobLease) -> CaptionResult:
    """Caption the job's stored picture with its captioning model (greedy: the same answer each time)."""
    from atelier.engine import Captioner

    payload = CaptionPayload.model_validate(job.payload)
    started = time.monotonic()
    folder = local_captioning_model(worker.storage, worker.config.cache_dir, payload.model)
    # Checked at submission; checked again because storage may be shared with other writers.
    image = open_image(
        worker.storage.get_bytes(payload.image_key), field="image", max_pixels=worker.config.max_image_pixels
    )
    caption = Captioner.load(folder, device=worker.config.device).caption(image)
    return CaptionResult(caption=caption, model=payload.model, seconds=round(time.monotonic() - started, 4))
