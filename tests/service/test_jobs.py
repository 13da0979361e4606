"""Job queue behaviour, each test run on SQLite and on PostgreSQL (see conftest.database_url)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

import atelier
from atelier.errors import AtelierError, NotFoundError
from atelier.service.database import open_database
from atelier.service.job_store import open_job_store


def test_submit_and_get_round_trip(open_store):
    store = open_store()
    job = store.submit(
        "train",
        {"dataset": "training-data/shoes", "steps": 500},
        priority=5,
        owner="studio-key",
        max_attempts=2,
        webhook_url="https://example.com/hook",
    )
    fetched = store.get(job.id)
    assert fetched == job
    assert len(job.id) == 32
    assert (job.kind, job.state, job.priority, job.owner) == ("train", "queued", 5, "studio-key")
    assert job.payload == {"dataset": "training-data/shoes", "steps": 500}
    assert (job.attempts, job.max_attempts, job.cancel_requested) == (0, 2, False)
    assert job.created_at.tzinfo is not None and job.created_at.utcoffset() == timedelta(0)
    as_json = json.loads(json.dumps(job.to_dict()))
    assert as_json["created_at"] == job.created_at.isoformat()
    assert as_json["webhook_url"] == "https://example.com/hook"


def test_get_unknown_job_raises_not_found(open_store):
    with pytest.raises(NotFoundError, match="not found"):
        open_store().get("0" * 32)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"kind": "upscale", "payload": {}}, "kind"),
        ({"kind": "generate", "payload": ["not", "an", "object"]}, "payload"),
        ({"kind": "generate", "payload": {"seed": object()}}, "payload"),
        ({"kind": "generate", "payload": {}, "priority": "high"}, "priority"),
        ({"kind": "generate", "payload": {}, "max_attempts": 0}, "max_attempts"),
        ({"kind": "generate", "payload": {}, "webhook_url": "ftp://example.com"}, "webhook_url"),
        ({"kind": "generate", "payload": {}, "job_id": "../etc"}, "job_id"),
    ],
)
def test_submit_rejects_bad_input(open_store, arguments, field):
    store = open_store()
    arguments = dict(arguments)
    kind = arguments.pop("kind")
    payload = arguments.pop("payload")
    with pytest.raises(AtelierError) as caught:
        store.submit(kind, payload, **arguments)
    assert caught.value.field == field
    assert store.counts()["queued"] == 0


def test_submit_with_existing_job_id_is_refused(open_store):
    store = open_store()
    store.submit("generate", {}, job_id="request-42")
    with pytest.raises(AtelierError, match="already exists"):
        store.submit("generate", {}, job_id="request-42")


def test_claim_takes_highest_priority_then_oldest(open_store):
    store = open_store()
    low = store.submit("generate", {"n": "low"}, priority=-1)
    first_normal = store.submit("generate", {"n": "normal-1"})
    urgent = store.submit("generate", {"n": "urgent"}, priority=10)
    second_normal = store.submit("generate", {"n": "normal-2"})
    third_normal = store.submit("generate", {"n": "normal-3"})
    claimed = [store.claim("worker-1").id for _ in range(5)]
    assert claimed == [urgent.id, first_normal.id, second_normal.id, third_normal.id, low.id]
    assert store.claim("worker-1") is None


def test_claim_marks_job_running_for_the_worker(open_store):
    store = open_store()
    submitted = store.submit("generate", {})
    job = store.claim("worker-1", lease_seconds=30)
    assert job.id == submitted.id
    assert (job.state, job.worker_id, job.attempts) == ("running", "worker-1", 1)
    assert job.started_at is not None
    assert job.lease_expires_at - job.started_at == timedelta(seconds=30)
    assert store.get(job.id) == job


def test_claim_only_takes_requested_kinds(open_store):
    store = open_store()
    train = store.submit("train", {}, priority=100)
    generate = store.submit("generate", {})
    assert store.claim("gpu-small", kinds=["generate"]).id == generate.id
    assert store.claim("gpu-small", kinds=["generate"]) is None
    assert store.claim("gpu-big", kinds="train").id == train.id


def test_concurrent_threads_claim_every_job_exactly_once(open_store):
    submitter = open_store()
    submitted = {submitter.submit("generate", {"index": index}).id for index in range(200)}
    workers = [open_store() for _ in range(4)]
    start = threading.Barrier(len(workers))

    def work(number: int) -> list[str]:
        store, name = workers[number], f"worker-{number}"
        claimed = []
        start.wait()
        while (job := store.claim(name)) is not None:
            claimed.append(job.id)
            assert store.complete(job.id, name, {"by": name})
        return claimed

    # result() re-raises anything a worker thread raised, so a crashed claimer fails the test.
    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        claimed_by_worker = [future.result(timeout=60) for future in [pool.submit(work, n) for n in range(4)]]
    all_claims = [job_id for claims in claimed_by_worker for job_id in claims]
    assert len(all_claims) == len(submitted)
    assert set(all_claims) == submitted
    assert submitter.counts()["succeeded"] == 200


_CLAIMER_PROCESS = """
import sys
from atelier.service.job_store import open_job_store

