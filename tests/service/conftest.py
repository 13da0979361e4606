"""Fixtures for the service tests.

``database_url`` runs a test against a SQLite file and against PostgreSQL (a throwaway database created for
the session, with a fresh schema per test). ``storage`` runs a test against a local folder and against an
S3 bucket on moto's HTTP server on loopback.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from atelier.service.job_store import SqlJobStore, open_job_store
from atelier.service.storage import Storage, open_storage

PG_HOST = os.environ.get("ATELIER_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("ATELIER_TEST_PG_PORT", "5432"))
PG_USERS = ("postgres", "root")
PG_ADMIN_DATABASE = "test"


class FakeClock:
    """Real time plus an offset the test can push forward, to expire leases without sleeping."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of an empty PostgreSQL database made for this test session and dropped afterwards."""
    admin = None
    problems = []
    for user in PG_USERS:
        try:
            admin = psycopg.connect(
                host=PG_HOST,
                port=PG_PORT,
                user=user,
                dbname=PG_ADMIN_DATABASE,
                autocommit=True,
                connect_timeout=3,
            )
            break
        except psycopg.OperationalError as exc:
            problems.append(f"{user}: {str(exc).strip().splitlines()[-1]}")
    if admin is None:
        pytest.skip(
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} (database {PG_ADMIN_DATABASE!r}, tried "
            f"{'; '.join(problems)}); the PostgreSQL variants of the service tests are skipped"
        )
    name = f"atelier_test_{uuid.uuid4().hex[:12]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    # Commits in tests need not wait for the disk; this keeps hundreds of small transactions fast.
    admin.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(sql.Identifier(name)))
    try:
        yield f"postgresql://{admin.info.user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A database URL with no tables yet: a SQLite file, or a fresh schema in the session's PG database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'atelier.db'}"
    base_url = request.getfixturevalue("postgres_url")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return f"{base_url}?options=-csearch_path%3D{schema}"


@pytest.fixture
def open_store(database_url: str) -> Iterator[Callable[..., SqlJobStore]]:
    """Opens job stores on the test database (several may be open at once, like several workers)."""
    opened: list[SqlJobStore] = []

    def _open(clock: Callable[[], datetime] | None = None) -> SqlJobStore:
        store = open_job_store(database_url, clock=clock) if clock else open_job_store(database_url)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """HTTP endpoint of moto's S3 server on loopback, with fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "atelier-test")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "atelier-test-secret")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.delenv("AWS_PROFILE", raising=False)
        patch.delenv("AWS_SESSION_TOKEN", raising=False)
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str) -> Any:
    """A boto3 S3 client for the moto server, to set up buckets behind Atelier's back."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def s3_storage(s3_endpoint: str, s3_client: Any) -> Storage:
    """Empty storage under a prefix of a new bucket on the moto S3 server."""
    bucket = f"atelier-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=bucket)
    return open_storage(f"s3://{bucket}/studio", endpoint_url=s3_endpoint)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path) -> Storage:
    """Empty storage: a local folder, or S3 (see s3_storage)."""
    if request.param == "local":
        return open_storage(str(tmp_path / "storage"))
    return request.getfixturevalue("s3_storage")
