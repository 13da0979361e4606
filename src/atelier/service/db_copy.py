"""Moving a studio's database: every table of one (the embedded SQLite) copied into an empty other (PostgreSQL).

``atelier db migrate-to URL`` is the command; :func:`copy_database` does the work:

1. both databases are brought to the newest schema by the same migrations ``serve`` runs, so the tables match;
2. the target must be empty (a second run cannot double the jobs or mix two studios);
3. every table is copied in one transaction on the target, parents first, in batches, with the column types of
   the code (UTC datetimes, JSON), so a failure leaves the target as empty as it was;
4. PostgreSQL's sequences (``jobs.seq``) are moved past the copied ids, so new jobs queue after the old ones.

Stop ``serve`` and the workers first: a job that changes during the copy is copied as it was when read.
The copy names the tables it knows; a table in the source that none of them is refuses the copy rather than
leaving it behind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from atelier.errors import AtelierError, ConflictError, NotFoundError

# Every module that defines tables of the studio database, imported for its tables in ``metadata``.
from atelier.service import job_store, leader, ledger, registry, security, worker_board  # noqa: F401
from atelier.service.database import metadata, migrate, open_database

BATCH_ROWS = 500
# Alembic's own bookkeeping: each database has its own, written by ``migrate``.
_NOT_COPIED = frozenset({"alembic_version"})


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _check_known_tables(source: Engine) -> None:
    present = set(sa.inspect(source).get_table_names()) - _NOT_COPIED
    unknown = sorted(present - set(metadata.tables))
    if unknown:
        raise AtelierError(
            f"the source database has table {unknown[0]!r}, which this version of Atelier does not know; "
            "copying would leave it behind (upgrade Atelier first)",
            field="source",
        )


def _check_empty(target: Engine, url: str) -> None:
    with target.connect() as conn:
        for table in metadata.sorted_tables:
            if conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one():
                raise ConflictError(
                    f"the target database {_shown(url)} already has rows in {table.name}: migrate into an "
                    "empty database",
                    field="target",
                )


def _reset_sequences(conn: sa.Connection) -> None:
    """Point each PostgreSQL serial sequence past the highest copied id (explicit ids do not advance it)."""
    for table in metadata.sorted_tables:
        column = table.autoincrement_column
        if column is None:
            continue
        conn.execute(
            sa.text(
                "SELECT setval(pg_get_serial_sequence(:table, :column), "
                f"COALESCE((SELECT MAX({column.name}) FROM {table.name}), 0) + 1, false)"
            ),
            {"table": table.name, "column": column.name},
        )


def copy_database(
    source_url: str, target_url: str, *, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Copy every table of the studio database at ``source_url`` into the empty one at ``target_url``.

    Returns the number of rows copied per table; ``progress(table, rows)`` is called after each table.
    """
    parsed = make_url(source_url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").expanduser().is_file():
        # Opening it would create an empty database, and the copy would move nothing without a word.
        raise NotFoundError(f"there is no studio database at {parsed.database}", field="source")
    source = open_database(source_url)
    target = open_database(target_url)
    try:
        if source.url == target.url:
            raise AtelierError("the source and the target are the same database", field="target")
        for engine, url in ((source, source_url), (target, target_url)):
            try:
                migrate(engine)
            except sa.exc.OperationalError as exc:
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
                raise AtelierError(f"cannot open the database {_shown(url)}: {reason}", field="db") from None
        _check_known_tables(source)
        _check_empty(target, target_url)
        counts: dict[str, int] = {}
        with source.connect() as reading, target.begin() as writing:
            for table in metadata.sorted_tables:  # parents before the rows that refer to them
                copied = 0
                rows = reading.execution_options(yield_per=BATCH_ROWS).execute(sa.select(table))
                for batch in rows.partitions():
                    writing.execute(table.insert(), [dict(row._mapping) for row in batch])
                    copied += len(batch)
                counts[table.name] = copied
                if progress is not None:
                    progress(table.name, copied)
            if writing.dialect.name == "postgresql":
                _reset_sequences(writing)
        return counts
    finally:
        source.dispose()
        target.dispose()
