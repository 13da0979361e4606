"""Live job progress as server-sent events (``GET /api/jobs/{id}/events``).

The stream reads the job from the database, so it shows the same thing whichever process or machine runs the
job. It sends an ``event: progress`` whenever the state, the step or the queue position changes, comments
as keep-alives in between, and a final ``event: done`` with the finished job, then closes::

    event: progress
    data: {"id": "...", "state": "running", "step": 4, "total": 20, "progress": 0.2, ...}

    event: done
    data: {"id": "...", "state": "succeeded", ...}
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool

from atelier.service.jobs import Job, JobStore


def job_progress(store: JobStore, job: Job) -> dict[str, Any]:
    """A job's state as clients see it: progress fraction, queue position while waiting, error if any."""
    step, total = job.progress_step, job.progress_total
    if job.state == "succeeded":
        fraction = 1.0
    elif step is not None and total:
        fraction = min(1.0, step / total)
    else:
        fraction = 0.0
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "step": step,
        "total": total,
        "progress": round(fraction, 4),
        "info": job.progress_info,
        "queue_position": store.queue_position(job.id) if job.state == "queued" else None,
        "attempts": job.attempts,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def format_event(event: str, data: Any) -> str:
    """One server-sent event; JSON has no raw newlines, so it fits on one ``data:`` line."""
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


async def job_events(
    store: JobStore,
    job_id: str,
    *,
    poll_seconds: float = 0.2,
    keepalive_seconds: float = 15.0,
    is_disconnected: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[str]:
    """Yield server-sent events for one job until it finishes (or the client goes away)."""
    last: tuple[Any, ...] | None = None
    last_sent = time.monotonic()
    while True:
        job = await run_in_threadpool(store.get, job_id)
        snapshot = await run_in_threadpool(job_progress, store, job)
        if job.finished:
            yield format_event("done", snapshot)
            return
        signature = (snapshot["state"], snapshot["step"], snapshot["total"], snapshot["queue_position"])
        if signature != last:
            last = signature
            last_sent = time.monotonic()
            yield format_event("progress", snapshot)
        elif time.monotonic() - last_sent >= keepalive_seconds:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"
        if is_disconnected is not None and await is_disconnected():
            return
        await anyio.sleep(poll_seconds)
