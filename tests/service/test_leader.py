"""Leader leases, and the bucket watcher running once across several API replicas (service/leader.py)."""

from __future__ import annotations

import io
import threading
import uuid
import zipfile

import pytest
from studio_helpers import fast_config, install_checkpoint, wait_for

from atelier.service.database import open_database
from atelier.service.leader import LeaderLease
from atelier.service.studio import Studio
from atelier.service.watcher import BucketWatcher


def _training_zip() -> bytes:
    """Two captioned pictures: a training upload the watcher turns into a job."""
    from PIL import Image

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, colour in enumerate(["red", "blue"]):
            image = io.BytesIO()
            Image.new("RGB", (64, 64), colour).save(image, format="PNG")
            archive.writestr(f"sample/{index}.png", image.getvalue())
            archive.writestr(f"sample/{index}.txt", f"a {colour} shoe")
    return buffer.getvalue()


@pytest.fixture
def engine(database_url):
    engine = open_database(database_url)
    yield engine
    engine.dispose()


def test_one_holder_at_a_time_and_a_takeover_once_the_leader_stops_renewing(engine, clock):
    first = LeaderLease(engine, "bucket-watcher", holder="api-1", ttl_seconds=30, clock=clock)
    second = LeaderLease(engine, "bucket-watcher", holder="api-2", ttl_seconds=30, clock=clock)
    assert first.acquire() and not second.acquire()
    clock.advance(20)
    assert first.acquire(), "the holder renews its own lease"
    clock.advance(20)
    assert not second.acquire(), "renewed 20 s ago: still held"
    assert second.current_holder() == "api-1"
    clock.advance(31)  # api-1 died: it stopped renewing
    assert second.current_holder() is None
    assert second.acquire() and not first.acquire()
    assert first.current_holder() == "api-2"
    # Another role is another row.
    assert LeaderLease(engine, "other", holder="api-1", clock=clock).acquire()


def test_a_released_lease_is_taken_at_once(engine, clock):
    first = LeaderLease(engine, "bucket-watcher", holder="api-1", clock=clock)
    second = LeaderLease(engine, "bucket-watcher", holder="api-2", clock=clock)
    assert first.acquire()
    second.release()  # not the holder: nothing changes
    assert not second.acquire()
    first.release()
    assert second.acquire()


def test_two_replicas_on_one_database_and_s3_process_each_dropped_object_exactly_once(
    tmp_path, database_url, s3_endpoint, s3_client, tiny_models
):
    bucket = f"atelier-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=bucket)
    replicas = [
        Studio.open(
            fast_config(
                tmp_path / name,
                database_url=database_url,
                storage_url=f"s3://{bucket}/studio",
                storage_endpoint_url=s3_endpoint,
            )
        )
        for name in ("api-1", "api-2")
    ]
    storage = replicas[0].storage
    watchers = [BucketWatcher(studio, watcher_id=f"api-{n}") for n, studio in enumerate(replicas, 1)]
    stops = [threading.Event() for _ in watchers]
    threads = [
        threading.Thread(target=watcher.run, args=(stop, 0.05), daemon=True)
        for watcher, stop in zip(watchers, stops, strict=True)
    ]
    try:
        install_checkpoint(replicas[0], tiny_models("sd15"), "tiny-sd15")
        for thread in threads:
            thread.start()
        leader = wait_for(lambda: next((w for w in watchers if w.leading), None))
        follower = next(w for w in watchers if w is not leader)
        for n in range(4):
            storage.put_bytes(f"training-data/set{n}.zip", _training_zip())
        storage.put_bytes("models/evil.ckpt", b"not a model")

        def processed() -> list:
            return [entry for entry in replicas[1].ledger.list() if entry.state in ("done", "failed")]

        wait_for(lambda: len(processed()) == 5 + 1)  # four zips, the pickle, the installed checkpoint
        # Only the leader listed and processed anything.
        assert {e.worker_id for e in processed() if e.bucket == "training-data"} == {leader.watcher_id}
        assert not follower.leading

        # The leader stops (rolling update): the other replica takes over at once and carries on.
        stops[watchers.index(leader)].set()
        leader.wake.set()
        threads[watchers.index(leader)].join(timeout=10)
        wait_for(lambda: follower.leading)
        storage.put_bytes("training-data/after.zip", _training_zip())
        wait_for(lambda: len(processed()) == 7)
        threading.Event().wait(0.5)  # several more scans by the new leader: nothing runs twice

        jobs = replicas[0].store.list(kind="train")
        zips = sorted(job.payload["training_data"] for job in jobs)
        assert zips == ["training-data/after.zip", *(f"training-data/set{n}.zip" for n in range(4))]
        by_key = {e.key: e for e in replicas[0].ledger.list()}
        assert by_key["training-data/after.zip"].worker_id == follower.watcher_id
        assert by_key["models/evil.ckpt"].state == "failed"
    finally:
        for stop, watcher in zip(stops, watchers, strict=True):
            stop.set()
            watcher.wake.set()
        for thread in threads:
            thread.join(timeout=10)
        for studio in replicas:
            studio.close()
