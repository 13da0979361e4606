"""Local worker processes, scaled on queue depth: the seed's "auto-scaling based on the request queue size".

``atelier serve --min-workers A --max-workers B`` keeps between A and B ``atelier worker`` processes on this
machine. Every tick it wants one worker per job that is queued or running on its workers, clamped to
[min, max], and starts processes up to that number at once. When nothing has been queued for
``scale_down_after`` seconds it stops idle workers beyond the minimum (never one running a job), down to zero
when the minimum is zero. A worker that crashes is replaced on the next tick.

On a cluster the same role is played by an external autoscaler reading ``atelier_queue_depth`` from
``/metrics`` (see docs/service.md); both can be combined.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from atelier.service.config import StudioConfig
from atelier.service.database import utc_now
from atelier.service.jobs import JobStore

logger = logging.getLogger(__name__)

Spawn = Callable[[str], subprocess.Popen[bytes]]


def worker_command(config: StudioConfig, worker_id: str, *, parent_pid: int | None = None) -> list[str]:
    """The command line of a local worker process for ``config``."""
    command = [
        sys.executable,
        "-m",
        "atelier",
        "worker",
        "--db",
        config.database_url,
        "--storage",
        config.storage_url,
        "--cache",
        str(config.cache_dir),
        "--worker-id",
        worker_id,
        "--lease",
        str(config.lease_seconds),
        "--poll",
        str(config.poll_seconds),
        "--progress",
        str(config.progress_seconds),
    ]
    if config.storage_endpoint_url:
        command += ["--s3-endpoint", config.storage_endpoint_url]
    if config.device:
        command += ["--device", config.device]
    threads = worker_threads(config)
    if threads is not None:
        command += ["--threads", str(threads)]
    if parent_pid is not None:
        command += ["--parent-pid", str(parent_pid)]
    return command


def worker_threads(config: StudioConfig) -> int | None:
    """CPU threads per local worker when several may compute on this machine's cores at once.

    Workers that each use every core fight over them: OpenMP threads spin while waiting for each other, and a
    generation gets many times slower instead of half as fast. GPU workers leave the default.
    """
    if config.max_workers <= 1 or (config.device or "cpu").startswith("cuda"):
        return None
    if config.device is None and _cuda_available():
        return None
    return max(1, (os.cpu_count() or 1) // config.max_workers)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def spawn_worker_process(config: StudioConfig) -> Spawn:
    """A spawn function starting ``atelier worker`` processes that exit when this process goes away."""

    def spawn(worker_id: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(worker_command(config, worker_id, parent_pid=os.getpid()))

    return spawn


@dataclass
class _Managed:
    process: subprocess.Popen[bytes]
    started_at: float
    stopping_since: float | None = None


class WorkerSupervisor:
    """Starts and stops local worker processes between ``min_workers`` and ``max_workers`` on queue depth."""

    def __init__(
        self,
        store: JobStore,
        *,
        min_workers: int,
        max_workers: int,
        spawn: Spawn,
        scale_down_after: float = 30.0,
        stop_grace_seconds: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.min_workers = min_workers
        self.max_workers = max_workers
        self.spawn = spawn
        self.scale_down_after = scale_down_after
        self.stop_grace_seconds = stop_grace_seconds
        self._monotonic = monotonic
        self._workers: dict[str, _Managed] = {}
        self._lock = threading.Lock()
        self._idle_since: float | None = None
        self.started_total = 0

    @property
    def worker_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._workers)

    def pid(self, worker_id: str) -> int | None:
        """The process id of a supervised worker (for operators and tests), None if it is not ours."""
        with self._lock:
            managed = self._workers.get(worker_id)
            return None if managed is None else managed.process.pid

    def counts(self) -> dict[str, int]:
        """Supervised processes: running (alive, not told to stop) and stopping."""
        with self._lock:
            stopping = sum(1 for managed in self._workers.values() if managed.stopping_since is not None)
            return {"running": len(self._workers) - stopping, "stopping": stopping}

    def desired(self, queued: int, busy: int) -> int:
        """How many workers the queue calls for: one per waiting or running job, within [min, max]."""
        return max(self.min_workers, min(self.max_workers, queued + busy))

    def tick(self) -> None:
        """Reap exited workers, then start or stop workers to match the queue."""
        now = self._monotonic()
        self._reap(now)
        queued = self.store.counts()["queued"]
        running_jobs = self.store.list(state="running", limit=1000)
        lease_now = utc_now()
        with self._lock:
            ours = set(self._workers)
            busy = {job.worker_id for job in running_jobs if job.worker_id in ours}
            active = {wid for wid, managed in self._workers.items() if managed.stopping_since is None}
        # Jobs whose worker died (its lease ran out) will be queued again: they need a worker too.
        orphaned = sum(
            1
            for job in running_jobs
            if job.worker_id not in ours
            and job.lease_expires_at is not None
            and job.lease_expires_at < lease_now
        )
        queued += orphaned
        target = self.desired(queued, len(busy))
        for _ in range(target - len(active)):
            self._start()
        if queued:
            self._idle_since = None
            return
        if self._idle_since is None:
            self._idle_since = now
        surplus = len(active) - max(self.min_workers, len(busy))
        if surplus > 0 and now - self._idle_since >= self.scale_down_after:
            for worker_id in sorted(active - busy)[:surplus]:
                self._stop(worker_id, now)

    def _start(self) -> None:
        worker_id = f"local-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        process = self.spawn(worker_id)
        with self._lock:
            self._workers[worker_id] = _Managed(process, self._monotonic())
        self.started_total += 1
        logger.info("started worker %s (pid %s)", worker_id, process.pid)

    def _stop(self, worker_id: str, now: float) -> None:
        with self._lock:
            managed = self._workers.get(worker_id)
            if managed is None or managed.stopping_since is not None:
                return
            managed.stopping_since = now
        logger.info("stopping idle worker %s", worker_id)
        _signal(managed.process, signal.SIGTERM)

    def _reap(self, now: float) -> None:
        with self._lock:
            for worker_id, managed in list(self._workers.items()):
                code = managed.process.poll()
                if code is not None:
                    del self._workers[worker_id]
                    if managed.stopping_since is None:
                        logger.warning("worker %s exited unexpectedly (code %s)", worker_id, code)
                elif (
                    managed.stopping_since is not None
                    and now - managed.stopping_since > self.stop_grace_seconds
                ):
                    _signal(managed.process, signal.SIGKILL)

    def run(self, stop: threading.Event, interval: float) -> None:
        """Supervise until ``stop`` is set (for a background thread)."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                logger.exception("worker supervision failed; retrying")
            stop.wait(interval)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ask every worker to stop after its current job; kill those still busy after ``timeout``.

        A killed worker's job runs again on another worker once its lease expires.
        """
        with self._lock:
            managed = list(self._workers.values())
        for item in managed:
            _signal(item.process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for item in managed:
            try:
                item.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(item.process, signal.SIGKILL)
                item.process.wait()
        with self._lock:
            self._workers.clear()


def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)
