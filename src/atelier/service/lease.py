"""A worker's hold on one job: the lease, kept alive from a background thread that also carries progress.

The engine's step callback only stores the latest progress in memory; the thread writes it every
``interval`` seconds, so progress reporting never slows the denoising loop down. When a heartbeat is refused
(the job was canceled, or the lease was lost because this worker stalled), :meth:`JobLease.should_stop` turns
true and the running job stops at its next step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from atelier.service.jobs import Job, JobStore

logger = logging.getLogger(__name__)


class JobInterrupted(Exception):
    """The job stopped before it finished: canceled, lease lost, or the worker is shutting down."""


@dataclass
class _Progress:
    step: int | None = None
    total: int | None = None
    info: dict[str, Any] | None = None


class JobLease:
    """Keeps one job's lease alive from a background thread and carries its progress to the database.

    The engine's step callback only stores the latest progress in memory; the thread writes it every
    ``interval`` seconds, so progress reporting never slows the denoising loop down.
    """

    def __init__(
        self,
        store: JobStore,
        job: Job,
        worker_id: str,
        *,
        lease_seconds: float,
        interval: float,
        worker_stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.job = job
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.interval = interval
        self._worker_stopping = worker_stopping
        self._progress = _Progress()
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._done = threading.Event()
        self.refused = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job.id}", daemon=True)

    def __enter__(self) -> JobLease:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        if self._dirty.is_set() and not self.refused.is_set():
            # The last steps since the previous beat, so a finished job shows step == total.
            try:
                self._beat()
            except Exception:
                logger.warning("final progress of job %s was not recorded", self.job.id, exc_info=True)

    def _beat(self) -> bool:
        """Write the latest progress and extend the lease; False once the job may not continue."""
        self._dirty.clear()
        with self._lock:
            progress = self._progress
        held = self.store.heartbeat(
            self.job.id,
            self.worker_id,
            lease_seconds=self.lease_seconds,
            step=progress.step,
            total=progress.total,
            info=progress.info,
        )
        if not held:
            self.refused.set()
        return held

    def report(self, step: int, total: int, info: Mapping[str, Any] | None = None) -> None:
        """Record progress (cheap; written by the heartbeat thread)."""
        with self._lock:
            self._progress = _Progress(step, total, dict(info) if info is not None else self._progress.info)
        self._dirty.set()

    def should_stop(self) -> bool:
        """True once the job must stop: canceled, lease lost, or the worker was told to abandon its job."""
        return self.refused.is_set() or self._worker_stopping()

    def _run(self) -> None:
        last_beat = time.monotonic()
        while not self._done.is_set():
            self._done.wait(self.interval)
            if self._done.is_set():
                return
            # Progress is written when it changed; otherwise only often enough to keep the lease.
            if not self._dirty.is_set() and time.monotonic() - last_beat < self.lease_seconds / 3:
                continue
            try:
                held = self._beat()
            except Exception:
                logger.warning("heartbeat for job %s failed; retrying", self.job.id, exc_info=True)
                continue
            last_beat = time.monotonic()
            if not held:
                return
