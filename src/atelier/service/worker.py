"""A worker: claims jobs from the queue, runs them on its warm engine, writes results to storage.

Any number of workers, on any machines, share one database and one storage (``atelier worker --db URL
--storage URL``). Each keeps one :class:`~atelier.engine.generate.Engine`, so models stay loaded between jobs
and LoRAs are switched on the loaded base model.

While a job runs, a heartbeat thread extends its lease and records progress (``lease.py``). When the heartbeat
is refused (the job was canceled, or the lease was lost because this worker stalled), the job stops at its next
step. A worker that dies simply stops heartbeating; once the lease expires another worker runs the job again.

What a job does is its kind's handler (``handlers/``); this module claims, runs and finishes jobs.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from atelier.errors import AtelierError, NotFoundError
from atelier.service.database import utc_now
from atelier.service.failures import describe_failure, is_transient, server_roots
from atelier.service.handlers import HANDLERS
from atelier.service.jobs import JOB_KINDS, Job
from atelier.service.lease import JobInterrupted, JobLease
from atelier.service.modelfiles import PREVIEW_PREFIX, ModelFiles
from atelier.service.studio import Studio
from atelier.service.worker_board import BEAT_SECONDS, CHECKPOINT_CONTROL

logger = logging.getLogger(__name__)

# After this long without a job a worker polls less often, so idle workers cost the database little.
IDLE_BACKOFF_AFTER_SECONDS = 10.0
IDLE_POLL_SECONDS = 0.25
# How often an idle worker looks for unload/reload-checkpoint requests (one settings read).
CONTROL_LOOK_SECONDS = 1.0
_NOT_LOOKED = object()


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def new_worker_id() -> str:
    """A worker id unique among running workers: host, process and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Worker:
    """Runs a studio's jobs until stopped. One engine per worker, created on the first generate job."""

    def __init__(
        self,
        studio: Studio,
        *,
        worker_id: str | None = None,
        kinds: Iterable[str] = JOB_KINDS,
        parent_pid: int | None = None,
    ) -> None:
        self.studio = studio
        self.config = studio.config
        self.store = studio.store
        self.storage = studio.storage
        self.registry = studio.registry
        self.ledger = studio.ledger
        self.worker_id = worker_id or new_worker_id()
        self.kinds = tuple(kinds)
        for kind in self.kinds:
            if kind not in JOB_KINDS:
                raise AtelierError(
                    f"job kind must be one of {', '.join(JOB_KINDS)}, got {kind!r}", field="kinds"
                )
        self.parent_pid = parent_pid
        self.files = ModelFiles(self.storage, self.config.cache_dir)
        self._engine: Any = None
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._grace_timer: threading.Timer | None = None
        self._finished = threading.Event()
        # Set once warmed up (libraries imported, default model loaded), just before the first claim.
        self.ready = threading.Event()
        self.jobs_done = 0
        # What an idle worker reports: "ready", or "unloaded" after an unload-checkpoint request.
        self._idle_state = "ready"
        self._control_serial: Any = _NOT_LOOKED

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def stop(self, *, abandon_current: bool = False, grace_seconds: float | None = None) -> None:
        """Stop claiming jobs. The current job finishes unless ``abandon_current`` (then it is handed back).

        With ``grace_seconds`` the current job may finish within that time; after it, it is handed back to the
        queue at its next step (a training run resumes from its last saved state elsewhere). That is what a
        scale-down or a deploy needs: a short generation completes, a long training run does not hold the
        shutdown up, and nothing is lost either way.
        """
        self._stop.set()
        if abandon_current:
            self._abandon.set()
        elif grace_seconds is not None and self._grace_timer is None:
            self._grace_timer = threading.Timer(grace_seconds, self._abandon.set)
            self._grace_timer.daemon = True
            self._grace_timer.start()

    def _parent_gone(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def warm_up(self) -> None:
        """Import the libraries, build the engine and load the default model before claiming anything.

        A worker that cannot start (a broken CUDA driver, a library that fails to import) then dies holding no
        job, instead of taking the next one down with it and using up that job's attempts. A generation worker
        loads the studio's default checkpoint now, so the first request starts sampling without a load and
        ``/health/ready`` can tell when the studio is really ready.
        """
        if any(HANDLERS[kind].needs_engine for kind in self.kinds):
            _ = self.engine
        if "generate" in self.kinds:
            self._load_default_model()
        if "train" in self.kinds:
            from atelier.training import train_lora  # noqa: F401 - loads torch, diffusers and peft now

            self.prune_train_dirs()

    def _load_default_model(self) -> None:
        try:
            record = self.registry.default_checkpoint(self.studio.settings.get("sd_model_checkpoint"))
        except AtelierError:
            return  # no checkpoint yet: the first job loads the one it names
        try:
            self.engine.load(self.files.local_path(record))
        except Exception:
            # A broken default model must not keep the worker from running jobs on the other models.
            logger.warning(
                "the default model %s could not be loaded ahead of time", record.name, exc_info=True
            )

    # -- the board (/health/ready, /metrics) -------------------------------------------------------------------

    def report(self, state: str) -> None:
        """Write this worker's row on the board: state, models held, loads so far, VRAM on a GPU."""
        models = self._engine.models if self._engine is not None else None
        vram = None
        if self._engine is not None:  # torch is imported by then
            from atelier.engine import vram_stats

            vram = vram_stats(self._engine.device)
        try:
            self.studio.workers.report(
                self.worker_id,
                kinds=self.kinds,
                state=state,
                loaded_models=[Path(path).name for path in models.loaded_paths()] if models else [],
                model_loads=models.loads if models else 0,
                vram=vram,
            )
        except sa.exc.OperationalError:
            logger.warning("could not write this worker's row on the board", exc_info=True)

    def _report_while_running(self) -> None:
        while not self._finished.wait(BEAT_SECONDS):
            self.report("stopping" if self._stop.is_set() else self._idle_state)

    def _follow_checkpoint_control(self) -> None:
        """Act on A1111's unload-checkpoint / reload-checkpoint (a studio setting, see worker_board)."""
        control = self.studio.settings.get(CHECKPOINT_CONTROL)
        serial = control.get("serial") if isinstance(control, dict) else None
        if serial == self._control_serial:
            return
        first_look = self._control_serial is _NOT_LOOKED
        self._control_serial = serial
        if first_look or self._engine is None or "generate" not in self.kinds:
            return  # a request made before this worker started is not for it: it loaded what it needs
        assert isinstance(control, dict)
        if control.get("action") == "unload":
            self._engine.models.clear()
            self._engine.controlnet_models.clear()
            _free_accelerator_memory()
            self._idle_state = "unloaded"
            logger.info("models unloaded on request")
        elif control.get("action") == "reload":
            self._load_default_model()
            self._idle_state = "ready"
        self.report(self._idle_state)

    def run(self, *, idle_exit_seconds: float | None = None, max_jobs: int | None = None) -> int:
        """Process jobs until stopped (or idle that long, or ``max_jobs`` done); return how many ran."""
        self.report("starting")
        self.warm_up()
        self.report("ready")
        self.ready.set()
        beats = threading.Thread(target=self._report_while_running, name="worker-board", daemon=True)
        beats.start()
        try:
            return self._run_jobs(idle_exit_seconds, max_jobs)
        finally:
            self._finished.set()
            beats.join()
            self.report("stopped")

    def _run_jobs(self, idle_exit_seconds: float | None, max_jobs: int | None) -> int:
        last_activity = time.monotonic()
        next_requeue = 0.0
        next_control_look = 0.0
        while not self._stop.is_set():
            if self._parent_gone():
                logger.info("the process that started this worker is gone; stopping")
                break
            now = time.monotonic()
            if now >= next_requeue:
                # claim() requeues expired leases too, but only runs once something is queued.
                self._safely(self.store.requeue_expired)
                next_requeue = now + max(self.config.lease_seconds / 2, 0.05)
            job = self._safely(self._claim_if_queued)
            if job is None:
                if now >= next_control_look:
                    self._safely(self._follow_checkpoint_control)
                    next_control_look = now + CONTROL_LOOK_SECONDS
                idle_for = time.monotonic() - last_activity
                if idle_exit_seconds is not None and idle_for >= idle_exit_seconds:
                    break
                wait = self.config.poll_seconds
                if idle_for > IDLE_BACKOFF_AFTER_SECONDS:
                    wait = max(wait, IDLE_POLL_SECONDS)
                self._stop.wait(wait)
                continue
            self.process(job)
            self._idle_state = "ready"  # the job loaded what it needed
            self.report("stopping" if self._stop.is_set() else "ready")
            last_activity = time.monotonic()
            if max_jobs is not None and self.jobs_done >= max_jobs:
                break
        return self.jobs_done

    def _safely(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except sa.exc.OperationalError:
            # The database is briefly unreachable (restart, network): wait and try again.
            logger.warning("database unavailable; retrying", exc_info=True)
            self._stop.wait(1.0)
            return None

    def _claim_if_queued(self) -> Job | None:
        # A read-only look first: polling with claim() itself would take SQLite's write lock every time.
        if not self.store.has_queued(self.kinds):
            return None
        return self.store.claim(self.worker_id, kinds=self.kinds, lease_seconds=self.config.lease_seconds)

    # -- one job -----------------------------------------------------------------------------------------------

    def process(self, job: Job) -> None:
        """Run a claimed job to its end state (or give it up if the lease is lost)."""
        logger.info("job %s (%s) started, attempt %d of %d", job.id, job.kind, job.attempts, job.max_attempts)
        lease = JobLease(
            self.store,
            job,
            self.worker_id,
            lease_seconds=self.config.lease_seconds,
            interval=self.config.progress_seconds,
            worker_stopping=self._abandon.is_set,
        )
        started = time.monotonic()
        try:
            with lease:
                result = self._run_job(job, lease)
        except JobInterrupted:
            self._after_interrupt(job, lease)
        except AtelierError as problem:
            # The job's own input is wrong (a model deleted meanwhile, a bad config): retrying cannot help.
            logger.info("job %s failed: %s", job.id, problem)
            self._record_error_field(job, problem)
            self._fail(job, problem, retry=False)
        except Exception as problem:
            # Only an infrastructure fault is worth another attempt; anything else would fail the same way.
            retry = is_transient(problem)
            logger.error("job %s failed%s", job.id, " (will retry)" if retry else "", exc_info=True)
            self._fail(job, problem, retry=retry)
        else:
            if not self.store.complete(job.id, self.worker_id, result):
                logger.warning("job %s finished after its lease was lost; another run owns it now", job.id)
            logger.info("job %s done in %.2fs", job.id, time.monotonic() - started)
        finally:
            self.jobs_done += 1

    def _fail(self, job: Job, problem: BaseException, *, retry: bool) -> None:
        self.store.fail(
            job.id, self.worker_id, describe_failure(problem, server_roots(self.config)), retry=retry
        )
        if not retry and job.kind == "train":
            # Nothing will resume this run: its extracted data and state only take disk space.
            shutil.rmtree(self.train_dir(job), ignore_errors=True)

    def _record_error_field(self, job: Job, problem: AtelierError) -> None:
        info = {"error_field": problem.field, "user_error": True}
        self.store.heartbeat(job.id, self.worker_id, lease_seconds=self.config.lease_seconds, info=info)

    def prune_train_dirs(self, keep_canceled: timedelta = timedelta(days=7)) -> None:
        """Remove this machine's training folders that nothing will resume.

        Kept: runs still queued or running, and canceled runs younger than ``keep_canceled`` (they can be
        resumed). Removed: finished runs, runs whose job is gone, and older canceled ones.
        """
        root = self.config.cache_dir / "train"
        if not root.is_dir():
            return
        now = utc_now()
        for folder in root.iterdir():
            try:
                job = self.store.get(folder.name)
            except NotFoundError:
                job = None
            keep = job is not None and (
                not job.finished
                or (
                    job.state == "canceled"
                    and job.finished_at is not None
                    and now - job.finished_at < keep_canceled
                )
            )
            if not keep:
                shutil.rmtree(folder, ignore_errors=True)

    def train_dir(self, job: Job) -> Path:
        """This machine's working folder for a training job (extracted data, run state for resuming)."""
        return self.config.cache_dir / "train" / job.id

    def _after_interrupt(self, job: Job, lease: JobLease) -> None:
        current = self.store.get(job.id)
        if current.worker_id != self.worker_id or current.state != "running":
            logger.warning("job %s: lease lost; another worker will run it", job.id)
        elif current.cancel_requested:
            if self.store.mark_canceled(job.id, self.worker_id):
                # A canceled training run keeps its saved state: "Resume" (POST /api/jobs/{id}/retry) goes on
                # from there. prune_train_dirs() removes it after a week.
                logger.info("job %s canceled", job.id)
        else:
            # This worker is shutting down: hand the job back now rather than after the lease expires, without
            # counting it as a failed attempt (a scale-down is not the job's fault).
            note = "the worker was stopped; the job was requeued"
            if self.store.release(job.id, self.worker_id, note):
                logger.info("job %s handed back to the queue", job.id)

    def _run_job(self, job: Job, lease: JobLease) -> dict[str, Any]:
        handler = HANDLERS.get(job.kind)
        if handler is None:
            raise AtelierError(f"this worker cannot run {job.kind!r} jobs", field="kind")
        return handler.run(self, job, lease).model_dump(mode="json")

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from atelier.engine import (
                EmbeddingLibrary,
                Engine,
                LoraLibrary,
                ModelCache,
                PreviewDecoders,
                VaeLibrary,
                default_device,
                resolve_precision,
            )
            from atelier.service.controlnets import controlnet_library

            self.files.lora_dir.mkdir(parents=True, exist_ok=True)
            budget = self.config.model_memory_gb
            device = self.config.device or default_device()
            self._engine = Engine(
                device=device,
                dtype=resolve_precision(self.config.precision, device),
                speed=self.config.speed_settings(),
                models=ModelCache(memory_budget=None if budget is None else int(budget * 1024**3)),
                loras=LoraLibrary(self.files.lora_dir),
                embeddings=EmbeddingLibrary(self.files.embedding_dir),
                vaes=VaeLibrary(self.files.vae_dir),
                controlnets=controlnet_library(self.storage, self.config.cache_dir),
                max_controlnet_units=self.config.max_controlnet_units,
                # TAESD from the models bucket when it is a local folder; otherwise the weight-free preview.
                previews=PreviewDecoders(self.storage.local_path(PREVIEW_PREFIX)),
            )
        return self._engine
