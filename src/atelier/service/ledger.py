"""Ledger of storage objects already processed, so each uploaded file version is handled exactly once.

A watcher that finds ``training-data/shoes/001.png`` calls :meth:`Ledger.claim_object` with the object's
version (its ETag, or size and mtime: :attr:`atelier.service.storage.ObjectInfo.version`). The database's
primary key on (bucket, key, version) lets exactly one caller win, across processes and restarts; a new
upload of the same key has a new version and is processed again.

The ledger lives in the job queue's database and can share its engine::

    store = open_job_store(url)
    ledger = Ledger(store.engine)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from atelier.errors import AtelierError, NotFoundError
from atelier.service.database import UtcDateTime, json_row, metadata, migrate, open_database, utc_now

LEDGER_STATES = ("processing", "done", "failed")
MAX_LIST_LIMIT = 1000

processed_objects_table = sa.Table(
    "processed_objects",
    metadata,
    sa.Column("bucket", sa.String(64), primary_key=True),
    # 1024 bytes is S3's key limit; with the other key columns it stays under PostgreSQL's index row limit.
    sa.Column("key", sa.String(1024), primary_key=True),
    sa.Column("version", sa.String(256), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("worker_id", sa.String(200)),
    sa.Column("claimed_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime),
    sa.Index("ix_processed_objects_state", "state"),
    sa.Index("ix_processed_objects_claimed", "claimed_at"),
)


@dataclass(frozen=True)
class LedgerEntry:
    """One claimed object version and what became of it."""

    bucket: str
    key: str
    version: str
    state: str
    error: str | None
    worker_id: str | None
    claimed_at: datetime
    finished_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON-safe values, datetimes as ISO 8601 strings."""
        return json_row(self)


_ENTRY_FIELDS = tuple(field.name for field in fields(LedgerEntry))


def _check_text(value: object, field: str, max_bytes: int) -> str:
    if not isinstance(value, str) or not value or len(value.encode("utf-8")) > max_bytes:
        raise AtelierError(f"{field} must be a non-empty string of at most {max_bytes} bytes", field=field)
    return value


def _check_identity(bucket: str, key: str, version: str) -> None:
    _check_text(bucket, "bucket", 64)
    _check_text(key, "key", 1024)
    _check_text(version, "version", 256)


class Ledger:
    """Processed-object ledger on a SQLAlchemy engine from :func:`atelier.service.jobs.open_database`."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self._clock = clock
        migrate(engine)

    def close(self) -> None:
        """Close the pooled connections (of the shared engine too, if a job store uses it)."""
        self.engine.dispose()

    def _where(self, bucket: str, key: str, version: str) -> sa.ColumnElement[bool]:
        _check_identity(bucket, key, version)
        return sa.and_(
            processed_objects_table.c.bucket == bucket,
            processed_objects_table.c.key == key,
            processed_objects_table.c.version == version,
        )

    def claim_object(self, bucket: str, key: str, version: str, *, worker_id: str | None = None) -> bool:
        """True for exactly one caller per (bucket, key, version), ever; that caller processes the object."""
        _check_identity(bucket, key, version)
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        statement = (
            insert(processed_objects_table)
            .values(
                bucket=bucket,
                key=key,
                version=version,
                state="processing",
                error=None,
                worker_id=worker_id,
                claimed_at=self._clock().astimezone(UTC),
                finished_at=None,
            )
            # The losing insert is skipped instead of raising, so no transaction is aborted; only the
            # winning insert returns a row.
            .on_conflict_do_nothing()
            .returning(processed_objects_table.c.bucket)
        )
        with self.engine.begin() as conn:
            return conn.execute(statement).first() is not None

    def _finish(self, bucket: str, key: str, version: str, state: str, error: str | None) -> None:
        where = self._where(bucket, key, version)
        with self.engine.begin() as conn:
            updated = conn.execute(
                processed_objects_table.update()
                .where(where)
                .values(state=state, error=error, finished_at=self._clock().astimezone(UTC))
            ).rowcount
        if updated == 0:
            raise NotFoundError(f"object {bucket}/{key} version {version!r} was never claimed", field="key")

    def mark_done(self, bucket: str, key: str, version: str) -> None:
        """Record that the claimed object version was processed successfully."""
        self._finish(bucket, key, version, "done", None)

    def mark_failed(self, bucket: str, key: str, version: str, error: str) -> None:
        """Record that processing the claimed object version failed, and why. It is not claimed again."""
        if not isinstance(error, str):
            raise AtelierError("error must be a string", field="error")
        self._finish(bucket, key, version, "failed", error)

    def forget(self, bucket: str, key: str, version: str) -> bool:
        """Drop the entry so the object version can be claimed again (to retry it); False if none existed."""
        where = self._where(bucket, key, version)
        with self.engine.begin() as conn:
            return conn.execute(processed_objects_table.delete().where(where)).rowcount == 1

    def get(self, bucket: str, key: str, version: str) -> LedgerEntry:
        """The entry for one object version; :class:`NotFoundError` if it was never claimed."""
        where = self._where(bucket, key, version)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(processed_objects_table).where(where)).one_or_none()
        if row is None:
            raise NotFoundError(f"object {bucket}/{key} version {version!r} was never claimed", field="key")
        return LedgerEntry(**{name: row._mapping[name] for name in _ENTRY_FIELDS})

    def list(
        self,
        *,
        bucket: str | None = None,
        state: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[LedgerEntry]:
        """Entries, most recently claimed first, optionally only one bucket or one state."""
        query = sa.select(processed_objects_table)
        if bucket is not None:
            query = query.where(processed_objects_table.c.bucket == bucket)
        if state is not None:
            if state not in LEDGER_STATES:
                raise AtelierError(
                    f"state must be one of {', '.join(LEDGER_STATES)}, got {state!r}", field="state"
                )
            query = query.where(processed_objects_table.c.state == state)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
            raise AtelierError(f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}", field="limit")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise AtelierError("offset must be a whole number of 0 or more", field="offset")
        query = query.order_by(
            processed_objects_table.c.claimed_at.desc(),
            processed_objects_table.c.bucket,
            processed_objects_table.c.key,
            processed_objects_table.c.version,
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).all()
        return [LedgerEntry(**{name: row._mapping[name] for name in _ENTRY_FIELDS}) for row in rows]


def open_ledger(url: str, *, clock: Callable[[], datetime] = utc_now) -> Ledger:
    """Open (creating its table if needed) the ledger in the database at a sqlite:/// or postgresql:// URL."""
    return Ledger(open_database(url), clock=clock)
