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

from atelier.service.database import utc_now
from atelier.service.jobs import MAX_LIST_LIMIT, Job, JobStore


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
        "waiting_for": waiting_for(store, job) if job.state == "queued" else None,
        # Time taken and pace of a finished generation (seconds, steps, seconds per step).
        "timings": job.result.get("timings") if isinstance(job.result, dict) else None,
        "attempts": job.attempts,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def waiting_for(store: JobStore, job: Job) -> dict[str, Any] | None:
    """Why a queued job waits: the running jobs of its lane, and a rough time until one of them finishes.

    ``reason`` reads like "training oue-windbreaker, ~6 min left". The estimate is the running job's own
    pace (time so far over steps done); it is absent until that job has done a step. Another user's prompt
    is never shown: a running generation is "another generation".
    """
    running = store.list(state="running", kind=job.kind, limit=MAX_LIST_LIMIT)
    if not running:
        return None
    now = utc_now()
    left = [seconds for seconds in (_seconds_left(other, now) for other in running) if seconds is not None]
    eta = min(left) if left else None
    first = running[-1]  # list() is newest first: the one running longest
    if first.kind == "train":
        what = f"training {train_name(first.payload)}"
    else:
        what = "another generation" if len(running) == 1 else f"{len(running)} other generations"
    reason = what if eta is None else f"{what}, ~{_duration(eta)} left"
    return {"reason": reason, "running": len(running), "eta_seconds": None if eta is None else round(eta, 1)}


def job_label(job: Job) -> dict[str, Any]:
    """What a person recognises a job by: a run's LoRA name; a generation's prompt (shortened), model, LoRAs."""
    payload = job.payload or {}
    if job.kind == "train":
        return {"name": train_name(payload), "base": payload.get("base")}
    if job.kind == "caption":
        return {"prompt": "Interrogate (caption a picture)", "model": payload.get("model"), "loras": []}
    if job.kind == "product":
        what = payload.get("product") or "a product"
        return {
            "prompt": f"Product shot: {what}, {payload.get('scene')}",
            "model": payload.get("model"),
            "loras": [],
        }
    prompt = str((payload.get("request") or {}).get("prompt") or "")
    short = prompt if len(prompt) <= 80 else prompt[:79].rstrip() + "…"
    return {"prompt": short, "model": payload.get("model"), "loras": list(payload.get("loras") or [])}


def train_name(payload: dict[str, Any]) -> str:
    """The name a training run is known by: its LoRA's name, else its zip's file name without ``.zip``."""
    name = payload.get("output_name") or ""
    if not name:
        data = str(payload.get("training_data") or "")
        name = data.rsplit("/", 1)[-1].removesuffix(".zip")
    return name or "a LoRA"


def _seconds_left(job: Job, now: Any) -> float | None:
    if job.started_at is None or not job.progress_step or not job.progress_total:
        return None
    elapsed = (now - job.started_at).total_seconds()
    return max(0.0, elapsed / job.progress_step * (job.progress_total - job.progress_step))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


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
        signature = (
            snapshot["state"],
            snapshot["step"],
            snapshot["total"],
            snapshot["queue_position"],
            (snapshot["waiting_for"] or {}).get("reason"),
            (snapshot["info"] or {}).get("preview_step"),
        )
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
