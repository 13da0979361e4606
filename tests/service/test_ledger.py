"""Processed-object ledger behaviour, each test run on SQLite and on PostgreSQL."""

from __future__ import annotations

import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from atelier.errors import AtelierError, NotFoundError
from atelier.service.job_store import open_job_store
from atelier.service.ledger import Ledger, open_ledger


@pytest.fixture
def open_ledger_at(database_url):
    opened: list[Ledger] = []

    def _open() -> Ledger:
        ledger = open_ledger(database_url)
        opened.append(ledger)
        return ledger

    yield _open
    for ledger in opened:
        ledger.close()


def test_an_object_version_is_claimed_once(open_ledger_at):
    ledger = open_ledger_at()
    assert ledger.claim_object("training-data", "shoes/001.png", "etag:abc", worker_id="watcher-1")
    assert not ledger.claim_object("training-data", "shoes/001.png", "etag:abc", worker_id="watcher-2")
    entry = ledger.get("training-data", "shoes/001.png", "etag:abc")
    assert (entry.state, entry.worker_id, entry.finished_at) == ("processing", "watcher-1", None)
    assert entry.claimed_at.tzinfo is not None
    # A new upload of the same key is a new version, to be processed again.
    assert ledger.claim_object("training-data", "shoes/001.png", "etag:def")
    assert ledger.claim_object("outputs", "shoes/001.png", "etag:abc")


def test_mark_done_and_failed(open_ledger_at):
    ledger = open_ledger_at()
    ledger.claim_object("training-data", "a.png", "v1")
    ledger.claim_object("training-data", "b.png", "v1")
    ledger.mark_done("training-data", "a.png", "v1")
    ledger.mark_failed("training-data", "b.png", "v1", "not an image")
    done = ledger.get("training-data", "a.png", "v1")
    failed = ledger.get("training-data", "b.png", "v1")
    assert (done.state, done.error) == ("done", None)
    assert (failed.state, failed.error) == ("failed", "not an image")
    assert done.finished_at is not None and failed.finished_at is not None
    assert not ledger.claim_object("training-data", "b.png", "v1")
    assert [entry.key for entry in ledger.list(state="failed")] == ["b.png"]
    assert failed.to_dict()["claimed_at"] == failed.claimed_at.isoformat()


def test_finishing_an_unclaimed_object_raises_not_found(open_ledger_at):
    ledger = open_ledger_at()
    with pytest.raises(NotFoundError, match="never claimed"):
        ledger.mark_done("training-data", "ghost.png", "v1")
    with pytest.raises(NotFoundError):
        ledger.mark_failed("training-data", "ghost.png", "v1", "boom")
    with pytest.raises(NotFoundError):
        ledger.get("training-data", "ghost.png", "v1")


def test_forget_lets_an_object_be_claimed_again(open_ledger_at):
    ledger = open_ledger_at()
    ledger.claim_object("training-data", "a.png", "v1")
    ledger.mark_failed("training-data", "a.png", "v1", "temporary outage")
    assert ledger.forget("training-data", "a.png", "v1")
    assert not ledger.forget("training-data", "a.png", "v1")
    assert ledger.claim_object("training-data", "a.png", "v1")


def test_list_filters_by_bucket_and_pages(open_ledger_at):
    ledger = open_ledger_at()
    for index in range(3):
        ledger.claim_object("training-data", f"{index}.png", "v1")
    ledger.claim_object("models", "lora.safetensors", "v1")
    assert len(ledger.list()) == 4
    assert sorted(entry.key for entry in ledger.list(bucket="training-data")) == ["0.png", "1.png", "2.png"]
    assert len(ledger.list(limit=2)) == 2
    assert len(ledger.list(limit=2, offset=3)) == 1
    with pytest.raises(AtelierError):
        ledger.list(state="pending")


def test_concurrent_claimers_win_each_object_exactly_once(open_ledger_at):
    objects = [("training-data", f"batch/{index:03}.png", f"etag:{index}") for index in range(40)]
    ledgers = [open_ledger_at() for _ in range(6)]
    start = threading.Barrier(len(ledgers))

    def watch(number: int) -> list[tuple[str, str, str]]:
        ledger = ledgers[number]
        order = objects[:]
        random.Random(number).shuffle(order)
        start.wait()
        return [
            (bucket, key, version)
            for bucket, key, version in order
            if ledger.claim_object(bucket, key, version, worker_id=f"watcher-{number}")
        ]

    # result() re-raises anything a watcher thread raised, so a crashed claimer fails the test.
    with ThreadPoolExecutor(max_workers=len(ledgers)) as pool:
        futures = [pool.submit(watch, number) for number in range(len(ledgers))]
        wins = [win for future in futures for win in future.result(timeout=60)]
    assert Counter(wins) == Counter(objects)


def test_claims_survive_reopening(open_ledger_at):
    first = open_ledger_at()
    assert first.claim_object("training-data", "a.png", "v1")
    first.mark_done("training-data", "a.png", "v1")
    first.close()
    reopened = open_ledger_at()
    assert not reopened.claim_object("training-data", "a.png", "v1")
    assert reopened.get("training-data", "a.png", "v1").state == "done"


def test_ledger_shares_the_job_store_engine(database_url):
    store = open_job_store(database_url)
    try:
        ledger = Ledger(store.engine)
        job = store.submit("train", {"dataset": "training-data/shoes"})
        assert ledger.claim_object("training-data", "shoes/001.png", "v1", worker_id=job.id)
        assert ledger.get("training-data", "shoes/001.png", "v1").worker_id == job.id
        assert store.get(job.id).state == "queued"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("bucket", "key", "version", "field"),
    [
        ("", "a.png", "v1", "bucket"),
        ("training-data", "", "v1", "key"),
        ("training-data", "a.png", "", "version"),
        ("training-data", "x" * 1025, "v1", "key"),
    ],
    ids=["empty-bucket", "empty-key", "empty-version", "key-too-long"],
)
def test_claim_rejects_bad_identities(tmp_path, bucket, key, version, field):
    ledger = open_ledger(f"sqlite:///{tmp_path / 'atelier.db'}")
    try:
        with pytest.raises(AtelierError) as caught:
            ledger.claim_object(bucket, key, version)
        assert caught.value.field == field
        assert ledger.list() == []
    finally:
        ledger.close()
