"""A worker: claims jobs from the queue, runs them on its warm engine, writes results to storage.

Any number of workers, on any machines, share one database and one storage (``atelier worker --db URL
--storage URL``). Each keeps one :class:`~atelier.engine.generate.Engine`, so models stay loaded between jobs
and LoRAs are switched on the loaded base model.

While a job runs, a heartbeat thread extends its lease and records progress. When the heartbeat is refused
(the job was canceled, or the lease was lost because this worker stalled), the engine stops at its next step.
A worker that dies simply stops heartbeating; once the lease expires another worker runs the job again.

Outputs are idempotent: images are stored as ``outputs/<job id>/<seed>_<timestamp>.png`` where the timestamp is
the job's creation time and the seed is fixed when the job is submitted, so a job that runs twice overwrites
its files instead of adding new ones.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import math
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path, PurePosixPath
from typing import Any

import sqlalchemy as sa

from atelier.errors import AtelierError
from atelier.service.failures import describe_failure, is_transient, server_roots
from atelier.service.jobs import JOB_KINDS, Job, JobStore
from atelier.service.modelfiles import ModelFiles
from atelier.service.registry import ModelRecord, check_model_name, inspect_model
from atelier.service.studio import Studio
from atelier.service.submit import TRAIN_CONFIG_KEYS_OWNED_BY_STUDIO, training_output_name, training_preset

logger = logging.getLogger(__name__)

# After this long without a job a worker polls less often, so idle workers cost the database little.
IDLE_BACKOFF_AFTER_SECONDS = 10.0
IDLE_POLL_SECONDS = 0.25


def new_worker_id() -> str:
    """A worker id unique among running workers: host, process and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def seed_for_job(job_id: str) -> int:
    """A seed derived from the job id, for jobs submitted with seed -1 outside the API: reruns stay identical."""
    return int(uuid.uuid5(uuid.NAMESPACE_URL, f"atelier-job:{job_id}").hex[:8], 16)


def output_key(job: Job, seed: int) -> str:
    """Where an image of ``job`` is stored: ``outputs/<job id>/<seed>_<job timestamp>.png``."""
    from atelier.engine.output import output_filename

    # The job's creation time (not the run's), in UTC, keeps names identical when the job runs again anywhere.
    return f"outputs/{job.id}/{output_filename(seed, job.created_at.astimezone(UTC))}"


def png_bytes(image: Any, infotext: str) -> bytes:
    """The image as PNG with A1111's ``parameters`` text chunk."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


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
        self.jobs_done = 0

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def stop(self, *, abandon_current: bool = False) -> None:
        """Stop claiming jobs. The current job finishes unless ``abandon_current`` (then it is requeued)."""
        self._stop.set()
        if abandon_current:
            self._abandon.set()

    def _parent_gone(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def warm_up(self) -> None:
        """Import the libraries and build the engine before claiming anything.

        A worker that cannot start (a broken CUDA driver, a library that fails to import) then dies holding no
        job, instead of taking the next one down with it and using up that job's attempts.
        """
        if "generate" in self.kinds:
            _ = self.engine
        if "train" in self.kinds:
            import atelier.training.recipe  # noqa: F401

    def run(self, *, idle_exit_seconds: float | None = None, max_jobs: int | None = None) -> int:
        """Process jobs until stopped (or idle that long, or ``max_jobs`` done); return how many ran."""
        self.warm_up()
        last_activity = time.monotonic()
        next_requeue = 0.0
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
                idle_for = time.monotonic() - last_activity
                if idle_exit_seconds is not None and idle_for >= idle_exit_seconds:
                    break
                wait = self.config.poll_seconds
                if idle_for > IDLE_BACKOFF_AFTER_SECONDS:
                    wait = max(wait, IDLE_POLL_SECONDS)
                self._stop.wait(wait)
                continue
            self.process(job)
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

    def train_dir(self, job: Job) -> Path:
        """This machine's working folder for a training job (extracted data, run state for resuming)."""
        return self.config.cache_dir / "train" / job.id

    def _after_interrupt(self, job: Job, lease: JobLease) -> None:
        current = self.store.get(job.id)
        if current.worker_id != self.worker_id or current.state != "running":
            logger.warning("job %s: lease lost; another worker will run it", job.id)
        elif current.cancel_requested:
            if self.store.mark_canceled(job.id, self.worker_id):
                logger.info("job %s canceled", job.id)
                shutil.rmtree(self.train_dir(job), ignore_errors=True)
        else:
            # This worker is shutting down: hand the job back now rather than after the lease expires.
            self.store.fail(
                job.id, self.worker_id, "the worker was stopped; the job was requeued", retry=True
            )

    def _run_job(self, job: Job, lease: JobLease) -> dict[str, Any]:
        if job.kind == "generate":
            return self._generate(job, lease)
        return self._train(job, lease)

    # -- generate ----------------------------------------------------------------------------------------------

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from atelier.engine.generate import Engine
            from atelier.engine.loras import LoraLibrary
            from atelier.service.controlnets import controlnet_library

            self.files.lora_dir.mkdir(parents=True, exist_ok=True)
            self._engine = Engine(
                device=self.config.device,
                loras=LoraLibrary(self.files.lora_dir),
                controlnets=controlnet_library(self.storage, self.config.cache_dir),
                max_controlnet_units=self.config.max_controlnet_units,
            )
        return self._engine

    def _generate(self, job: Job, lease: JobLease) -> dict[str, Any]:
        from atelier.engine.generate import GenerationCanceled
        from atelier.engine.request import GenerationRequest
        from atelier.prompts.parser import parse_prompt

        payload = job.payload
        params = dict(payload.get("request") or {})
        checkpoint = self.registry.find_checkpoint(payload.get("model") or "")
        refiner = (
            self.registry.find_checkpoint(payload["refiner"], field="refiner")
            if payload.get("refiner")
            else None
        )
        lora_names = {tag.name for tag in parse_prompt(params.get("prompt", "")).loras}
        if params.get("refiner_prompt"):
            lora_names |= {tag.name for tag in parse_prompt(params["refiner_prompt"]).loras}
        self.files.place_loras(self.registry.get(name, "lora") for name in sorted(lora_names))
        if params.get("seed", -1) == -1:
            params["seed"] = seed_for_job(job.id)
        images = {
            name: self._load_input(payload[f"{name}_key"])
            for name in ("init_image", "mask")
            if payload.get(f"{name}_key")
        }
        controlnet_units = []
        if payload.get("controlnet_units"):
            from atelier.service.controlnets import controlnet_library, load_units

            # Refreshes the S3 mirror too, so a ControlNet uploaded after this worker started is found.
            self.engine.controlnets = controlnet_library(self.storage, self.config.cache_dir)
            controlnet_units = load_units(self.storage, payload["controlnet_units"])
        request = GenerationRequest(
            **params,
            model=str(self.files.local_path(checkpoint)),
            refiner=str(self.files.local_path(refiner)) if refiner else None,
            controlnet_units=controlnet_units,
            **images,
        )
        started = time.monotonic()
        try:
            result = self.engine.generate(
                request,
                on_step=lambda done, total: lease.report(done, total),
                should_cancel=lease.should_stop,
            )
        except GenerationCanceled:
            raise JobInterrupted() from None
        generated = time.monotonic()
        shown_params = {
            **request.to_params(),
            "model": checkpoint.name,
            "refiner": refiner.name if refiner else None,
        }
        stored = []
        for index, item in enumerate(result.images):
            key = output_key(job, item.seed)
            sidecar_key = key.removesuffix(".png") + ".json"
            self.storage.put_bytes(key, png_bytes(item.image, item.infotext))
            sidecar = {
                "job_id": job.id,
                "index": index,
                "seed": item.seed,
                "image": key,
                "width": item.image.width,
                "height": item.image.height,
                "params": {**shown_params, "seed": params["seed"]},
                "infotext": item.infotext,
                "infotext_params": item.params,
                "model": {
                    "name": checkpoint.name,
                    "sha256": checkpoint.sha256,
                    "storage_key": checkpoint.storage_key,
                },
                "created_at": job.created_at.isoformat(),
            }
            self.storage.put_bytes(sidecar_key, json.dumps(sidecar, indent=2, default=str).encode("utf-8"))
            stored.append(
                {
                    "key": key,
                    "sidecar": sidecar_key,
                    "seed": item.seed,
                    "width": item.image.width,
                    "height": item.image.height,
                    "infotext": item.infotext,
                }
            )
        return {
            "images": stored,
            "seeds": [item["seed"] for item in stored],
            "infotexts": [item["infotext"] for item in stored],
            "model": {"name": checkpoint.name, "title": checkpoint.title, "sha256": checkpoint.sha256},
            "params": {**shown_params, "seed": params["seed"]},
            "timings": {
                "generate_seconds": round(generated - started, 4),
                "store_seconds": round(time.monotonic() - generated, 4),
            },
        }

    def _load_input(self, key: str) -> Any:
        from PIL import Image

        with Image.open(io.BytesIO(self.storage.get_bytes(key))) as image:
            image.load()
            return image.copy()

    # -- train -------------------------------------------------------------------------------------------------

    def _train(self, job: Job, lease: JobLease) -> dict[str, Any]:
        from atelier.training.archive import extract_zip
        from atelier.training.config import load_train_config
        from atelier.training.recipe import train_lora
        from atelier.training.state import STATE_FILE

        payload = job.payload
        zip_key = payload["training_data"]
        settings = dict(payload.get("config") or {})
        dataset_config_name = settings.pop("dataset_config", None)
        # The base, the preset and every path were settled at submission; paths are never an upload's choice.
        for key in TRAIN_CONFIG_KEYS_OWNED_BY_STUDIO:
            settings.pop(key, None)
        base = self.registry.find_checkpoint(payload["base"], field="base")
        preset = payload.get("preset") or training_preset(base)
        zip_name = PurePosixPath(zip_key).name
        # The LoRA's name was chosen when the job was queued, free of other models' names (submit.py).
        output_name = (
            payload.get("output_name") or settings.get("output_name") or zip_name.removesuffix(".zip")
        )
        train_config = load_train_config(settings, preset=preset, overrides={"output_name": output_name})
        output_name = check_model_name(train_config.output_name, what="output_name")

        workdir = self.train_dir(job)
        data_dir = workdir / "data"
        out_dir = workdir / "run"
        # A run stopped on this machine (worker shut down, lease lost) saved its state: continue it.
        resume = (out_dir / STATE_FILE).is_file()
        if out_dir.exists() and not resume:
            shutil.rmtree(out_dir)
        if not data_dir.is_dir():
            local_zip = self.storage.local_path(zip_key)
            if local_zip is None:
                local_zip = self.storage.get_file(zip_key, workdir / zip_name)
            extract_zip(local_zip, data_dir)
        dataset_config = None
        if dataset_config_name:
            dataset_config = (data_dir / str(dataset_config_name)).resolve()
            if not dataset_config.is_relative_to(data_dir.resolve()) or not dataset_config.is_file():
                raise AtelierError(
                    f"dataset_config {dataset_config_name!r} must name a file inside {zip_name}",
                    field="dataset_config",
                )
        elif (data_dir / "dataset.toml").is_file():
            dataset_config = data_dir / "dataset.toml"

        published: dict[str, str] = {}

        def on_progress(progress: Any) -> None:
            # Sample images appear per epoch: publish them at once so people watch the LoRA take shape.
            for sample in progress.samples or []:
                path = Path(sample)
                if str(path) not in published and path.is_file():
                    key = f"outputs/{job.id}/samples/{path.name}"
                    self.storage.put_file(key, path)
                    published[str(path)] = key
            lease.report(
                progress.step,
                progress.total_steps,
                {
                    "epoch": progress.epoch,
                    "total_epochs": progress.total_epochs,
                    # JSON has no NaN: a diverging run shows no loss rather than breaking its heartbeat.
                    "loss": progress.loss if math.isfinite(progress.loss) else None,
                    "lr": progress.lr,
                    "it_per_s": progress.it_per_s,
                    "samples": list(published.values()),
                },
            )

        try:
            result = train_lora(
                train_config,
                data=data_dir,
                base_model=self.files.local_path(base),
                out_dir=out_dir,
                dataset_config=dataset_config,
                resume=resume,
                on_progress=on_progress,
                should_stop=lease.should_stop,
                log=logger.info,
            )
            if result.stopped or result.output_file is None:
                raise JobInterrupted()
            record = self._publish_lora(job, Path(result.output_file), output_name, base, zip_key)
            extras = self._store_training_outputs(job, result)
        finally:
            gc.collect()
            _free_accelerator_memory()
        shutil.rmtree(workdir, ignore_errors=True)
        return {"model": record.to_dict(), **extras}

    def _publish_lora(
        self, job: Job, output_file: Path, name: str, base: ModelRecord, zip_key: str
    ) -> ModelRecord:
        """Store the trained LoRA in the models bucket and register it, claiming its ledger entry first.

        Never over another model: if its name was taken while the job ran, the next free one is used.
        """
        info = inspect_model(output_file)
        if info.kind != "lora":
            raise AtelierError(f"training wrote {output_file.name}, which is not a LoRA", field="output_name")
        name = training_output_name(self.studio, name, zip_key)
        key = f"models/{name}.safetensors"
        self.storage.put_file(key, output_file)
        stored = next((item for item in self.storage.list(key) if item.key == key), None)
        version = stored.version if stored else f"sha256:{info.sha256}"
        # The watcher will see this file too; the ledger entry tells it that it is already handled.
        self.ledger.claim_object("models", key, version, worker_id=self.worker_id)
        record = self.registry.register(
            name=name,
            storage_key=key,
            info=info,
            version=version,
            source="training",
            details={"job_id": job.id, "base_model": base.name, "training_data": zip_key},
        )
        try:
            self.ledger.mark_done("models", key, version)
        except AtelierError:
            logger.warning("ledger entry for %s was not recorded", key)
        return record

    def _store_training_outputs(self, job: Job, result: Any) -> dict[str, Any]:
        prefix = f"outputs/{job.id}"
        samples = []
        for sample in getattr(result, "samples", None) or []:
            path = Path(sample)
            if path.is_file():
                key = f"{prefix}/samples/{path.name}"
                self.storage.put_file(key, path)
                samples.append(key)
        epochs = []
        for epoch_file in getattr(result, "epoch_files", None) or []:
            path = Path(epoch_file)
            if path.is_file():
                key = f"{prefix}/epochs/{path.name}"
                self.storage.put_file(key, path)
                epochs.append(key)
        summary = {
            "job_id": job.id,
            "summary": getattr(result, "summary", None),
            "loss_curve": getattr(result, "loss_curve", None),
            "samples": samples,
            "epoch_files": epochs,
        }
        summary_key = f"{prefix}/training.json"
        self.storage.put_bytes(summary_key, json.dumps(summary, indent=2, default=str).encode("utf-8"))
        return {"samples": samples, "epoch_files": epochs, "summary": summary_key}


def _free_accelerator_memory() -> None:
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
