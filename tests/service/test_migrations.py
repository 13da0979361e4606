"""Schema migrations: a database made by Atelier 0.1.0 opens in this release with nothing lost, on both backends.

The fixtures in ``data/`` were written by Atelier 0.1.0 itself (the release before migrations), one row in each
table: ``sqlite3 .dump`` and ``pg_dump --inserts`` of a studio with a queued job, a webhook delivery, an API
key, a registered model, a setting and a ledger entry.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql
from studio_helpers import fast_config

from atelier.service.database import HEAD_REVISION, metadata, schema_revision
from atelier.service.studio import Studio

DATA = Path(__file__).parent / "data"


def _sqlite_release_database(tmp_path: Path) -> str:
    path = tmp_path / "release.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((DATA / "release-0.1.0.sqlite.sql").read_text())
    return f"sqlite:///{path}"


@pytest.fixture
def release_database(request, tmp_path, postgres_url):
    """A database exactly as Atelier 0.1.0 left it, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield _sqlite_release_database(tmp_path)
        return
    admin_url = sa.make_url(postgres_url)
    name = f"atelier_release_{uuid.uuid4().hex[:10]}"
    connect = {"host": admin_url.host, "port": admin_url.port, "user": admin_url.username}
    with psycopg.connect(dbname=admin_url.database, autocommit=True, **connect) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dump = "\n".join(
        line
        for line in (DATA / "release-0.1.0.postgresql.sql").read_text().splitlines()
        if not line.startswith("\\")  # psql meta-commands (\restrict) are not SQL
    )
    with psycopg.connect(dbname=name, autocommit=True, **connect) as conn:
        conn.execute(dump)
    try:
        yield str(admin_url.set(database=name))
    finally:
        with psycopg.connect(dbname=admin_url.database, autocommit=True, **connect) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize("release_database", ["sqlite", "postgresql"], indirect=True)
def test_a_release_database_is_upgraded_in_place_with_nothing_lost(tmp_path, release_database):
    studio = Studio.open(fast_config(tmp_path / "data", database_url=release_database))
    try:
        assert schema_revision(studio.database) == HEAD_REVISION
        job = studio.store.get("release-job-1")
        assert (job.state, job.owner, job.payload["model"]) == ("queued", "alice", "shoes-v1")
        assert job.queued_at == job.created_at and job.created_at.tzinfo == UTC
        assert studio.webhooks.get(job.id).url == "https://example.com/hook"
        (key,) = studio.keys.list()
        assert (key.name, key.role) == ("alice", "admin")  # keys made before roles could do everything
        assert studio.registry.get("shoes-v1").storage_key == "models/shoes-v1.safetensors"
        assert studio.settings.get("sd_model_checkpoint") == "shoes-v1"
        assert [entry.state for entry in studio.ledger.list(bucket="models")] == ["done"]
        assert not sa.inspect(studio.database).has_table("atelier_schema_versions")
        # ...and it works as a queue again.
        assert studio.store.claim("worker-1").id == "release-job-1"
        assert studio.keys.create("bob")[0].role == "user"
    finally:
        studio.close()


@pytest.mark.parametrize("release_database", ["sqlite", "postgresql"], indirect=True)
def test_migrated_and_new_databases_match_the_tables_the_code_defines(
    tmp_path, release_database, database_url
):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    for url in (release_database, database_url):
        studio = Studio.open(fast_config(tmp_path / uuid.uuid4().hex, database_url=url))
        try:
            with studio.database.connect() as conn:
                differences = compare_metadata(MigrationContext.configure(conn), metadata)
        finally:
            studio.close()
        assert differences == [], url


def test_the_head_revision_constant_is_the_newest_migration():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from atelier.service.database import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION
