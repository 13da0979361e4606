"""Local worker processes, scaled on queue depth: the seed's "auto-scaling based on the request queue size".

Workers come in lanes (:func:`studio_lanes`): generation workers (``--min-workers A --max-workers B``) and
training workers (``--max-train-workers C``), each lane scaled on its own queue, so a colleague's picture is
generated while a LoRA trains. Every tick a lane wants one worker per job of its kinds that is queued or
running on its workers, clamped to [min, max], and starts processes up to that number at once. A worker
beyond the minimum is stopped once it has had no job for ``scale_down_after`` seconds, counted from its own
last job (never one running a job). The generation minimum defaults to one, so a worker stays with its model
loaded and a request after a quiet hour starts sampling without a reload. A worker that crashes is replaced
on the next tick.

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
from atelier.service.jobs import MAX_LIST_LIMIT, JobStore

logger = logging.getLogger(__name__)

LaneSpawn = Callable[[str, "Lane"], subprocess.Popen[bytes]]


def worker_command(
    config: StudioConfig,
    worker_id: str,
    *,
    kinds: tuple[str, ...] | None = None,
    parent_pid: int | None = None,
) -> list[str]:
    """The command line of a local worker process for ``config`` (taking ``kinds`` jobs, default all)."""
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
        "--stop-grace",
        str(config.stop_grace_seconds),
    ]
    if kinds is not None:
        command += ["--kinds", ",".join(kinds)]
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
    at_once = config.max_workers + config.max_train_workers
    if at_once <= 1 or (config.device or "cpu").startswith("cuda"):
        return None
    if config.device is None and _cuda_available():
        return None
    return max(1, (os.cpu_count() or 1) // at_once)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def spawn_worker_process(config: StudioConfig) -> LaneSpawn:
    """A spawn function starting ``atelier worker`` processes that exit when this process goes away."""

    def spawn(worker_id: str, lane: Lane) -> subprocess.Popen[bytes]:
        command = worker_command(config, worker_id, kinds=lane.kinds, parent_pid=os.getpid())
        return subprocess.Popen(command, env=worker_environment(config))

    return spawn


# Settings a worker has no flag for, passed in its environment: it signs the outputs it writes.
_ENVIRONMENT_SETTINGS = ("c2pa_cert", "c2pa_key", "c2pa_sign_callback", "c2pa_algorithm", "c2pa_tsa_url")


def worker_environment(config: StudioConfig) -> dict[str, str]:
    """This process's environment, plus the Content Credentials settings of ``config`` as ``ATELIER_*``."""
    environment = dict(os.environ)
    for name in _ENVIRONMENT_SETTINGS:
        value = getattr(config, name)
        if value is not None:
            environment[f"ATELIER_{name.upper()}"] = str(value)
    return environment


@dataclass(frozen=True)
class Lane:
    """Workers for some job kinds, scaled on their own queue: generation never waits behind a training run."""

    name: str
    kinds: tuple[str, ...]
    min_workers: int
    max_workers: int


def studio_lanes(config: StudioConfig) -> list[Lane]:
    """The lanes of ``atelier serve``: generation (kept warm at ``min_workers``) and training.

    Training has a lane of its own so that a 12-minute LoRA run never holds a colleague's picture back; it
    starts no worker until a run is queued, so an idle studio holds no training memory.
    """
    return [
        # Captioning and product shots run on the same kind of machine as a generation: they share its lane.
        Lane("generate", ("generate", "caption", "product"), config.min_workers, config.max_workers),
        Lane("train", ("train",), 0, config.max_train_workers),
    ]


@dataclass
class _Managed:
    lane: Lane
    process: subprocess.Popen[bytes]
    started_at: float
    # When the worker last held a job (or started): idle time is measured from here, per worker, so a worker
    # that just finished a long job is not stopped because the queue happened to be empty for a while.
    last_busy: float
    stopping_since: float | None = None


