"""What a job handler may use of the worker that runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from atelier.service.config import StudioConfig
from atelier.service.jobs import Job, JobStore
from atelier.service.ledger import Ledger
from atelier.service.modelfiles import ModelFiles
from atelier.service.registry import ModelRegistry
from atelier.service.storage import Storage
from atelier.service.studio import Studio


class WorkerContext(Protocol):
    studio: Studio
    config: StudioConfig
    store: JobStore
    storage: Storage
    registry: ModelRegistry
    ledger: Ledger
    files: ModelFiles
    worker_id: str

    @property
    def engine(self) -> Any: ...

    def train_dir(self, job: Job) -> Path: ...