url, worker = sys.argv[1], sys.argv[2]
store = open_job_store(url)
print("ready", flush=True)
sys.stdin.readline()
claimed = []
while (job := store.claim(worker)) is not None:
    store.complete(job.id, worker, {"by": worker})
    claimed.append(job.id)
print(" ".join(claimed), flush=True)
"""


def test_concurrent_processes_claim_every_job_exactly_once(open_store, database_url):
    submitter = open_store()
    submitted = {submitter.submit("generate", {"index": index}).id for index in range(60)}
    environment = dict(os.environ)
    source_folder = str(Path(atelier.__file__).resolve().parents[1])
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [source_folder, environment.get("PYTHONPATH")]))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER_PROCESS, database_url, f"process-{number}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for number in range(3)
    ]
    for process in processes:
        assert process.stdout.readline().strip() == "ready"
    # Release all processes at once so they really compete for the same jobs.
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    all_claims = []
    for process in processes:
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        all_claims.extend(output.split())
    assert len(all_claims) == len(submitted)
    assert set(all_claims) == submitted


def test_expired_lease_requeues_job_and_counts_the_attempt(open_store, clock):
    store = open_store(clock)
    job = store.submit("train", {})
    store.claim("worker-1", lease_seconds=30)
    clock.advance(20)
    assert store.requeue_expired() == 0
    clock.advance(11)
    assert store.requeue_expired() == 1
    requeued = store.get(job.id)
    assert (requeued.state, requeued.attempts, requeued.worker_id) == ("queued", 1, None)
    assert "lease expired" in requeued.error
    again = store.claim("worker-2")
    assert (again.id, again.attempts, again.worker_id) == (job.id, 2, "worker-2")


def test_claim_takes_back_a_job_whose_worker_died(open_store, clock):
    store = open_store(clock)
    job = store.submit("generate", {})
    store.claim("dead-worker", lease_seconds=10)
    assert store.claim("live-worker") is None
    clock.advance(11)
    reclaimed = store.claim("live-worker")
    assert (reclaimed.id, reclaimed.worker_id, reclaimed.attempts) == (job.id, "live-worker", 2)


def test_job_fails_when_leases_expire_max_attempts_times(open_store, clock):
    store = open_store(clock)
    job = store.submit("train", {}, max_attempts=2)
    for _ in range(2):
        assert store.claim("crashing-worker", lease_seconds=10).id == job.id
        clock.advance(11)
    assert store.requeue_expired() == 1
    failed = store.get(job.id)
    assert (failed.state, failed.attempts) == ("failed", 2)
    assert "attempt 2 of 2" in failed.error
    assert failed.finished_at is not None
    assert store.claim("crashing-worker") is None


def test_fail_retries_until_max_attempts_then_keeps_the_error(open_store):
    store = open_store()
    job = store.submit("generate", {}, max_attempts=2)
    store.claim("worker-1")
    assert store.fail(job.id, "worker-1", "CUDA out of memory")
    retried = store.get(job.id)
    assert (retried.state, retried.error, retried.finished_at) == ("queued", "CUDA out of memory", None)
    store.claim("worker-1")
    assert store.fail(job.id, "worker-1", "CUDA out of memory again")
    failed = store.get(job.id)
    assert (failed.state, failed.error, failed.attempts) == ("failed", "CUDA out of memory again", 2)
    assert failed.finished_at is not None
    assert store.claim("worker-1") is None


def test_fail_without_retry_fails_at_once(open_store):
    store = open_store()
    job = store.submit("generate", {}, max_attempts=5)
    store.claim("worker-1")
    assert store.fail(job.id, "worker-1", "prompt is empty", retry=False)
    failed = store.get(job.id)
    assert (failed.state, failed.error, failed.attempts) == ("failed", "prompt is empty", 1)


def test_complete_stores_result_and_only_counts_once(open_store):
    store = open_store()
    job = store.submit("generate", {})
    store.claim("worker-1")
    assert store.complete(job.id, "worker-1", {"images": ["outputs/a.png"]})
    done = store.get(job.id)
    assert (done.state, done.result, done.lease_expires_at) == (
        "succeeded",
        {"images": ["outputs/a.png"]},
        None,
    )
    assert done.finished_at is not None
    assert not store.complete(job.id, "worker-1", {"images": []})
    assert not store.fail(job.id, "worker-1", "late failure")
    assert store.get(job.id) == done


def test_cancel_queued_job_is_immediate(open_store):
    store = open_store()
    job = store.submit("generate", {})
    canceled = store.cancel(job.id)
    assert (canceled.state, canceled.finished_at is not None) == ("canceled", True)
    assert store.claim("worker-1") is None
    assert store.cancel(job.id) == canceled


def test_cancel_running_job_asks_the_worker_to_stop(open_store):
    store = open_store()
    job = store.submit("train", {})
    store.claim("worker-1")
    assert store.heartbeat(job.id, "worker-1", step=1, total=10)
    requested = store.cancel(job.id)
    assert (requested.state, requested.cancel_requested) == ("running", True)
    assert not store.heartbeat(job.id, "worker-1", step=2, total=10)
    assert store.mark_canceled(job.id, "worker-1")
    canceled = store.get(job.id)
    assert canceled.state == "canceled"
    assert canceled.finished_at is not None


def test_cancel_requested_job_whose_worker_died_ends_canceled(open_store, clock):
    store = open_store(clock)
    job = store.submit("train", {})
    store.claim("worker-1", lease_seconds=10)
    store.cancel(job.id)
    clock.advance(11)
    assert store.requeue_expired() == 1
    assert store.get(job.id).state == "canceled"
    assert store.claim("worker-2") is None


def test_cancel_unknown_job_raises_not_found(open_store):
    with pytest.raises(NotFoundError):
        open_store().cancel("missing")


def test_heartbeat_records_progress_and_extends_the_lease(open_store, clock):
    store = open_store(clock)
    job = store.submit("train", {})
    store.claim("worker-1", lease_seconds=60)
    clock.advance(50)
    info = {"loss": 0.125, "epoch": 2, "preview": "outputs/preview-2.png"}
    assert store.heartbeat(job.id, "worker-1", lease_seconds=60, step=200, total=1000, info=info)
    progressed = store.get(job.id)
    assert (progressed.progress_step, progressed.progress_total, progressed.progress_info) == (
        200,
        1000,
        info,
    )
    clock.advance(50)
    assert store.requeue_expired() == 0
    assert store.get(job.id).state == "running"
    clock.advance(11)
    assert store.requeue_expired() == 1


def test_heartbeat_from_another_worker_is_refused(open_store):
    store = open_store()
    job = store.submit("generate", {})
    store.claim("worker-1")
    assert not store.heartbeat(job.id, "worker-2", step=1)
    assert store.get(job.id).progress_step is None


def test_stale_worker_cannot_touch_a_job_reclaimed_by_another(open_store, clock):
    store = open_store(clock)
    job = store.submit("train", {})
    store.claim("worker-a", lease_seconds=10)
    clock.advance(11)
    assert store.claim("worker-b", lease_seconds=60).id == job.id
    assert not store.heartbeat(job.id, "worker-a")
    assert not store.complete(job.id, "worker-a", {"by": "worker-a"})
    assert not store.fail(job.id, "worker-a", "stale failure")
    assert not store.mark_canceled(job.id, "worker-a")
    still_running = store.get(job.id)
    assert (still_running.state, still_running.worker_id) == ("running", "worker-b")
    assert store.complete(job.id, "worker-b", {"by": "worker-b"})
    assert store.get(job.id).result == {"by": "worker-b"}


def test_queue_position_follows_claim_order(open_store):
    store = open_store()
    normal = store.submit("generate", {})
    later = store.submit("generate", {})
    urgent = store.submit("generate", {}, priority=3)
    assert [store.queue_position(job.id) for job in (urgent, normal, later)] == [0, 1, 2]
    store.claim("worker-1")
    assert store.queue_position(urgent.id) is None
    assert [store.queue_position(job.id) for job in (normal, later)] == [0, 1]
    store.cancel(normal.id)
    assert store.queue_position(normal.id) is None
    assert store.queue_position(later.id) == 0
    with pytest.raises(NotFoundError):
        store.queue_position("missing")


def test_counts_and_list(open_store):
    store = open_store()
    first = store.submit("generate", {})
    second = store.submit("train", {})
    third = store.submit("generate", {})
    store.cancel(third.id)
    store.claim("worker-1", kinds=["train"])
    assert store.counts() == {"queued": 1, "running": 1, "succeeded": 0, "failed": 0, "canceled": 1}
    assert [job.id for job in store.list()] == [third.id, second.id, first.id]
    assert [job.id for job in store.list(kind="generate")] == [third.id, first.id]
    assert [job.id for job in store.list(state="running")] == [second.id]
    assert [job.id for job in store.list(limit=1, offset=1)] == [second.id]
    with pytest.raises(AtelierError) as caught:
        store.list(state="done")
    assert caught.value.field == "state"


def test_jobs_survive_reopening_the_database(open_store, clock):
    store = open_store(clock)
    queued = store.submit("generate", {"prompt": "a red shoe"}, priority=2)
    running = store.submit("train", {"steps": 10})
    store.claim("worker-1", kinds=["train"], lease_seconds=30)
    store.close()
    reopened = open_store(clock)
    assert reopened.get(queued.id).payload == {"prompt": "a red shoe"}
    assert reopened.get(running.id).state == "running"
    clock.advance(31)
    assert reopened.claim("worker-2").id == queued.id
    assert reopened.claim("worker-2").id == running.id


def test_sqlite_database_uses_write_ahead_logging(tmp_path):
    store = open_job_store(f"sqlite:///{tmp_path / 'atelier.db'}")
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    finally:
        store.close()


@pytest.mark.parametrize(
    "url", ["", "mysql://localhost/atelier", "sqlite://", "sqlite:///:memory:", "not a url at all"]
)
def test_unsupported_database_urls_are_refused(url):
    with pytest.raises(AtelierError) as caught:
        open_database(url)
    assert caught.value.field == "url"


def test_postgresql_urls_use_psycopg_3():
    for url in ("postgresql://atelier@db.internal/atelier", "postgres://atelier@db.internal/atelier"):
        engine = open_database(url)
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.dialect.driver == "psycopg"


def test_a_database_from_a_newer_atelier_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'atelier.db'}"
    open_job_store(url).close()
    engine = open_database(url)
    with engine.begin() as conn:
        # A migration this release does not know: written by a newer Atelier.
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(AtelierError, match="newer Atelier"):
        open_job_store(url)


def test_job_times_are_utc(open_store):
    store = open_store()
    job = store.submit("generate", {})
    assert job.created_at.tzinfo == UTC
    assert store.claim("worker-1").lease_expires_at.tzinfo == UTC


def test_a_job_and_its_webhook_are_written_together_or_not_at_all(open_store):
    store = open_store()
    job = store.submit("generate", {}, webhook_url="https://example.com/hook", job_id="with-hook")
    assert store.delivery(job.id).url == "https://example.com/hook"
    # A delivery row already holds the next id: writing the job's own fails, and the job goes with it.
    store.submit("generate", {}, webhook_url="https://example.com/a", job_id="blocker")
    from atelier.service.job_store import deliveries_table

    with store.engine.begin() as conn:
        conn.execute(
            deliveries_table.update().where(deliveries_table.c.job_id == "blocker").values(job_id="next")
        )
    with pytest.raises(AtelierError):
        store.submit("generate", {}, webhook_url="https://example.com/b", job_id="next")
    with pytest.raises(NotFoundError):
        store.get("next")
