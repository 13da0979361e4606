"""Job handlers, one module per job kind, found by kind: a new kind of job is one new module here.

A handler gets the worker (its warm engine, model files, storage), the claimed job and its lease, and returns
the job's typed result (``service/job_types.py``); raising :class:`~atelier.service.lease.JobInterrupted`
hands the job back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from atelier.service.handlers.caption import run_caption
from atelier.service.handlers.context import WorkerContext
from atelier.service.handlers.generate import run_generate
from atelier.service.handlers.product import run_product
from atelier.service.handlers.train import run_train
from atelier.service.jobs import Job
from atelier.service.lease import JobLease


@dataclass(frozen=True)
class JobHandler:
    kind: str
    run: Callable[[WorkerContext, Job, JobLease], BaseModel]
    # What the worker must have ready before it claims a job of this kind (see Worker.warm_up).
    needs_engine: bool


HANDLERS: dict[str, JobHandler] = {
    handler.kind: handler
    for handler in (
        JobHandler("generate", run_generate, needs_engine=True),
        JobHandler("train", run_train, needs_engine=False),
        JobHandler("caption", run_caption, needs_engine=False),
        JobHandler("product", run_product, needs_engine=True),
    )
}
