"""What moving a studio onto several machines needs: its SQLite data copied to PostgreSQL, keys from secrets."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql
from studio_helpers import fast_config, install_checkpoint

from atelier.cli import main
from atelier.errors import AtelierError, ConflictError, NotFoundError
from atelier.service.database import metadata, open_database
from atelier.service.db_copy import copy_database
from atelier.service.leader import LeaderLease
from atelier.service.studio import Studio

ADMIN_KEY = "deploy-secret-" + "x" * 40


@pytest.fixture
def empty_postgres(postgres_url):
    """A new, empty PostgreSQL database for one test (the target of a migration)."""
    admin = sa.make_url(postgres_url)
    name = f"atelier_target_{uuid.uuid4().hex[:10]}"
    connect = {"host": admin.host, "port": admin.port, "user": admin.username, "autocommit": True}
    with psycopg.connect(dbname=admin.database, **connect) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield str(admin.set(database=name))
    finally:
        with psycopg.connect(dbname=admin.database, **connect) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _every_row(url: str) -> dict[str, list[tuple]]:
    engine = open_database(url)
    try:
        with engine.connect() as conn:
            return {
                table.name: sorted(
                    (tuple(row) for row in conn.execute(sa.select(table))), key=lambda row: repr(row)
                )
                for table in metadata.sorted_tables
            }
    finally:
        engine.dispose()


def _a_studio_in_use(tmp_path, tiny_models) -> tuple[Studio, dict[str, str]]:
    """A SQLite studio with jobs in every state, models, keys, settings, ledger entries and a worker's row."""
    studio = Studio.open(fast_config(tmp_path / "data"))
    install_checkpoint(studio, tiny_models("sd15"), "tiny-sd15")
    store = studio.store
    ids = {}
    ids["done"] = store.submit(
        "generate", {"prompt": "a shoe"}, owner="alice", webhook_url="https://e.com/h"
    ).id
    ids["failed"] = store.submit("train", {"training_data": "training-data/a.zip"}, priority=-1).id
    ids["running"] = store.submit("caption", {"image": "x"}).id
    ids["queued"] = store.submit("generate", {"prompt": "a bag"}, priority=5).id
    ids["queued-later"] = store.submit("product", {"photo": "y"}).id
    claimed = store.claim("worker-1", kinds=["generate"])
    assert claimed is not None and claimed.id == ids["queued"]  # priority 5 first
    store.complete(ids["queued"], "worker-1", {"images": ["outputs/1/1.png"], "seed": 7})
    ids["done"], ids["queued"] = ids["queued"], ids["done"]  # the prioritised job ran; the first one waits
    assert store.claim("worker-1", kinds=["train"]).id == ids["failed"]
    store.fail(ids["failed"], "worker-1", "CUDA out of memory", retry=False)
    assert store.claim("worker-2", kinds=["caption"]).id == ids["running"]
    studio.settings.update({"sd_model_checkpoint": "tiny-sd15", "CLIP_stop_at_last_layers": 2})
    _, user_key = studio.keys.create("alice")
    studio.keys.create("old", role="admin")
    studio.keys.revoke("old")
    studio.ledger.claim_object("training-data", "training-data/a.zip", "etag-1", worker_id="api-1")
    studio.ledger.mark_failed("training-data", "training-data/a.zip", "etag-1", "bad toml")
    studio.workers.report("worker-2", kinds=["caption"], state="ready", loaded_models=["blip"], model_loads=1)
    LeaderLease(studio.database, "bucket-watcher", holder="api-1").acquire()
    ids["user_key"] = user_key
    return studio, ids


