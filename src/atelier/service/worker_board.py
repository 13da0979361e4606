"""Which workers are alive and what they hold: the board behind ``/health/ready`` and the model-load counter.

Workers run in other processes, often on other machines; the database is the one place every API process can
see them. Each worker writes its row when it starts, when its models change and every few seconds while idle
(``seen_at``). A row whose ``seen_at`` is older than :data:`STALE_AFTER_SECONDS` belongs to a worker that
died without saying so. Rows of stopped workers are kept for a week, so ``atelier_model_loads_total`` on
``/metrics`` stays a counter (it never goes down when a worker stops), then pruned. A worker with a CUDA device
also writes its VRAM (``vram``: bytes used, total, free, peak and reserved, see ``engine/memory.vram_stats``).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from atelier.service.database import UtcDateTime, metadata, utc_now, write_engine

# A live worker writes at least every BEAT_SECONDS; three missed beats and it counts as gone.
BEAT_SECONDS = 5.0
STALE_AFTER_SECONDS = 3 * BEAT_SECONDS
KEEP_STOPPED = timedelta(days=7)
# "unloaded": idle and ready, its models dropped on request (A1111's unload-checkpoint); the next job loads one.
WORKER_STATES = ("starting", "ready", "unloaded", "stopping", "stopped")
# The studio setting through which A1111's unload-checkpoint / reload-checkpoint reach every worker:
# {"action": "unload" | "reload", "serial": n}. Workers act on a serial they have not seen, when idle.
CHECKPOINT_CONTROL = "checkpoint_control"
CHECKPOINT_ACTIONS = ("unload", "reload")

workers_table = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("kinds", sa.String(100), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("loaded_models", sa.JSON, nullable=False),
    sa.Column("model_loads", sa.Integer, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("seen_at", UtcDateTime, nullable=False),
    sa.Column("vram", sa.JSON, nullable=True),  # None on a worker without a CUDA device
)


@dataclass(frozen=True)
class WorkerRecord:
    id: str
    kinds: tuple[str, ...]
    state: str
    loaded_models: list[str]
    model_loads: int
    started_at: datetime
    seen_at: datetime
    vram: dict[str, int] | None = None

    def is_live(self, now: datetime) -> bool:
        return self.state != "stopped" and now - self.seen_at <= timedelta(seconds=STALE_AFTER_SECONDS)


class WorkerBoard:
    """The ``workers`` table: each worker's own row, written by that worker only."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self._write_engine = write_engine(engine)
        self._clock = clock

    def report(
        self,
        worker_id: str,
        *,
        kinds: Iterable[str],
        state: str,
        loaded_models: Iterable[str],
        model_loads: int,
        vram: Mapping[str, int] | None = None,
    ) -> None:
        """Write this worker's row (insert or update) with the time it was seen (and its VRAM, on a GPU)."""
        if state not in WORKER_STATES:
            raise ValueError(f"worker state must be one of {WORKER_STATES}, got {state!r}")
        now = self._clock()
        values: dict[str, Any] = {
            "kinds": ",".join(kinds),
            "state": state,
            "loaded_models": sorted(loaded_models),
            "model_loads": model_loads,
            "seen_at": now,
            "vram": {key: int(value) for key, value in vram.items()} if vram is not None else None,
        }
        with self._write_engine.begin() as conn:
            updated = conn.execute(
                workers_table.update().where(workers_table.c.id == worker_id).values(**values)
            ).rowcount
            if not updated:
                conn.execute(workers_table.insert().values(id=worker_id, started_at=now, **values))
            if state == "stopped":
                conn.execute(
                    workers_table.delete().where(
                        workers_table.c.state == "stopped", workers_table.c.seen_at < now - KEEP_STOPPED
                    )
                )

    def list(self) -> builtins.list[WorkerRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(workers_table).order_by(workers_table.c.started_at)).all()
        return [
            WorkerRecord(
                id=row.id,
                kinds=tuple(kind for kind in row.kinds.split(",") if kind),
                state=row.state,
                loaded_models=list(row.loaded_models or []),
                model_loads=int(row.model_loads),
                started_at=row.started_at,
                seen_at=row.seen_at,
                vram=dict(row.vram) if row.vram else None,
            )
            for row in rows
        ]

    def live(self, kind: str | None = None) -> builtins.list[WorkerRecord]:
        """Workers seen recently and not stopped (taking ``kind`` jobs, if given)."""
        now = self._clock()
        return [
            record for record in self.list() if record.is_live(now) and (kind is None or kind in record.kinds)
        ]

    def generation_ready(self) -> bool:
        """Whether a live generation worker has a model loaded (a request would start sampling at once), or
        dropped its models on request: the studio is then ready as asked, and ``reload-checkpoint`` must reach it."""
        return any(
            (record.state == "ready" and record.loaded_models) or record.state == "unloaded"
            for record in self.live("generate")
        )

    def model_loads_total(self) -> int:
        """Model loads from disk by every worker this board has seen (stopped ones included, for a week)."""
        return sum(record.model_loads for record in self.list())


def request_checkpoint_action(settings: Any, action: str, serial: int) -> None:
    """Ask every generation worker to drop (``unload``) or load again (``reload``) its models."""
    if action not in CHECKPOINT_ACTIONS:
        raise ValueError(f"action must be one of {CHECKPOINT_ACTIONS}")
    settings.update({CHECKPOINT_CONTROL: {"action": action, "serial": serial}})
