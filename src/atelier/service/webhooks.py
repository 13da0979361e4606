"""Webhooks: a URL per job, called once the job has finished, retried with exponential backoff.

When a job with a webhook is submitted, a delivery row is written next to it. A dispatcher (running in
``atelier serve``) picks deliveries whose job has finished, POSTs the job as JSON, and on failure (connection
error, timeout, 5xx, 408, 429) tries again after 1 s, 2 s, 4 s, ... until the attempts run out. Several
dispatchers may run against one database: each takes a delivery with a short lease before sending, so a
finished job is announced once (at least once if a dispatcher dies in the middle of a request).

The body is ``{"event": "job.finished", "job": {...}}`` with the job's id, kind, state, error and result;
headers ``X-Atelier-Event`` and ``X-Atelier-Job`` repeat the event and the job id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from atelier import __version__
from atelier.service.database import UtcDateTime, metadata, migrate, utc_now, write_engine
from atelier.service.jobs import FINISHED_STATES, jobs_table

logger = logging.getLogger(__name__)

DELIVERY_STATES = ("waiting", "delivered", "failed")
MAX_BACKOFF_SECONDS = 600.0
RETRIED_STATUSES = frozenset({408, 425, 429})

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


@dataclass(frozen=True)
class Delivery:
    job_id: str
    url: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


Sender = Callable[[str, dict[str, Any], dict[str, str], float], int]


def post_json(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> int:
    """POST ``body`` as JSON and return the status code (raises on connection errors and timeouts)."""
    response = httpx.post(url, json=body, headers=headers, timeout=timeout, follow_redirects=False)
    return response.status_code


class WebhookDeliveries:
    """The delivery table and the logic that sends due deliveries."""

    def __init__(
        self,
        engine: Engine,
        *,
        attempts: int = 6,
        backoff_seconds: float = 1.0,
        timeout_seconds: float = 10.0,
        send: Sender = post_json,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.engine = engine
        self._write_engine = write_engine(engine)
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self._send = send
        self._clock = clock
        migrate(engine)

    def expect(self, job_id: str, url: str) -> None:
        """Record that ``job_id`` must be announced to ``url`` once it finishes."""
        now = self._clock()
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        with self.engine.begin() as conn:
            conn.execute(
                insert(deliveries_table)
                .values(
                    job_id=job_id,
                    url=url,
                    state="waiting",
                    attempts=0,
                    next_attempt_at=now,
                    last_status=None,
                    last_error=None,
                    created_at=now,
                    delivered_at=None,
                )
                .on_conflict_do_nothing()
            )

    def get(self, job_id: str) -> Delivery | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(deliveries_table).where(deliveries_table.c.job_id == job_id)
            ).one_or_none()
        return None if row is None else Delivery(**row._mapping)

    def _take_due(self, limit: int) -> list[tuple[Delivery, dict[str, Any]]]:
        """Lease up to ``limit`` due deliveries of finished jobs to this dispatcher; return them with their jobs."""
        now = self._clock()
        finished = jobs_table.c.state.in_(sorted(FINISHED_STATES))
        query = (
            sa.select(deliveries_table.c.job_id)
            .join(jobs_table, jobs_table.c.id == deliveries_table.c.job_id)
            .where(deliveries_table.c.state == "waiting", deliveries_table.c.next_attempt_at <= now, finished)
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
            # The lease: other dispatchers skip these until the request has had time to finish.
            conn.execute(
                deliveries_table.update()
                .where(deliveries_table.c.job_id.in_(ids))
                .values(
                    attempts=deliveries_table.c.attempts + 1,
                    next_attempt_at=now + timedelta(seconds=self.timeout_seconds * 2 + 5),
                )
            )
            rows = conn.execute(
                sa.select(deliveries_table, jobs_table)
                .join(jobs_table, jobs_table.c.id == deliveries_table.c.job_id)
                .where(deliveries_table.c.job_id.in_(ids))
            ).all()
        taken = []
        for row in rows:
            values = row._mapping
            delivery = Delivery(**{column.name: values[column] for column in deliveries_table.c})
            job = {
                "id": values[jobs_table.c.id],
                "kind": values[jobs_table.c.kind],
                "state": values[jobs_table.c.state],
                "error": values[jobs_table.c.error],
                "result": values[jobs_table.c.result],
                "attempts": values[jobs_table.c.attempts],
                "created_at": _iso(values[jobs_table.c.created_at]),
                "started_at": _iso(values[jobs_table.c.started_at]),
                "finished_at": _iso(values[jobs_table.c.finished_at]),
            }
            taken.append((delivery, job))
        return taken

    def deliver_due(self, limit: int = 20) -> int:
        """Send every due delivery (up to ``limit``); return how many were attempted."""
        taken = self._take_due(limit)
        for delivery, job in taken:
            self._deliver(delivery, job)
        return len(taken)

    def _deliver(self, delivery: Delivery, job: dict[str, Any]) -> None:
        body = {"event": "job.finished", "job": job}
        headers = {
            "User-Agent": f"atelier/{__version__}",
            "X-Atelier-Event": "job.finished",
            "X-Atelier-Job": delivery.job_id,
        }
        status: int | None = None
        try:
            status = self._send(delivery.url, body, headers, self.timeout_seconds)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        now = self._clock()
        if error is None:
            values: dict[str, Any] = {"state": "delivered", "delivered_at": now, "last_status": status}
            logger.info("webhook for job %s delivered to %s", delivery.job_id, delivery.url)
        else:
            retry = status is None or status >= 500 or status in RETRIED_STATUSES
            if retry and delivery.attempts < self.attempts:
                wait = min(self.backoff_seconds * 2 ** (delivery.attempts - 1), MAX_BACKOFF_SECONDS)
                values = {"next_attempt_at": now + timedelta(seconds=wait)}
                logger.info(
                    "webhook for job %s failed (%s); retry %d in %.1fs",
                    delivery.job_id,
                    error,
                    delivery.attempts,
                    wait,
                )
            else:
                values = {"state": "failed"}
                logger.warning(
                    "webhook for job %s gave up after %d attempts: %s",
                    delivery.job_id,
                    delivery.attempts,
                    error,
                )
            values.update(last_status=status, last_error=error)
        with self.engine.begin() as conn:
            conn.execute(
                deliveries_table.update().where(deliveries_table.c.job_id == delivery.job_id).values(**values)
            )

    def run(self, stop: threading.Event, interval: float) -> None:
        """Deliver until ``stop`` is set (for a background thread)."""
        while not stop.is_set():
            try:
                sent = self.deliver_due()
            except Exception:
                logger.exception("webhook dispatcher failed; continuing")
                sent = 0
            if not sent:
                stop.wait(interval)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
