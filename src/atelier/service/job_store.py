"""The durable job queue in SQLite or PostgreSQL: the one place that reads and writes the jobs table.

One SQLAlchemy Core implementation serves both databases, chosen by URL (:func:`open_job_store`):

- ``sqlite:///path/to/atelier.db``: one machine, several processes. WAL mode lets readers run while a
  worker writes; every read-then-write transaction starts with ``BEGIN IMMEDIATE`` so two claimers queue
  on the write lock instead of both reading the same job.
- ``postgresql://user@host/db``: several machines. Claimers pick a row with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` so they never wait on, or take, each other's job.

A worker holds a job through a lease: :meth:`SqlJobStore.claim` sets ``lease_expires_at`` and
:meth:`SqlJobStore.heartbeat` pushes it forward. A worker that dies stops heartbeating; once its lease
expires the job goes back to the queue (or fails when its attempts are used up). Every call that finishes a
job checks that the caller still holds it, so a worker presumed dead cannot overwrite the job's new run.
Worker ids must therefore be unique per running worker (for example ``host-pid-random``).
"""

from __future__ import annotations

import builtins
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from atelier.errors import AtelierError, ConflictError, NotFoundError
from atelier.service.database import UtcDateTime, metadata, migrate, open_database, utc_now, write_engine
from atelier.service.jobs import (
    FINISHED_STATES,
    JOB_KINDS,
    JOB_STATES,
    MAX_LEASE_SECONDS,
    MAX_LIST_LIMIT,
    MAX_PRIORITY,
    Delivery,
    Job,
    JobStatus,
    JobTiming,
)

_JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")

# ---------------------------------------------------------------------------------------------------------
# Jobs.

