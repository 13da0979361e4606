"""What a training run says about itself: kohya's run metadata, ``summary.json`` and the resume fingerprint.

These read a set-up :class:`~atelier.training.recipe.LoraRecipe` and return plain data; the recipe decides when
they are written (:mod:`atelier.training.lora_files` and :mod:`atelier.training.report` write them).
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atelier.errors import AtelierError
from atelier.training import lora_files
from atelier.training.dataset import ImageItem, tag_frequency
from atelier.training.state import STATE_FILE

if TYPE_CHECKING:
    from atelier.training.recipe import LoraRecipe

SUMMARY_FILE = "summary.json"
LOSS_CURVE_FILE = "loss.png"


def fingerprint(recipe: LoraRecipe) -> dict[str, Any]:
    """What must not change between a run and its resumption: the shape of the LoRA, the batches and the base."""
    config = recipe.config
    return {
        "family": recipe.family,
        "network_dim": config.network_dim,
        "network_alpha": config.network_alpha,
        "trained": sorted(recipe.trained),
        "train_batch_size": config.train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "batches_per_epoch": recipe.batches_per_epoch,
        "base_model_sha256": recipe.model.sha256,
    }


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a run whose saved fingerprint differs from this one's, naming the first difference."""
    for key, value in current.items():
        before = saved.get(key)
        if before != value:
            raise AtelierError(
                f"cannot resume: {key} was {before!r} in the saved run and is {value!r} now", field=key
            )


def run_info(recipe: LoraRecipe) -> lora_files.RunInfo:
    """The run as kohya's ``ss_*`` metadata describes it (written into every saved LoRA file)."""
    config = recipe.config
    used = [
        (subset, sum(1 for item in items if item.subset is subset))
        for dataset, items in zip(recipe.datasets, recipe.items, strict=True)
        for subset in dataset.subsets
    ]
    used = [(subset, count) for subset, count in used if count]
    # kohya merges the datasets' tag counts by folder name, the first dataset's winning.
    tags: dict[str, dict[str, int]] = {}
    for items in recipe.items:
        for folder, counts in tag_frequency(items).items():
            tags.setdefault(folder, counts)
    return lora_files.RunInfo(
        family=recipe.family,
        base_model_name=recipe.model.path.name,
        base_model_hash=recipe.model.sha256,
        resolution=config.resolution_size(),
        num_train_images=recipe.num_train_images,
        num_reg_images=recipe.num_reg_images,
        num_batches_per_epoch=recipe.batches_per_epoch,
        num_epochs=recipe.num_epochs,
        max_train_steps=recipe.total_steps,
        total_batch_size=config.train_batch_size
        * config.gradient_accumulation_steps
        * recipe.accelerator.num_processes,
        seed=recipe.seed,
        optimizer=recipe.optimizer_name,
        mixed_precision=recipe.mixed_precision,
        session_id=recipe.seed,
        training_started_at=recipe.state.started_at,
        tag_frequency=tags,
        dataset_dirs=lora_files.dataset_dirs(
            [(s.image_dir.name, s.num_repeats, count) for s, count in used if not s.is_reg]
        ),
        reg_dataset_dirs=lora_files.dataset_dirs(
            [(s.image_dir.name, s.num_repeats, count) for s, count in used if s.is_reg]
        ),
        bucket_info=recipe.data.bucket_info(),
        datasets=lora_files.datasets_metadata(recipe.datasets, recipe.items, recipe.data.assigned)
        if recipe.uses_dataset_config
        else None,
        dataset_sha256=dataset_sha256(item for items in recipe.items for item in items),
        rights=recipe.rights,
    )


def dataset_sha256(items: Iterable[ImageItem]) -> str:
    """One hash of what a LoRA learned from: each image's bytes and caption, regularisation images marked.

    Lines are sorted by content, so the hash names the data whatever its folder or file names; one changed
    pixel or word changes it. Generated images record it (Content Credentials), linking them to the dataset.
    Hashed once per run (the files' sizes and times are the cache key), not at every saved epoch.
    """
    entries = []
    for item in items:
        stat = item.path.stat()
        entries.append((str(item.path), stat.st_mtime_ns, stat.st_size, item.caption, item.is_reg))
    return _hash_entries(tuple(sorted(entries)))


@functools.lru_cache(maxsize=4)
def _hash_entries(entries: tuple[tuple[str, int, int, str, bool], ...]) -> str:
    lines = []
    for path, _, _, caption, is_reg in entries:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        caption_digest = hashlib.sha256(caption.encode("utf-8")).hexdigest()
        lines.append(f"{digest.hexdigest()} {caption_digest} {'reg' if is_reg else 'train'}")
    return hashlib.sha256("\n".join(sorted(lines)).encode("utf-8")).hexdigest()


def summary(
    recipe: LoraRecipe, *, stopped: bool, output_file: Path | None, diffusers_file: Path | None
) -> dict[str, Any]:
    """The contents of ``summary.json``: parameters, what the machine made of them, dataset, progress, outputs."""
    config, state = recipe.config, recipe.state
    info = run_info(recipe)

    def relative(path: Path | None) -> str | None:
        return None if path is None else path.relative_to(recipe.run_dir).as_posix()

    def iso(timestamp: float) -> str:
        return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")

    return {
        "status": "stopped" if stopped else "completed",
        "output_name": config.output_name,
        "base_model": {
            "path": str(recipe.model.path),
            "name": info.base_model_name,
            "architecture": recipe.family,
            "sha256": recipe.model.sha256,
        },
        "parameters": config.to_dict(),
        "effective": {
            "device": str(recipe.device),
            "processes": recipe.accelerator.num_processes,
            "mixed_precision": recipe.mixed_precision,
            "optimizer": recipe.optimizer_name,
            "attention": recipe.attention,
            "seed": recipe.seed,
            "trained": sorted(recipe.trained),
            "latent_cache": None
            if recipe.latent_cache is None
            else ("disk" if recipe.latent_cache.folder else "memory"),
            "text_encoder_cache": recipe.text_cache is not None,
        },
        "dataset": {
            "train_images": recipe.num_train_images,
            "reg_images": recipe.num_reg_images,
            "folders": info.dataset_dirs,
            "buckets": info.bucket_info,
            "tag_frequency": info.tag_frequency,
        },
        "progress": {
            "steps": state.step,
            "total_steps": recipe.total_steps,
            "epochs_done": state.epoch,
            "total_epochs": recipe.num_epochs,
            "batches_per_epoch": recipe.batches_per_epoch,
            "final_loss": state.loss_curve[-1][1] if state.loss_curve else None,
        },
        "timings": {
            "started_at": iso(state.started_at),
            "finished_at": iso(time.time()),
            "training_seconds": round(state.elapsed_seconds, 3),
            "steps_per_second": round(state.step / state.elapsed_seconds, 4)
            if state.elapsed_seconds
            else None,
        },
        "outputs": {
            "kohya": relative(output_file),
            "diffusers": relative(diffusers_file),
            "epoch_files": list(state.epoch_files),
            "samples": list(state.samples),
            "loss_curve": LOSS_CURVE_FILE,
            "state": STATE_FILE if config.save_state else None,
            "summary": SUMMARY_FILE,
        },
        "warnings": list(recipe.warnings),
    }