class WorkerSupervisor:
    """Starts and stops local worker processes, per lane, between its ``min_workers`` and ``max_workers``."""

    def __init__(
        self,
        store: JobStore,
        *,
        lanes: list[Lane],
        spawn: LaneSpawn,
        scale_down_after: float = 30.0,
        stop_grace_seconds: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.lanes = {lane.name: lane for lane in lanes}
        self.spawn = spawn
        self.scale_down_after = scale_down_after
        self.stop_grace_seconds = stop_grace_seconds
        self._monotonic = monotonic
        self._workers: dict[str, _Managed] = {}
        self._lock = threading.Lock()
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

    def counts(self, lane: str | None = None) -> dict[str, int]:
        """Supervised processes (of one lane, or all): running (alive, not told to stop) and stopping."""
        with self._lock:
            workers = [m for m in self._workers.values() if lane is None or m.lane.name == lane]
        stopping = sum(1 for managed in workers if managed.stopping_since is not None)
        return {"running": len(workers) - stopping, "stopping": stopping}

    @staticmethod
    def desired(lane: Lane, queued: int, busy: int) -> int:
        """How many workers a lane's queue calls for: one per waiting or running job, within [min, max]."""
        return max(lane.min_workers, min(lane.max_workers, queued + busy))

    def tick(self) -> None:
        """Reap exited workers, then start or stop workers in each lane to match its queue."""
        now = self._monotonic()
        self._reap(now)
        counts = self.store.counts_by_kind()
        running_jobs = self.store.list(state="running", limit=MAX_LIST_LIMIT)
        lease_now = utc_now()
        with self._lock:
            ours = set(self._workers)
            busy_ids = {job.worker_id for job in running_jobs if job.worker_id in ours}
            for worker_id in busy_ids:
                self._workers[worker_id].last_busy = now
        for lane in self.lanes.values():
            queued = sum(counts[("queued", kind)] for kind in lane.kinds)
            # Jobs whose worker died (its lease ran out) will be queued again: they need a worker too.
            queued += sum(
                1
                for job in running_jobs
                if job.kind in lane.kinds
                and job.worker_id not in ours
                and job.lease_expires_at is not None
                and job.lease_expires_at < lease_now
            )
            self._scale(lane, queued, busy_ids, now)

    def _scale(self, lane: Lane, queued: int, busy_ids: set[str], now: float) -> None:
        with self._lock:
            active = {
                worker_id: managed
                for worker_id, managed in self._workers.items()
                if managed.lane.name == lane.name and managed.stopping_since is None
            }
        busy = busy_ids & set(active)
        for _ in range(self.desired(lane, queued, len(busy)) - len(active)):
            self._start(lane)
        if queued:
            return
        surplus = len(active) - max(lane.min_workers, len(busy))
        idle = sorted(
            (managed.last_busy, worker_id)
            for worker_id, managed in active.items()
            if worker_id not in busy and now - managed.last_busy >= self.scale_down_after
        )
        for _last_busy, worker_id in idle[: max(0, surplus)]:
            self._stop(worker_id, now)

    def _start(self, lane: Lane) -> None:
        worker_id = f"local-{lane.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        process = self.spawn(worker_id, lane)
        now = self._monotonic()
        with self._lock:
            self._workers[worker_id] = _Managed(lane, process, started_at=now, last_busy=now)
        self.started_total += 1
        logger.info("started %s worker %s (pid %s)", lane.name, worker_id, process.pid)

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

    def shutdown(self, timeout: float | None = None) -> None:
        """Ask every worker to stop; kill those still running after ``timeout`` (default: the grace period).

        A worker finishes its job within its own grace period or hands it back to the queue (see
        ``atelier worker``); one killed after that has its job run again once the lease expires.
        """
        with self._lock:
            managed = list(self._workers.values())
        for item in managed:
            _signal(item.process, signal.SIGTERM)
        deadline = time.monotonic() + (self.stop_grace_seconds if timeout is None else timeout)
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