_nullable_json = sa.JSON(none_as_null=True)
jobs_table = sa.Table(
    "jobs",
    metadata,
    # Integer key gives a strict insertion order to break ties between jobs created in the same instant.
    sa.Column(
        "seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("result", _nullable_json),
    sa.Column("error", sa.Text),
    sa.Column("owner", sa.String(200)),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("progress_step", sa.Integer),
    sa.Column("progress_total", sa.Integer),
    sa.Column("progress_info", sa.JSON, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("worker_id", sa.String(200)),
    sa.Column("lease_expires_at", UtcDateTime),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("started_at", UtcDateTime),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("webhook_url", sa.Text),
    # When the job last entered the queue: a retry waits behind the jobs already queued.
    sa.Column("queued_at", UtcDateTime, nullable=False),
    sa.Column("keep_partial", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_jobs_queue_order", "state", "priority", "queued_at", "seq"),
    sa.Index("ix_jobs_lease", "state", "lease_expires_at"),
    sa.Index("ix_jobs_created", "created_at"),
)
_QUEUE_ORDER = (jobs_table.c.priority.desc(), jobs_table.c.queued_at.asc(), jobs_table.c.seq.asc())

deliveries_table = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("delivered_at", UtcDateTime),
    sa.Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
)

_JOB_FIELDS = tuple(field.name for field in fields(Job))


def _job_from_row(row: sa.Row[Any]) -> Job:
    values = {name: row._mapping[name] for name in _JOB_FIELDS}
    values["cancel_requested"] = bool(values["cancel_requested"])
    values["keep_partial"] = bool(values["keep_partial"])
    return Job(**values)


def _check_choice(value: object, choices: tuple[str, ...], field: str) -> str:
    if value not in choices:
        raise AtelierError(f"{field} must be one of {', '.join(choices)}, got {value!r}", field=field)
    return value


def _check_int(value: object, field: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AtelierError(f"{field} must be a whole number from {low} to {high}, got {value!r}", field=field)
    return value


def _check_json(value: Any, field: str) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AtelierError(f"{field} must be JSON-serialisable: {exc}", field=field) from None
    return value


def _check_json_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise AtelierError(f"{field} must be a JSON object, got {type(value).__name__}", field=field)
    return _check_json(dict(value), field)


def _check_worker_id(worker_id: object) -> str:
    if not isinstance(worker_id, str) or not 1 <= len(worker_id) <= 200:
        raise AtelierError(
            "worker_id must be a non-empty string of at most 200 characters", field="worker_id"
        )
    return worker_id


def _lease(lease_seconds: object) -> timedelta:
    if (
        isinstance(lease_seconds, bool)
        or not isinstance(lease_seconds, int | float)
        or not 0 < lease_seconds <= MAX_LEASE_SECONDS
    ):
        raise AtelierError(
            f"lease_seconds must be a number above 0 and at most {MAX_LEASE_SECONDS}, got {lease_seconds!r}",
            field="lease_seconds",
        )
    return timedelta(seconds=lease_seconds)


class SqlJobStore:
    """The job queue on a SQLAlchemy engine from :func:`open_database` (SQLite or PostgreSQL).

    ``clock`` returns the current aware datetime; tests pass a fake one to expire leases without waiting.
    All workers sharing a database should have roughly synchronised clocks, as leases compare their times.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self._write_engine = write_engine(engine)
        self._clock = clock
        migrate(engine)

    def close(self) -> None:
        """Close the pooled connections (of the shared engine too, if a ledger uses it)."""
        self.engine.dispose()

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

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
    ) -> Job:
        """Queue a new job and return it."""
        _check_choice(kind, JOB_KINDS, "kind")
        payload = _check_json_object(payload, "payload")
        _check_int(priority, "priority", low=-MAX_PRIORITY, high=MAX_PRIORITY)
        _check_int(max_attempts, "max_attempts", low=1, high=100)
        if owner is not None and (not isinstance(owner, str) or len(owner) > 200):
            raise AtelierError("owner must be a string of at most 200 characters", field="owner")
        if webhook_url is not None and (
            not isinstance(webhook_url, str) or not webhook_url.startswith(("http://", "https://"))
        ):
            raise AtelierError(
                f"webhook_url must be an http(s) URL, got {webhook_url!r}", field="webhook_url"
            )
        if job_id is None:
            job_id = uuid.uuid4().hex
        elif not isinstance(job_id, str) or not _JOB_ID_PATTERN.fullmatch(job_id):
            raise AtelierError(
                "job_id must be 1 to 64 letters, digits, '-' or '_'",
                field="job_id",
            )
        now = self._now()
        statement = (
            jobs_table.insert()
            .values(
                id=job_id,
                kind=kind,
                state="queued",
                priority=priority,
                payload=payload,
                result=None,
                error=None,
                owner=owner,
                attempts=0,
                max_attempts=max_attempts,
                progress_step=None,
                progress_total=None,
                progress_info={},
                cancel_requested=False,
                worker_id=None,
                lease_expires_at=None,
                created_at=now,
                started_at=None,
                finished_at=None,
                webhook_url=webhook_url,
                queued_at=now,
            )
            .returning(*jobs_table.c)
        )
        try:
            # One transaction: a crash can never leave a job whose webhook was forgotten.
            with self.engine.begin() as conn:
                row = conn.execute(statement).one()
                if webhook_url is not None:
                    conn.execute(
                        deliveries_table.insert().values(
                            job_id=job_id,
                            url=webhook_url,
                            state="waiting",
                            attempts=0,
                            next_attempt_at=now,
                            last_status=None,
                            last_error=None,
                            created_at=now,
                            delivered_at=None,
                        )
                    )
        except IntegrityError:
            raise AtelierError(f"a job with id {job_id!r} already exists", field="job_id") from None
        return _job_from_row(row)

    def get(self, job_id: str) -> Job:
        """The job with this id; :class:`NotFoundError` if there is none."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs_table).where(jobs_table.c.id == job_id)).one_or_none()
        if row is None:
            raise NotFoundError(f"job {job_id!r} not found", field="job_id")
        return _job_from_row(row)

    def list(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        offset: int = 0,
        owner: str | None = None,
    ) -> list[Job]:
        """Jobs, newest first, optionally only those in one state, of one kind, or of one owner."""
        query = sa.select(jobs_table)
        if owner is not None:
            query = query.where(jobs_table.c.owner == owner)
        if state is not None:
            query = query.where(jobs_table.c.state == _check_choice(state, JOB_STATES, "state"))
        if kind is not None:
            query = query.where(jobs_table.c.kind == _check_choice(kind, JOB_KINDS, "kind"))
        _check_int(limit, "limit", low=1, high=MAX_LIST_LIMIT)
        _check_int(offset, "offset", low=0, high=2**62)
        query = query.order_by(jobs_table.c.created_at.desc(), jobs_table.c.seq.desc())
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).all()
        return [_job_from_row(row) for row in rows]

    def claim(
        self, worker_id: str, *, kinds: Iterable[str] | None = None, lease_seconds: float = 60
    ) -> Job | None:
        """Take the next queued job (highest priority, then oldest) for this worker, or None if none waits.

        Jobs of workers whose lease expired are put back in the queue first.
        """
        _check_worker_id(worker_id)
        lease = _lease(lease_seconds)
        if isinstance(kinds, str):
            kinds = [kinds]
        wanted_kinds = None if kinds is None else [_check_choice(k, JOB_KINDS, "kinds") for k in kinds]
        query = sa.select(jobs_table.c.seq).where(jobs_table.c.state == "queued")
        if wanted_kinds is not None:
            query = query.where(jobs_table.c.kind.in_(wanted_kinds))
        query = query.order_by(*_QUEUE_ORDER).limit(1).with_for_update(skip_locked=True)
        with self._write_engine.begin() as conn:
            now = self._now()
            self._requeue_expired(conn, now)
            seq = conn.execute(query).scalar_one_or_none()
            if seq is None:
                return None
            row = conn.execute(
                jobs_table.update()
                .where(jobs_table.c.seq == seq)
                .values(
                    state="running",
                    worker_id=worker_id,
                    lease_expires_at=now + lease,
                    started_at=now,
                    attempts=jobs_table.c.attempts + 1,
                    progress_step=None,
                    progress_total=None,
                    progress_info={},
                )
                .returning(*jobs_table.c)
            ).one()
        return _job_from_row(row)

    def _update_held(self, conn: Connection, job_id: str, worker_id: str, values: dict[str, Any]) -> bool:
        """Update a running job only if ``worker_id`` still holds it; False if the lease was lost."""
        result = conn.execute(
            jobs_table.update()
            .where(
                jobs_table.c.id == job_id,
                jobs_table.c.worker_id == worker_id,
                jobs_table.c.state == "running",
            )
            .values(**values)
        )
        return result.rowcount == 1

    def heartbeat(
        self,
        job_id: str,
        worker_id: str,
        *,
        lease_seconds: float = 60,
        step: int | None = None,
        total: int | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> bool:
        """Extend the lease and record progress. False means stop: the job was canceled or the lease lost.

        ``step``/``total`` are left as they were when None; ``info`` replaces the previous progress_info.
        """
        lease = _lease(lease_seconds)
        values: dict[str, Any] = {"lease_expires_at": self._now() + lease}
        if step is not None:
            values["progress_step"] = _check_int(step, "step", low=0, high=2**31 - 1)
        if total is not None:
            values["progress_total"] = _check_int(total, "total", low=0, high=2**31 - 1)
        if info is not None:
            values["progress_info"] = _check_json_object(info, "info")
        with self.engine.begin() as conn:
            result = conn.execute(
                jobs_table.update()
                .where(
                    jobs_table.c.id == job_id,
                    jobs_table.c.worker_id == worker_id,
                    jobs_table.c.state == "running",
                    jobs_table.c.cancel_requested == sa.false(),
                )
                .values(**values)
            )
        return result.rowcount == 1

    def complete(self, job_id: str, worker_id: str, result: Any) -> bool:
        """Mark the job succeeded with ``result``. False (and nothing changes) if the worker lost the job."""
        values = {
            "state": "succeeded",
            "result": _check_json(result, "result"),
            "error": None,
            "finished_at": self._now(),
            "lease_expires_at": None,
        }
        with self.engine.begin() as conn:
            return self._update_held(conn, job_id, worker_id, values)

    def fail(self, job_id: str, worker_id: str, error: str, *, retry: bool = True) -> bool:
        """Record a failed attempt: requeue while attempts remain (and ``retry``), else mark failed.

        A job whose cancel was requested is not retried. False (and nothing changes) if the worker lost it.
        """
        if not isinstance(error, str):
            raise AtelierError("error must be a string", field="error")
        requeue = sa.and_(
            sa.true() if retry else sa.false(),
            jobs_table.c.cancel_requested == sa.false(),
            jobs_table.c.attempts < jobs_table.c.max_attempts,
        )
        now = sa.literal(self._now(), UtcDateTime)
        values = {
            "state": sa.case((requeue, "queued"), else_="failed"),
            "finished_at": sa.case((requeue, None), else_=now),
            # A retry waits behind the jobs already queued.
            "queued_at": sa.case((requeue, now), else_=jobs_table.c.queued_at),
            "error": error,
            "worker_id": None,
            "lease_expires_at": None,
        }
        with self.engine.begin() as conn:
            return self._update_held(conn, job_id, worker_id, values)

    def release(self, job_id: str, worker_id: str, note: str) -> bool:
        """Hand a running job back to the queue, unfinished and without using up an attempt.

        For a worker that is stopping (scale-down, a deploy): the job did nothing wrong, so it keeps its
        attempts and its place in the queue (``queued_at`` is unchanged) and runs next on another worker. A job
        whose cancel was requested is marked canceled instead. False if the worker no longer held it.
        """
        canceled = jobs_table.c.cancel_requested == sa.true()
        now = sa.literal(self._now(), UtcDateTime)
        values = {
            "state": sa.case((canceled, "canceled"), else_="queued"),
            "finished_at": sa.case((canceled, now), else_=None),
            "attempts": sa.case((canceled, jobs_table.c.attempts), else_=jobs_table.c.attempts - 1),
            "error": sa.case((canceled, jobs_table.c.error), else_=note),
            "worker_id": None,
            "lease_expires_at": None,
        }
        with self.engine.begin() as conn:
            return self._update_held(conn, job_id, worker_id, values)

    def retry(self, job_id: str) -> Job:
        """Queue a failed or canceled job again, with fresh attempts, behind the jobs already queued.

        The job keeps its id, so its outputs keep their names and a training run finds the state it saved when
        it was stopped. :class:`ConflictError` for a job that is queued, running or succeeded.
        """
        with self._write_engine.begin() as conn:
            moved = conn.execute(
                jobs_table.update()
                .where(jobs_table.c.id == job_id, jobs_table.c.state.in_(("failed", "canceled")))
                .values(
                    state="queued",
                    attempts=0,
                    cancel_requested=False,
                    keep_partial=False,
                    error=None,
                    result=None,
                    worker_id=None,
                    lease_expires_at=None,
                    started_at=None,
                    finished_at=None,
                    queued_at=self._now(),
                )
            ).rowcount
        job = self.get(job_id)
        if not moved:
            raise ConflictError(
                f"job {job_id} is {job.state}: only failed or canceled jobs can be queued again",
                field="job_id",
            )
        return job

    def cancel(self, job_id: str, *, keep_partial: bool = False) -> Job:
        """Cancel a job: a queued one at once, a running one by asking its worker (seen at its next heartbeat).

        ``keep_partial`` (A1111's interrupt): a running generation stops at its next step but finishes with the
        picture as it is then, instead of nothing. Finished jobs are returned unchanged. :class:`NotFoundError`
        for an unknown id.
        """
        with self._write_engine.begin() as conn:
            conn.execute(
                jobs_table.update()
                .where(jobs_table.c.id == job_id, jobs_table.c.state == "queued")
                .values(state="canceled", finished_at=self._now())
            )
            conn.execute(
                jobs_table.update()
                .where(jobs_table.c.id == job_id, jobs_table.c.state == "running")
                .values(cancel_requested=True, keep_partial=keep_partial)
            )
        return self.get(job_id)

    def mark_canceled(self, job_id: str, worker_id: str) -> bool:
        """The worker confirms it stopped a job after a cancel request. False if it no longer held the job."""
        values = {"state": "canceled", "finished_at": self._now(), "lease_expires_at": None}
        with self.engine.begin() as conn:
            return self._update_held(conn, job_id, worker_id, values)

    def queue_position(self, job_id: str) -> int | None:
        """How many queued jobs of its kind run before this one (0: next), or None if it is not queued.

        Only the same kind counts: generation and training have workers of their own (the supervisor's
        lanes), so a queued training run does not hold a generation back.
        """
        with self.engine.connect() as conn:
            job = conn.execute(
                sa.select(
                    jobs_table.c.state,
                    jobs_table.c.kind,
                    jobs_table.c.priority,
                    jobs_table.c.queued_at,
                    jobs_table.c.seq,
                ).where(jobs_table.c.id == job_id)
            ).one_or_none()
            if job is None:
                raise NotFoundError(f"job {job_id!r} not found", field="job_id")
            if job.state != "queued":
                return None
            same_priority_earlier = sa.and_(
                jobs_table.c.priority == job.priority,
                sa.or_(
                    jobs_table.c.queued_at < job.queued_at,
                    sa.and_(jobs_table.c.queued_at == job.queued_at, jobs_table.c.seq < job.seq),
                ),
            )
            ahead = conn.execute(
                sa.select(sa.func.count())
                .select_from(jobs_table)
                .where(
                    jobs_table.c.state == "queued",
                    jobs_table.c.kind == job.kind,
                    sa.or_(jobs_table.c.priority > job.priority, same_priority_earlier),
                )
            ).scalar_one()
        return int(ahead)

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zeros included)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(jobs_table.c.state, sa.func.count()).group_by(jobs_table.c.state)
            ).all()
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update({state: int(count) for state, count in rows})
        return counts

    def requeue_expired(self) -> int:
        """Return running jobs whose lease expired to the queue (or fail/cancel them); how many were moved."""
        with self._write_engine.begin() as conn:
            return self._requeue_expired(conn, self._now())

    def _requeue_expired(self, conn: Connection, now: datetime) -> int:
        # SKIP LOCKED: a job another claimer is already requeueing is left to it, so none waits or deadlocks.
        expired = conn.execute(
            sa.select(
                jobs_table.c.seq,
                jobs_table.c.worker_id,
                jobs_table.c.attempts,
                jobs_table.c.max_attempts,
                jobs_table.c.cancel_requested,
            )
            .where(jobs_table.c.state == "running", jobs_table.c.lease_expires_at < now)
            .with_for_update(skip_locked=True)
        ).all()
        for job in expired:
            lost = (
                f"worker {job.worker_id} stopped sending heartbeats and its lease expired "
                f"(attempt {job.attempts} of {job.max_attempts})"
            )
            if job.cancel_requested:
                values: dict[str, Any] = {"state": "canceled", "finished_at": now}
            elif job.attempts >= job.max_attempts:
                values = {"state": "failed", "finished_at": now, "error": lost}
            else:
                # At the back of the queue: a job that was first in line during a crash loop does not meet
                # every crash first.
                values = {"state": "queued", "error": lost, "queued_at": now}
            conn.execute(
                jobs_table.update()
                .where(jobs_table.c.seq == job.seq, jobs_table.c.state == "running")
                .values(worker_id=None, lease_expires_at=None, **values)
            )
        return len(expired)

    # -- what the rest of the service reads ----------------------------------------------------------------

    def has_queued(self, kinds: Iterable[str]) -> bool:
        """Whether a job of one of ``kinds`` waits: a read-only look, so polling never takes SQLite's write lock."""
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(jobs_table.c.seq)
                .where(jobs_table.c.state == "queued", jobs_table.c.kind.in_(list(kinds)))
                .limit(1)
            ).first()
        return found is not None

    def statuses(self, job_ids: Iterable[str]) -> builtins.list[JobStatus]:
        """State and progress of these jobs (unknown ids are left out), in one query."""
        columns = (
            jobs_table.c.id,
            jobs_table.c.state,
            jobs_table.c.progress_step,
            jobs_table.c.progress_total,
            jobs_table.c.started_at,
        )
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*columns).where(jobs_table.c.id.in_(list(job_ids)))).all()
        return [JobStatus(**row._mapping) for row in rows]

    def counts_by_kind(self) -> dict[tuple[str, str], int]:
        """Number of jobs per (state, kind), every pair present, zeros included."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(jobs_table.c.state, jobs_table.c.kind, sa.func.count()).group_by(
                    jobs_table.c.state, jobs_table.c.kind
                )
            ).all()
        counts = {(state, kind): 0 for state in JOB_STATES for kind in JOB_KINDS}
        counts.update({(state, kind): int(count) for state, kind, count in rows})
        return counts

    def finished_since(self, since: datetime) -> builtins.list[JobTiming]:
        """Jobs that finished at or after ``since``, oldest first."""
        columns = (
            jobs_table.c.id,
            jobs_table.c.kind,
            jobs_table.c.state,
            jobs_table.c.created_at,
            jobs_table.c.started_at,
            jobs_table.c.finished_at,
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(*columns)
                .where(jobs_table.c.state.in_(sorted(FINISHED_STATES)), jobs_table.c.finished_at >= since)
                .order_by(jobs_table.c.finished_at)
            ).all()
        return [JobTiming(**row._mapping) for row in rows]

    # -- webhook deliveries (written with their job, see submit) ------------------------------------------------

    def delivery(self, job_id: str) -> Delivery | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(deliveries_table).where(deliveries_table.c.job_id == job_id)
            ).one_or_none()
        return None if row is None else Delivery(**row._mapping)

    def take_due_deliveries(self, limit: int, *, hold_seconds: float) -> builtins.list[tuple[Delivery, Job]]:
        """Deliveries due now whose job finished, held for ``hold_seconds`` so no other dispatcher sends them.

        Each taken delivery counts one attempt. Several dispatchers may share the database: a finished job is
        announced once (at least once, if a dispatcher dies in the middle of a request).
        """
        now = self._now()
        query = (
            sa.select(deliveries_table.c.job_id)
            .join(jobs_table, jobs_table.c.id == deliveries_table.c.job_id)
            .where(
                deliveries_table.c.state == "waiting",
                deliveries_table.c.next_attempt_at <= now,
                jobs_table.c.state.in_(sorted(FINISHED_STATES)),
            )
            .order_by(deliveries_table.c.next_attempt_at)
            .limit(limit)
        )
        # A read-only look first, so an idle dispatcher never takes SQLite's write lock.
        with self.engine.connect() as conn:
            if conn.execute(query).first() is None:
                return []
        with self._write_engine.begin() as conn:
            ids = list(conn.execute(query.with_for_update(of=deliveries_table, skip_locked=True)).scalars())
            if not ids:
                return []
            conn.execute(
                deliveries_table.update()
                .where(deliveries_table.c.job_id.in_(ids))
                .values(
                    attempts=deliveries_table.c.attempts + 1,
                    next_attempt_at=now + timedelta(seconds=hold_seconds),
                )
            )
            deliveries = conn.execute(
                sa.select(deliveries_table).where(deliveries_table.c.job_id.in_(ids))
            ).all()
            jobs = conn.execute(sa.select(jobs_table).where(jobs_table.c.id.in_(ids))).all()
        by_id = {row.id: _job_from_row(row) for row in jobs}
        return [(Delivery(**row._mapping), by_id[row.job_id]) for row in deliveries]

    def record_delivery(self, job_id: str, **values: Any) -> None:
        """Store how a delivery attempt went (state, last_status, last_error, next_attempt_at, delivered_at)."""
        with self.engine.begin() as conn:
            conn.execute(
                deliveries_table.update().where(deliveries_table.c.job_id == job_id).values(**values)
            )


def open_job_store(url: str, *, clock: Callable[[], datetime] = utc_now) -> SqlJobStore:
    """Open (creating tables if needed) the job queue at a ``sqlite:///`` or ``postgresql://`` URL."""
    return SqlJobStore(open_database(url), clock=clock)
