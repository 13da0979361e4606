"""What a job is: its kinds and states, the :class:`Job` record, and the :class:`JobStore` interface.

Generate and train jobs wait in a durable queue (:mod:`atelier.service.job_store` keeps it in SQLite or
PostgreSQL). A worker holds a job through a lease it renews with heartbeats; a worker that dies stops
heartbeating and, once the lease expires, the job goes back to the queue or fails when its attempts are used
up. Every call that finishes a job checks that the caller still holds it, so a worker presumed dead cannot
overwrite the job's new run.

The API, the workers, the webhook dispatcher and the metrics all use the queue through :class:`JobStore`;
only its SQL implementation touches the tables.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from atelier.service.database import json_row

JOB_KINDS = ("generate", "train", "caption", "product")
JOB_STATES = ("queued", "running", "succeeded", "failed", "canceled")
FINISHED_STATES = frozenset({"succeeded", "failed", "canceled"})

MAX_LEASE_SECONDS = 24 * 3600
MAX_PRIORITY = 1_000_000
MAX_LIST_LIMIT = 1000
DELIVERY_STATES = ("waiting", "delivered", "failed")


@dataclass(frozen=True)
class Job:
    """One generate or train job as stored in the queue. Datetimes are timezone-aware UTC."""

    id: str
    kind: str
    state: str
    priority: int
    payload: dict[str, Any]
    result: Any
    error: str | None
    owner: str | None
    attempts: int
    max_attempts: int
    progress_step: int | None
    progress_total: int | None
    progress_info: dict[str, Any]
    cancel_requested: bool
    worker_id: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    webhook_url: str | None
    queued_at: datetime
    # Set with cancel_requested by A1111's interrupt: stop at the next step but keep the picture so far.
    keep_partial: bool = False

    @property
    def finished(self) -> bool:
        """True once the job reached a final state (succeeded, failed or canceled)."""
        return self.state in FINISHED_STATES

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-safe values, datetimes as ISO 8601 strings."""
        return json_row(self)


@dataclass(frozen=True)
class JobTiming:
    """When a finished job was queued, started and finished (for latency metrics)."""

    id: str
    kind: str
    state: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime


@dataclass(frozen=True)
class JobStatus:
    """A job's state and progress, which is all a waiting request looks at."""

    id: str
    state: str
    progress_step: int | None
    progress_total: int | None
    started_at: datetime | None


@dataclass(frozen=True)
class Delivery:
    """A job's webhook: where it goes and how delivering it went."""

    job_id: str
    url: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class JobStore(Protocol):
    """What the API and the workers need from a job queue."""

    def submit(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        priority: int = 0,
        owner: str | None = None,
        max_attempts: int = 3,
        webhook_url: str | None = None,
        job_id: str | None = None,
    ) -> Job: ...

    def get(self, job_id: str) -> Job: ...

    def list(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        offset: int = 0,
        owner: str | None = None,
    ) -> list[Job]: ...

    def claim(
        self, worker_id: str, *, kinds: Iterable[str] | None = None, lease_seconds: float = 60
    ) -> Job | None: ...

    def heartbeat(
        self,
        job_id: str,
        worker_id: str,
        *,
        lease_seconds: float = 60,
        step: int | None = None,
        total: int | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> bool: ...

    def complete(self, job_id: str, worker_id: str, result: Any) -> bool: ...

    def fail(self, job_id: str, worker_id: str, error: str, *, retry: bool = True) -> bool: ...

    def release(self, job_id: str, worker_id: str, note: str) -> bool: ...

    def retry(self, job_id: str) -> Job: ...

    def cancel(self, job_id: str, *, keep_partial: bool = False) -> Job: ...

    def mark_canceled(self, job_id: str, worker_id: str) -> bool: ...

    def queue_position(self, job_id: str) -> int | None: ...

    def counts(self) -> dict[str, int]: ...

    def requeue_expired(self) -> int: ...

    def has_queued(self, kinds: Iterable[str]) -> bool: ...

    def statuses(self, job_ids: Iterable[str]) -> builtins.list[JobStatus]: ...

    def counts_by_kind(self) -> dict[tuple[str, str], int]: ...

    def finished_since(self, since: datetime) -> builtins.list[JobTiming]: ...

    def delivery(self, job_id: str) -> Delivery | None: ...

    def take_due_deliveries(
        self, limit: int, *, hold_seconds: float
    ) -> builtins.list[tuple[Delivery, Job]]: ...

    def record_delivery(self, job_id: str, **values: Any) -> None: ...

    def close(self) -> None: ...