def test_migrate_to_copies_every_row_of_every_table_and_the_studio_goes_on(
    tmp_path, tiny_models, empty_postgres, capsys
):
    studio, ids = _a_studio_in_use(tmp_path, tiny_models)
    source = studio.config.database_url
    studio.close()
    before = _every_row(source)
    assert all(before[name] for name in before), "every table has rows to copy"

    assert main(["db", "migrate-to", empty_postgres, "--data", str(tmp_path / "data")]) == 0
    printed = capsys.readouterr().out
    assert "jobs: 5 rows" in printed and "done:" in printed

    assert _every_row(empty_postgres) == before
    moved = Studio.open(fast_config(tmp_path / "data", database_url=empty_postgres))
    try:
        store = moved.store
        assert [store.get(ids[name]).state for name in ("done", "failed", "running", "queued")] == [
            "succeeded",
            "failed",
            "running",
            "queued",
        ]
        assert store.get(ids["done"]).result == {"images": ["outputs/1/1.png"], "seed": 7}
        assert moved.webhooks.get(ids["queued"]).url == "https://e.com/h"
        assert moved.registry.get("tiny-sd15").architecture == "sd15"
        assert moved.keys.verify(ids["user_key"]).name == "alice"
        assert [(key.name, key.active) for key in moved.keys.list()] == [("alice", True), ("old", False)]
        assert moved.settings.get("CLIP_stop_at_last_layers") == 2
        # The queue goes on in its old order, and a new job gets a new sequence number after the copied ones.
        newest = store.submit("generate", {"prompt": "new"})
        assert store.claim("worker-3", kinds=["generate"]).id == ids["queued"]
        assert store.claim("worker-3", kinds=["generate"]).id == newest.id
    finally:
        moved.close()


def test_migrate_to_refuses_a_database_in_use_a_missing_source_and_the_same_database(
    tmp_path, tiny_models, empty_postgres
):
    studio, _ids = _a_studio_in_use(tmp_path, tiny_models)
    source = studio.config.database_url
    studio.close()
    copy_database(source, empty_postgres)
    with pytest.raises(ConflictError, match="already has rows in"):
        copy_database(source, empty_postgres)
    with pytest.raises(NotFoundError, match="no studio database"):
        copy_database(f"sqlite:///{tmp_path / 'nowhere' / 'atelier.db'}", empty_postgres)
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(AtelierError, match="the same database"):
        copy_database(source, source)


def test_keys_install_takes_the_key_from_the_environment_once(tmp_path, monkeypatch, capsys):
    data = str(tmp_path / "data")
    monkeypatch.setenv("ATELIER_ADMIN_KEY", ADMIN_KEY)
    assert main(["keys", "install", "ops", "--admin", "--from-env", "ATELIER_ADMIN_KEY", "--data", data]) == 0
    assert main(["keys", "install", "ops", "--admin", "--from-env", "ATELIER_ADMIN_KEY", "--data", data]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "admin API key 'ops' installed",
        "admin API key 'ops' was already installed",
    ]
    studio = Studio.open(fast_config(tmp_path / "data"))
    try:
        assert studio.keys.verify(ADMIN_KEY).role == "admin"
    finally:
        studio.close()
    monkeypatch.setenv("ATELIER_ADMIN_KEY", "another-" + "y" * 40)
    assert main(["keys", "install", "ops", "--admin", "--from-env", "ATELIER_ADMIN_KEY", "--data", data]) == 2
    assert "already exists with another key" in capsys.readouterr().err
    monkeypatch.setenv("SHORT", "abc")
    assert main(["keys", "install", "x", "--from-env", "SHORT", "--data", data]) == 2
    assert "at least 32 characters" in capsys.readouterr().err
    assert main(["keys", "install", "x", "--from-env", "UNSET_VARIABLE_X", "--data", data]) == 2
    assert "UNSET_VARIABLE_X is empty or not set" in capsys.readouterr().err


def test_a_studio_database_has_no_table_the_copy_does_not_know(database_url):
    """A table added to the studio must be one that copy_database (metadata) knows, or it would be left behind."""
    engine = open_database(database_url)
    try:
        from atelier.service.db_copy import _check_known_tables
        from atelier.service.job_store import SqlJobStore

        SqlJobStore(engine)
        _check_known_tables(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE surprise (id INTEGER)"))
        with pytest.raises(AtelierError, match="'surprise'"):
            _check_known_tables(engine)
    finally:
        engine.dispose()
