"""The train job: a LoRA trained on a zip from the training-data bucket, published to the models bucket.

The run's folder lives in the worker's cache (``cache/train/<job id>``): a run stopped on this machine (the
worker shut down, the lease lost) resumes from its saved state. A run that failed for good leaves nothing.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from atelier.errors import AtelierError
from atelier.service.captioning import local_captioning_model
from atelier.service.handlers.context import WorkerContext
from atelier.service.job_types import TrainPayload, TrainResult
from atelier.service.jobs import Job
from atelier.service.lease import JobInterrupted, JobLease
from atelier.service.licenses import license_record
from atelier.service.registry import ModelRecord, check_model_name, inspect_model
from atelier.service.submit import (
    TRAIN_CONFIG_KEYS_OWNED_BY_STUDIO,
    caption_model,
    training_output_name,
    training_preset,
)
from atelier.service.training_rights import NO_RIGHTS_WARNING

logger = logging.getLogger(__name__)


def run_train(worker: WorkerContext, job: Job, lease: JobLease) -> TrainResult:
    """Train the job's LoRA from its zip, publish it to the models bucket, store samples and the summary."""
    from atelier.training import STATE_FILE, RightsRecord, extract_zip, load_train_config, train_lora

    payload = TrainPayload.model_validate(job.payload)
    # Checked at submission; rebuilt here, where it is written into every saved LoRA file.
    rights = (
        RightsRecord.from_dict(payload.rights, where="the job's rights record") if payload.rights else None
    )
    rights_warnings = [] if rights else [NO_RIGHTS_WARNING]
    zip_key = payload.training_data
    settings = dict(payload.config)
    captioner = caption_model(worker.studio, settings)
    dataset_config_name = settings.pop("dataset_config", None)
    # The base, the preset and every path were settled at submission; paths are never an upload's choice.
    for key in TRAIN_CONFIG_KEYS_OWNED_BY_STUDIO:
        settings.pop(key, None)
    base = worker.registry.find_checkpoint(payload.base, field="base")
    preset = payload.preset or training_preset(base)
    zip_name = PurePosixPath(zip_key).name
    # The LoRA's name was chosen when the job was queued, free of other models' names (submit.py).
    output_name = payload.output_name or settings.get("output_name") or zip_name.removesuffix(".zip")
    train_config = load_train_config(settings, preset=preset, overrides={"output_name": output_name})
    output_name = check_model_name(train_config.output_name, what="output_name")

    workdir = worker.train_dir(job)
    data_dir = workdir / "data"
    out_dir = workdir / "run"
    # A run stopped on this machine (worker shut down, lease lost) saved its state: continue it.
    resume = (out_dir / STATE_FILE).is_file()
    if out_dir.exists() and not resume:
        shutil.rmtree(out_dir)
    if not data_dir.is_dir():
        local_zip = worker.storage.local_path(zip_key)
        if local_zip is None:
            local_zip = worker.storage.get_file(zip_key, workdir / zip_name)
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
                worker.storage.put_file(key, path)
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
                "warnings": [*rights_warnings, *progress.warnings],
                # Went on from the state a stopped run saved (Resume, or a worker that was shut down).
                "resumed": resume,
            },
        )

    try:
        result = train_lora(
            train_config,
            data=data_dir,
            base_model=worker.files.local_path(base),
            out_dir=out_dir,
            dataset_config=dataset_config,
            resume=resume,
            on_progress=on_progress,
            should_stop=lease.should_stop,
            log=logger.info,
            caption_model=(
                local_captioning_model(worker.storage, worker.config.cache_dir, captioner)
                if captioner
                else None
            ),
            rights=rights,
        )
        if result.stopped or result.output_file is None:
            raise JobInterrupted()
        record = publish_lora(worker, job, Path(result.output_file), output_name, base, zip_key)
        epoch_files = _publish_epochs(worker, job, result, record.name, base, zip_key)
        samples, summary = _store_training_outputs(worker, job, result, epoch_files)
    finally:
        gc.collect()
        _free_accelerator_memory()
    shutil.rmtree(workdir, ignore_errors=True)
    return TrainResult(model=record.to_dict(), samples=samples, epoch_files=epoch_files, summary=summary)


def publish_lora(
    worker: WorkerContext,
    job: Job,
    output_file: Path,
    name: str,
    base: ModelRecord,
    zip_key: str,
    *,
    folder: str = "models",
    details: dict[str, Any] | None = None,
) -> ModelRecord:
    """Store the trained LoRA in the models bucket and register it, claiming its ledger entry first.

    Never over another model: if its name was taken while the job ran, the next free one is used.
    """
    info = inspect_model(output_file)
    if info.kind != "lora":
        raise AtelierError(f"training wrote {output_file.name}, which is not a LoRA", field="output_name")
    name = training_output_name(worker.studio, name, zip_key)
    key = f"{folder}/{name}.safetensors"
    worker.storage.put_file(key, output_file)
    stored = next((item for item in worker.storage.list(key) if item.key == key), None)
    version = stored.version if stored else f"sha256:{info.sha256}"
    # The watcher will see this file too; the ledger entry tells it that it is already handled.
    worker.ledger.claim_object("models", key, version, worker_id=worker.worker_id)
    # A LoRA is a derivative of its base model: it carries the base's licence (and an admin's ruling on it).
    base_license = base.details.get("license") or {}
    inherited = license_record(
        base_license.get("name"), f"base model {base.name}", use=base_license.get("use")
    )
    record = worker.registry.register(
        name=name,
        storage_key=key,
        info=info,
        version=version,
        source="training",
        details={
            "job_id": job.id,
            "base_model": base.name,
            "training_data": zip_key,
            "license": inherited,
            "rights": info.rights,
            **(details or {}),
        },
    )
    try:
        worker.ledger.mark_done("models", key, version)
    except AtelierError:
        logger.warning("ledger entry for %s was not recorded", key)
    return record


def _publish_epochs(
    worker: WorkerContext, job: Job, result: Any, name: str, base: ModelRecord, zip_key: str
) -> list[str]:
    """Register each per-epoch LoRA as ``<name>-<epoch:06d>`` (kohya's file names), usable in prompts at once.

    People pick the best epoch by trying them side by side (``<lora:parka-000004:0.8>``, an X/Y grid), so each
    one is a LoRA of its own, stored under ``models/epochs/<name>/`` to keep the models folder readable.
    """
    keys = []
    for epoch_file in result.epoch_files or []:
        path = Path(epoch_file)
        epoch = path.stem.rsplit("-", 1)[-1]
        if not path.is_file() or not epoch.isdigit():
            continue
        record = publish_lora(
            worker,
            job,
            path,
            f"{name}-{epoch}",
            base,
            zip_key,
            folder=f"models/epochs/{name}",
            details={"epoch": int(epoch), "lora": name},
        )
        keys.append(record.storage_key)
    return keys


def _store_training_outputs(
    worker: WorkerContext, job: Job, result: Any, epoch_files: list[str]
) -> tuple[list[str], str]:
    """Copy the run's sample images and summary to ``outputs/<job id>/``; their keys."""
    prefix = f"outputs/{job.id}"
    samples = []
    for sample in result.samples or []:
        path = Path(sample)
        if path.is_file():
            key = f"{prefix}/samples/{path.name}"
            worker.storage.put_file(key, path)
            samples.append(key)
    summary = {
        "job_id": job.id,
        "summary": result.summary,
        "loss_curve": result.loss_curve,
        "samples": samples,
        "epoch_files": epoch_files,
    }
    summary_key = f"{prefix}/training.json"
    worker.storage.put_bytes(summary_key, json.dumps(summary, indent=2, default=str).encode("utf-8"))
    return samples, summary_key


def _free_accelerator_memory() -> None:
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
