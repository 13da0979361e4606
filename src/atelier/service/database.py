"""The studio's database: opening it by URL, the tables' shared metadata, the UTC time type, and migrations.

One SQLAlchemy Core layer serves SQLite (one machine) and PostgreSQL (several), chosen by URL:

- ``sqlite:///path/to/atelier.db``: WAL mode lets readers run while a worker writes; transactions that read
  and then write start with ``BEGIN IMMEDIATE`` (:func:`write_engine`) so two writers queue on the lock
  instead of one failing with "database is locked".
- ``postgresql://user@host/db``: through psycopg 3.

The schema evolves through Alembic migrations (``service/migrations/versions``), applied by :func:`migrate`
when a process opens the database. The table definitions in ``jobs.py``, ``ledger.py`` and the other stores
describe the newest schema for queries; a test checks that they and the migrations agree.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError

from atelier.errors import AtelierError

SQLITE_BUSY_TIMEOUT_S = 30.0
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration; :func:`migrate` does nothing more than read the version when the database has it.
HEAD_REVISION = "0006"
# Execution option read by the SQLite "begin" hook: transactions that read and then write must take the
# write lock up front, or SQLite aborts the second writer with "database is locked" instead of waiting.
_WRITE_OPTION = "atelier_write_transaction"
# Arbitrary constant key for pg_advisory_lock, serialising migrations between processes.
_MIGRATION_LOCK_KEY = 0x41544C52

# Every table of the studio, in one place: the stores add theirs to it.
metadata = sa.MetaData()


def json_row(row: Any, *, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """A row dataclass (job, ledger entry, model record, key) as JSON-safe values, datetimes as ISO 8601."""
    values = {
        field.name: getattr(row, field.name)
        for field in dataclasses.fields(row)
        if field.name not in leave_out
    }
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in values.items()}


def utc_now() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A datetime column that always hands back timezone-aware UTC values.

    SQLite has no time zone type, so values are stored there as naive UTC; PostgreSQL keeps ``timestamptz``.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass a timezone-aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _normalize_database_url(url: str) -> URL:
    usage = "expected sqlite:///path/to/atelier.db or postgresql://user@host:5432/dbname"
    if not isinstance(url, str) or not url.strip():
        raise AtelierError(f"database URL is empty; {usage}", field="url")
    try:
        parsed = make_url(url.strip())
    except ArgumentError:
        raise AtelierError(f"database URL is not valid; {usage}", field="url") from None
    if parsed.drivername in ("postgres", "postgresql"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername.startswith("postgresql+"):
        return parsed
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        if not parsed.database or parsed.database == ":memory:":
            # Each pooled connection would get its own empty in-memory database.
            raise AtelierError(f"SQLite database URL needs a file path; {usage}", field="url")
        return parsed
    raise AtelierError(
        f"database type {parsed.drivername!r} is not supported; {usage}",
        field="url",
    )


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _connection_record: Any) -> None:
        # Take BEGIN away from the sqlite3 module so _on_begin can choose BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        # With WAL, NORMAL keeps the database consistent on power loss and only risks the last commit.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def open_database(url: str) -> Engine:
    """A SQLAlchemy engine for an Atelier database URL (SQLite file or PostgreSQL via psycopg 3).

    ``postgresql://`` and ``postgres://`` URLs are switched to the psycopg 3 driver. The parent folder of a
    SQLite file is created if missing. Nothing connects yet: each store migrates the schema when it opens.
    """
    parsed = _normalize_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        _install_sqlite_hooks(engine)
    else:
        engine = sa.create_engine(parsed, pool_pre_ping=True)
    return engine


def write_engine(engine: Engine) -> Engine:
    """The same engine, but whose transactions take SQLite's write lock at BEGIN (no-op on PostgreSQL)."""
    return engine.execution_options(**{_WRITE_OPTION: True})


def schema_revision(engine: Engine) -> str | None:
    """The migration the database is at (None for an empty database or one made before migrations)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Bring the database to the newest schema; safe to call from several processes at once.

    A database made before migrations existed (Atelier 0.1.0) is recognised by its tables: the first migration
    creates only what is missing. A database written by a newer Atelier is refused rather than damaged.
    """
    if schema_revision(engine) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.script import ScriptDirectory

    with write_engine(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
        config = _alembic_config(conn)
        known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
        current = (
            conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one_or_none()
            if sa.inspect(conn).has_table("alembic_version")
            else None
        )
        if current is not None and current not in known:
            raise AtelierError(
                f"the database was written by a newer Atelier (schema {current}; this version knows up to "
                f"{HEAD_REVISION}): upgrade Atelier or point it at another database",
                field="db",
            )
        command.upgrade(config, "head")
