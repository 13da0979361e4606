"""One studio: its database tables, its storage and its settings, opened together from a :class:`StudioConfig`.

:class:`Studio` holds no background activity; :mod:`atelier.service.server` runs the API, the watchers, the
webhook dispatcher and the worker supervisor on top of it, and a worker process opens its own Studio.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from atelier.errors import AtelierError
from atelier.service.config import StudioConfig
from atelier.service.controlnets import CONTROLNET_PREFIX
from atelier.service.database import open_database
from atelier.service.job_store import SqlJobStore
from atelier.service.jobs import JobStore
from atelier.service.leader import LeaderLease
from atelier.service.ledger import Ledger
from atelier.service.modelfiles import FOLDER_MODEL_MARKER, folder_version, upload_folder
from atelier.service.provenance import content_signer
from atelier.service.registry import ModelRecord, ModelRegistry, StudioSettings, inspect_model
from atelier.service.security import ApiKeyStore
from atelier.service.storage import Storage, open_storage
from atelier.service.webhooks import WebhookDeliveries
from atelier.service.worker_board import WorkerBoard

logger = logging.getLogger(__name__)


@dataclass
class Studio:
    """The shared state of a studio deployment, all of it in the database and the storage."""

    config: StudioConfig
    database: Engine
    store: JobStore
    ledger: Ledger
    registry: ModelRegistry
    settings: StudioSettings
    keys: ApiKeyStore
    webhooks: WebhookDeliveries
    storage: Storage
    workers: WorkerBoard
    # Signs Content Credentials into every output when a certificate is configured (service/provenance.py).
    signer: Any = None

    @classmethod
    def open(cls, config: StudioConfig) -> Studio:
        """Connect to the database (creating tables if needed) and the storage of ``config``."""
        # Before anything opens: a wrong certificate or key stops the studio at start-up, naming the setting.
        signer = content_signer(config)
        database = open_database(config.database_url)
        storage = open_storage(config.storage_url, endpoint_url=config.storage_endpoint_url)
        try:
            return cls._with(config, database, storage, signer)
        except sa.exc.OperationalError as exc:
            database.dispose()
            # The driver's message comes first and ends in advice of its own ("Is the server running...").
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            shown = make_url(config.database_url).render_as_string(hide_password=True)
            raise AtelierError(f"cannot open the database {shown}: {reason}", field="db") from None

    @classmethod
    def _with(cls, config: StudioConfig, database: Engine, storage: Storage, signer: Any) -> Studio:
        store = SqlJobStore(database)
        settings = StudioSettings(database)
        return cls(
            config=config,
            database=database,
            store=store,
            ledger=Ledger(database),
            registry=ModelRegistry(database),
            settings=settings,
            keys=ApiKeyStore(database),
            webhooks=WebhookDeliveries(
                store,
                settings,
                attempts=config.webhook_attempts,
                backoff_seconds=config.webhook_backoff_seconds,
                timeout_seconds=config.webhook_timeout_seconds,
                allow_private=config.webhook_allow_private,
            ),
            storage=storage,
            workers=WorkerBoard(database),
            signer=signer,
        )

    def close(self) -> None:
        self.database.dispose()

    def leader_lease(self, name: str, **options: Any) -> LeaderLease:
        """The lease on a role that one process of the studio holds at a time (the bucket watcher, ...)."""
        return LeaderLease(self.database, name, **options)

    def _may_be_checkpoint(self, key: str) -> bool:
        """Whether ``key`` in the models bucket may be a checkpoint the watcher has yet to register.

        ControlNets (their own folder) and LoRAs are not: a studio holding only those still needs the demo.
        """
        from atelier.engine import safetensors_kind

        if key.startswith(CONTROLNET_PREFIX + "/") or self.registry.by_key(key) is not None:
            return False
        if key.endswith("/" + FOLDER_MODEL_MARKER):
            return True
        if not key.endswith(".safetensors"):
            return False
        local = self.storage.local_path(key)
        if local is None:
            return True  # on S3, reading every header at start-up would download them: let the watcher decide
        try:
            return safetensors_kind(local) == "checkpoint"
        except AtelierError:
            return False  # the watcher will refuse it with its reason

    def ensure_demo_model(self) -> ModelRecord | None:
        """Create and register the tiny random-weight demo model when the studio has no model at all.

        Returns the demo's record, or None when a model exists (registered, or waiting in the models bucket for
        the watcher). The demo is labelled "demo: random weights" everywhere it is listed.
        """
        from atelier.engine import DEMO_LABEL, DEMO_MODEL_NAME, create_tiny_model

        if self.registry.list("checkpoint"):
            return None
        if any(self._may_be_checkpoint(item.key) for item in self.storage.list("models")):
            return None
        key = f"models/{DEMO_MODEL_NAME}"
        local = self.storage.local_path(key)
        staging = None
        try:
            if local is None:
                staging = Path(tempfile.mkdtemp(prefix="atelier-demo-"))
                local = create_tiny_model("sd15", staging / DEMO_MODEL_NAME)
                objects = upload_folder(self.storage, local, key)
            else:
                if not (local / FOLDER_MODEL_MARKER).is_file():
                    create_tiny_model("sd15", local, overwrite=True)
                objects = self.storage.list(key)
            info = inspect_model(local)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        version = folder_version(objects)
        claimed = self.ledger.claim_object("models", key, version, worker_id="serve")
        record = self.registry.register(
            name=DEMO_MODEL_NAME,
            storage_key=key,
            info=info,
            version=version,
            is_folder=True,
            source="demo",
            label=DEMO_LABEL,
        )
        if claimed:
            self.ledger.mark_done("models", key, version)
        logger.info("no model found: created the demo model %s (%s)", record.name, DEMO_LABEL)
        return record
