"""Leader leases: one process of many does a job that must run once, such as watching the buckets.

Several ``atelier serve`` replicas (Kubernetes, Compose) share one database. Each would watch the buckets; the
ledger already makes every object version processed exactly once, but N replicas would list the buckets N times
a second and race each other to the same objects. A :class:`LeaderLease` lets one of them lead:

- a row per role in ``leader_leases`` says who holds it and until when;
- :meth:`LeaderLease.acquire` takes the row when it is free or expired, or renews it for its holder, in one
  ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` statement, so two replicas can never both win (PostgreSQL locks
  the row for the second upsert and re-checks the condition; SQLite serialises writers);
- the holder renews it while it works; a replica that dies stops renewing and another takes over once the lease
  expires; one that stops cleanly :meth:`~LeaderLease.release` s it so another takes over at once.

A row with an expiry rather than PostgreSQL's advisory locks: it works the same on SQLite (several ``serve``
processes on one machine) and through connection poolers such as PgBouncer in transaction mode, which
session-level advisory locks do not survive, and it can be looked at (``SELECT * FROM leader_leases``). Expiry
compares the clocks of the replicas; a skew of a few seconds only shortens or lengthens a takeover, since the
ledger, not the lease, is what keeps processing exactly-once.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from atelier.errors import AtelierError
from atelier.service.database import UtcDateTime, metadata, migrate, utc_now, write_engine

leader_leases_table = sa.Table(
    "leader_leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
)


def process_holder_id() -> str:
    """A holder id unique to this process: host, pid and a random part (pids repeat across containers)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class LeaderLease:
    """The lease on one role (``name``) for one would-be holder, in the studio database."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        *,
        holder: str | None = None,
        ttl_seconds: float = 30.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise AtelierError("lease name must be 1 to 64 characters", field="name")
        if not ttl_seconds > 0:
            raise AtelierError(f"ttl_seconds must be above 0, got {ttl_seconds!r}", field="ttl_seconds")
        self.engine = engine
        self.name = name
        self.holder = holder or process_holder_id()
        self.ttl = timedelta(seconds=ttl_seconds)
        self._clock = clock
        migrate(engine)

    def acquire(self) -> bool:
        """Take the lease if it is free or expired, or renew it if this holder has it; True if held now."""
        now = self._clock()
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        table = leader_leases_table
        proposed = insert(table).values(name=self.name, holder=self.holder, expires_at=now + self.ttl)
        statement = proposed.on_conflict_do_update(
            index_elements=[table.c.name],
            set_={"holder": proposed.excluded.holder, "expires_at": proposed.excluded.expires_at},
            # The existing row is only replaced when it is ours or its holder stopped renewing it.
            where=sa.or_(table.c.holder == self.holder, table.c.expires_at < now),
        ).returning(table.c.holder)
        # SQLite: take the write lock at BEGIN so two processes queue instead of one failing "database is locked".
        with write_engine(self.engine).begin() as conn:
            return conn.execute(statement).first() is not None

    def release(self) -> None:
        """Give the lease up (if held), so another process can take it at once instead of after expiry."""
        with write_engine(self.engine).begin() as conn:
            conn.execute(
                leader_leases_table.delete().where(
                    leader_leases_table.c.name == self.name, leader_leases_table.c.holder == self.holder
                )
            )

    def current_holder(self) -> str | None:
        """Who holds the lease now (None if nobody, or the last holder's lease expired)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(leader_leases_table.c.holder, leader_leases_table.c.expires_at).where(
                    leader_leases_table.c.name == self.name
                )
            ).one_or_none()
        if row is None or row.expires_at < self._clock():
            return None
        return str(row.holder)
