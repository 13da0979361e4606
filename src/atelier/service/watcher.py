"""Bucket watchers: the seed's S3 -> Lambda -> notebook pipeline, without AWS.

Two buckets are watched by listing them every few seconds (polling works the same on a local folder and on
any S3-compatible store, needs no event configuration, and catches up after downtime):

- ``training-data/``: a ``.zip`` starts a LoRA training job. Its hyper-parameters come from the ``.toml`` of the
  same name next to it (kohya names, plus an optional ``base`` model and ``preset``); without one, the preset
  for the default model's family is used.
- ``models/``: a ``.safetensors`` file (or a diffusers folder, once its ``model_index.json`` is there) is
  validated without loading it (safetensors header, architecture, sha256) and registered, so it can be used
  by name right away. Pickle files are refused and never read. Deleted files are unregistered.

An object is processed only after its version has stayed the same for ``settle_seconds``, so a file still being
copied into a local folder is not picked up half-written (S3 objects appear only once complete anyway), and
names used by copying tools for partial files are ignored. Each object version is processed exactly once, also
across restarts and between several watchers, through the ledger in the database.

With several ``serve`` replicas, only one watches at a time: :meth:`BucketWatcher.run` scans only while it holds
the ``bucket-watcher`` leader lease (``service/leader.py``), so the buckets are listed once per interval, not once
per replica; another replica takes over when the leader stops or dies. A1111's refresh endpoints still scan at
once on whichever replica they reach: the ledger keeps that exactly-once too.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from atelier.errors import AtelierError
from atelier.service.captioning import CAPTIONING_PREFIX
from atelier.service.database import utc_now
from atelier.service.leader import LeaderLease
from atelier.service.model_folders import SEGMENTATION_PREFIX
from atelier.service.modelfiles import FOLDER_MODEL_MARKER, PREVIEW_PREFIX, TOKENIZER_SUFFIX, folder_version
from atelier.service.registry import inspect_model, model_name_for_key
from atelier.service.storage import TEMP_PREFIX, ObjectInfo
from atelier.service.studio import Studio
from atelier.service.submit import read_train_config, submit_training

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
# Names that download managers, browsers and copy tools give files they are still writing.
PARTIAL_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".tmp", ".temp", ".filepart", "~")
# The leader lease of the watching replica. A leader renews it before every object it processes, so only a
# replica that stopped (or a single object taking this long) lets another take over.
WATCHER_LEASE = "bucket-watcher"
WATCHER_LEASE_SECONDS = 30.0


@dataclass(frozen=True)
class Unit:
    """One thing to process: a file, or a diffusers folder treated as a whole."""

    bucket: str
    key: str
    version: str
    kind: str  # "training-zip", "model-file", "model-folder", "pickle"


@dataclass
class ScanReport:
    """What one scan did."""

    started_jobs: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    unregistered: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


def _ignored(key: str) -> bool:
    parts = key.split("/")
    if any(part.startswith(".") or part.startswith(TEMP_PREFIX) for part in parts):
        return True
    return key.lower().endswith(PARTIAL_SUFFIXES)


def training_units(objects: list[ObjectInfo]) -> list[Unit]:
    return [
        Unit("training-data", item.key, item.version, "training-zip")
        for item in objects
        if not _ignored(item.key) and item.key.lower().endswith(".zip")
    ]


def model_units(objects: list[ObjectInfo]) -> list[Unit]:
    """Group the models bucket into model files and diffusers folders."""
    # ControlNets are read from their folder by name (service/controlnets.py) and preview decoders from theirs
    # (models/vae-approx/, engine/previews.py): neither is ever registered as a checkpoint. Nor are captioning
    # models (models/captioning/, service/captioning.py) or segmentation models (models/segmentation/, product.py).
    visible = [
        item
        for item in objects
        if not _ignored(item.key)
        and not item.key.startswith(
            ("models/controlnet/", PREVIEW_PREFIX + "/", CAPTIONING_PREFIX + "/", SEGMENTATION_PREFIX + "/")
        )
    ]
    folders = sorted(
        item.key[: -len(FOLDER_MODEL_MARKER) - 1]
        for item in visible
        if item.key.endswith("/" + FOLDER_MODEL_MARKER)
    )
    units = []
    for folder in folders:
        inside = [item for item in visible if item.key.startswith(folder + "/")]
        units.append(Unit("models", folder, folder_version(inside), "model-folder"))
    for item in visible:
        if any(item.key.startswith(folder + "/") for folder in folders):
            continue
        if any(part.endswith(TOKENIZER_SUFFIX) for part in item.key.split("/")[:-1]):
            continue
        lowered = item.key.lower()
        if lowered.endswith(".safetensors"):
            units.append(Unit("models", item.key, item.version, "model-file"))
        elif lowered.endswith(PICKLE_SUFFIXES):
            units.append(Unit("models", item.key, item.version, "pickle"))
    return units


class BucketWatcher:
    """Scans the training-data and models buckets of a studio and acts on new objects."""

    def __init__(
        self,
        studio: Studio,
        *,
        settle_seconds: float | None = None,
        watcher_id: str = "watcher",
        monotonic: Callable[[], float] = time.monotonic,
        lease: LeaderLease | None = None,
    ) -> None:
        self.studio = studio
        self.settle_seconds = studio.config.settle_seconds if settle_seconds is None else settle_seconds
        self.watcher_id = watcher_id
        self._monotonic = monotonic
        self.lease = lease or studio.leader_lease(WATCHER_LEASE, ttl_seconds=WATCHER_LEASE_SECONDS)
        self.leading = False
        self._first_seen: dict[tuple[str, str], tuple[str, float]] = {}
        self._handled: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self.wake = threading.Event()

    def scan(self, *, still_leading: Callable[[], bool] | None = None) -> ScanReport:
        """One pass over both buckets; ``still_leading`` is asked before each object, and False ends the pass."""
        with self._lock:
            report = ScanReport()
            listed_at = utc_now()
            storage = self.studio.storage
            zips = training_units(storage.list("training-data"))
            models = model_units(storage.list("models"))
            for unit in [*self._settled(zips, report), *self._settled(models, report)]:
                if still_leading is not None and not still_leading():
                    return report  # another replica leads now; it will see what this one left
                self._process(unit, report)
            self._unregister_missing({unit.key for unit in models}, listed_at, report)
            return report

    def _settled(self, units: list[Unit], report: ScanReport) -> list[Unit]:
        now = self._monotonic()
        ready = []
        for unit in units:
            if (unit.bucket, unit.key, unit.version) in self._handled:
                continue
            seen = self._first_seen.get((unit.bucket, unit.key))
            if seen is None or seen[0] != unit.version:
                self._first_seen[(unit.bucket, unit.key)] = (unit.version, now)
                seen = (unit.version, now)
            if now - seen[1] >= self.settle_seconds:
                ready.append(unit)
            else:
                report.waiting.append(unit.key)
        return ready

    def _process(self, unit: Unit, report: ScanReport) -> None:
        ledger = self.studio.ledger
        self._handled.add((unit.bucket, unit.key, unit.version))
        self._first_seen.pop((unit.bucket, unit.key), None)
        if not ledger.claim_object(unit.bucket, unit.key, unit.version, worker_id=self.watcher_id):
            return
        try:
            if unit.kind == "training-zip":
                report.started_jobs.append(self._start_training(unit))
            elif unit.kind == "pickle":
                raise AtelierError(
                    f"{unit.key} is a Python pickle; it was not loaded (loading one can run code hidden in it). "
                    "Upload the .safetensors version of the model.",
                    field="file",
                )
            else:
                report.registered.append(self._register_model(unit))
        except AtelierError as problem:
            logger.warning("refused %s: %s", unit.key, problem)
            report.refused[unit.key] = str(problem)
            ledger.mark_failed(unit.bucket, unit.key, unit.version, str(problem))
            if unit.bucket == "models" and unit.kind != "pickle":
                # The file now under this key is not usable; the registration of its previous content is stale.
                self.studio.registry.remove(unit.key)
        except Exception as problem:
            logger.exception("processing %s failed", unit.key)
            # Unexpected failures (storage hiccup) are retried at a later scan.
            ledger.forget(unit.bucket, unit.key, unit.version)
            self._handled.discard((unit.bucket, unit.key, unit.version))
            report.refused[unit.key] = f"{type(problem).__name__}: {problem}"
        else:
            ledger.mark_done(unit.bucket, unit.key, unit.version)

    def _start_training(self, unit: Unit) -> str:
        storage = self.studio.storage
        toml_key = unit.key[: -len(".zip")] + ".toml"
        config = {}
        config_key: str | None = None
        if storage.exists(toml_key):
            config = read_train_config(storage.get_bytes(toml_key), name=PurePosixPath(toml_key).name)
            config_key = toml_key
        job = submit_training(self.studio, unit.key, config=config, config_key=config_key)
        logger.info("training job %s started for %s", job.id, unit.key)
        return job.id

    def _register_model(self, unit: Unit) -> str:
        storage = self.studio.storage
        local = storage.local_path(unit.key)
        staging = None
        try:
            if local is None:
                staging = Path(tempfile.mkdtemp(prefix="atelier-watch-"))
                local = staging / PurePosixPath(unit.key).name
                if unit.kind == "model-folder":
                    for item in storage.list(unit.key):
                        storage.get_file(item.key, local / item.key[len(unit.key) + 1 :])
                else:
                    storage.get_file(unit.key, local)
            info = inspect_model(local)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        record = self.studio.registry.register(
            name=model_name_for_key(unit.key),
            storage_key=unit.key,
            info=info,
            version=unit.version,
            is_folder=unit.kind == "model-folder",
            source="upload",
            keep_source=True,
        )
        logger.info(
            "registered %s %s (%s, %s)", record.kind, record.name, record.architecture, record.short_hash
        )
        return record.name

    def _unregister_missing(self, present: set[str], listed_at: datetime, report: ScanReport) -> None:
        for record in self.studio.registry.list():
            # A record newer than the listing may be for a file written after the listing was taken.
            gone = record.storage_key not in present and record.updated_at < listed_at
            if gone and self.studio.registry.remove(record.storage_key):
                logger.info(
                    "%s was deleted; unregistered %s %s", record.storage_key, record.kind, record.name
                )
                report.unregistered.append(record.name)

    def lead(self) -> bool:
        """Take or renew the leader lease; True while this replica is the one that watches."""
        leading = self.lease.acquire()
        if leading != self.leading:
            if leading:
                logger.info("this process watches the buckets now (lease holder %s)", self.lease.holder)
            else:
                logger.info("another process watches the buckets (%s)", self.lease.current_holder())
            self.leading = leading
        return leading

    def run(self, stop: threading.Event, interval: float) -> None:
        """Scan until ``stop`` is set, while leading (for a background thread). :attr:`wake` scans at once."""
        try:
            while not stop.is_set():
                try:
                    if self.lead():
                        self.scan(still_leading=self.lead)
                except Exception:
                    logger.exception("bucket scan failed; retrying")
                self.wake.wait(interval)
                self.wake.clear()
        finally:
            if self.leading:
                try:
                    self.lease.release()  # the next replica takes over now rather than when the lease expires
                except Exception:
                    logger.warning("could not release the bucket watcher's lease", exc_info=True)
                self.leading = False
