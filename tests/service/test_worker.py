"""Workers running generate jobs from the queue, on SQLite and PostgreSQL, local storage and S3."""

from __future__ import annotations

import base64
import io
import json
import threading
from datetime import UTC

import pytest
from PIL import Image
from studio_helpers import fast_config, install_checkpoint, make_lora, new_worker, running_worker, wait_for

from atelier.errors import AtelierError, NotFoundError
from atelier.service.handlers.generate import output_key
from atelier.service.job_store import SqlJobStore
from atelier.service.lease import JobLease
from atelier.service.registry import inspect_model
from atelier.service.studio import Studio
from atelier.service.submit import prepare_generation, submit_generation

SMALL = {"prompt": "a red bottle on a table", "steps": 2, "width": 64, "height": 64, "seed": 1234}


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def studio(tmp_path, database_url, tiny_models):
    studio = Studio.open(fast_config(tmp_path / "data", database_url=database_url))
    install_checkpoint(studio, tiny_models("sd15"), "tiny-sd15")
    yield studio
    studio.close()


def submit(studio, **values):
    return submit_generation(studio, prepare_generation(studio, {**SMALL, **values}))


def test_generate_job_writes_named_images_with_sidecars(studio):
    job = submit(studio, batch_size=2)
    with running_worker(studio):
        done = wait_for(lambda: (found := studio.store.get(job.id)).finished and found)
    assert done.state == "succeeded", done.error
    stamp = job.created_at.astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    keys = sorted(item.key for item in studio.storage.list(f"outputs/{job.id}"))
    assert keys == [
        f"outputs/{job.id}/1234_{stamp}.json",
        f"outputs/{job.id}/1234_{stamp}.png",
        f"outputs/{job.id}/1235_{stamp}.json",
        f"outputs/{job.id}/1235_{stamp}.png",
    ]
    sidecar = json.loads(studio.storage.get_bytes(f"outputs/{job.id}/1235_{stamp}.json"))
    assert sidecar["job_id"] == job.id
    assert sidecar["seed"] == 1235
    assert sidecar["params"]["prompt"] == SMALL["prompt"]
    assert sidecar["params"]["model"] == "tiny-sd15"
    assert sidecar["params"]["steps"] == 2
    image = Image.open(studio.storage.local_path(f"outputs/{job.id}/1235_{stamp}.png"))
    assert image.size == (64, 64)
    assert image.info["parameters"] == sidecar["infotext"]
    assert "Seed: 1235" in sidecar["infotext"]
    assert done.result["seeds"] == [1234, 1235]
    assert done.progress_step == done.progress_total == 2  # one batch of two images


def test_a_job_that_runs_again_overwrites_its_images(studio, clock):
    """A worker that wrote its images but died before completing: the rerun leaves one set, same names."""
    job = submit(studio)
    store = SqlJobStore(studio.database, clock=clock)
    crashed = new_worker(studio, worker_id="crashed")
    claimed = store.claim("crashed", lease_seconds=2)
    lease = JobLease(store, claimed, "crashed", lease_seconds=2, interval=0.1)
    crashed._run_job(claimed, lease)  # outputs written, job never completed
    first = sorted(item.key for item in studio.storage.list(f"outputs/{job.id}"))
    clock.advance(10)
    rerun = new_worker(studio, worker_id="second")
    rerun.store = store
    again = store.claim("second", lease_seconds=60)
    assert again.id == job.id and again.attempts == 2
    rerun.process(again)
    assert store.get(job.id).state == "succeeded"
    assert sorted(item.key for item in studio.storage.list(f"outputs/{job.id}")) == first
    assert not store.complete(job.id, "crashed", {"late": True})


def test_a_running_job_stops_at_the_next_step_when_canceled(studio):
    job = submit(studio, steps=400)
    with running_worker(studio):
        wait_for(lambda: (studio.store.get(job.id).progress_step or 0) >= 2)
        studio.store.cancel(job.id)
        done = wait_for(lambda: (found := studio.store.get(job.id)).finished and found, timeout=10)
    assert done.state == "canceled"
    assert done.progress_step < 400
    assert not [item for item in studio.storage.list(f"outputs/{job.id}") if item.key.endswith(".png")]


def test_a_worker_told_to_abandon_its_job_hands_it_back(studio):
    job = submit(studio, steps=400)
    worker = new_worker(studio)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_for(lambda: (studio.store.get(job.id).progress_step or 0) >= 2)
    worker.stop(abandon_current=True)
    thread.join(timeout=30)
    handed_back = studio.store.get(job.id)
    assert handed_back.state == "queued"
    assert "requeued" in handed_back.error
    assert handed_back.worker_id is None
    # Being stopped is not the job's fault: it keeps its attempts and its place at the front of the queue.
    assert handed_back.attempts == 0
    assert handed_back.queued_at == job.queued_at


def test_a_stopped_worker_finishes_a_short_job_within_its_grace_period(studio):
    job = submit(studio, steps=30)
    worker = new_worker(studio)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_for(lambda: (studio.store.get(job.id).progress_step or 0) >= 1)
    worker.stop(grace_seconds=120)  # SIGTERM from a scale-down or a deploy
    thread.join(timeout=60)
    assert studio.store.get(job.id).state == "succeeded"


def test_a_stopped_worker_hands_a_long_job_back_after_its_grace_period(studio):
    job = submit(studio, steps=500, batch_count=4)
    worker = new_worker(studio)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_for(lambda: (studio.store.get(job.id).progress_step or 0) >= 1)
    worker.stop(grace_seconds=0.3)
    thread.join(timeout=30)
    assert not thread.is_alive()
    handed_back = studio.store.get(job.id)
    assert (handed_back.state, handed_back.attempts, handed_back.worker_id) == ("queued", 0, None)
    assert studio.store.claim("another-worker").id == job.id  # the next worker takes it up: nothing lost


def test_progress_carries_a_live_preview_and_the_result_its_timings(studio):
    long_job = submit(studio, steps=400)
    with running_worker(studio):
        running = wait_for(
            lambda: (found := studio.store.get(long_job.id)).progress_info.get("preview") and found
        )
        studio.store.cancel(long_job.id)
    header, data = running.progress_info["preview"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    preview = Image.open(io.BytesIO(base64.b64decode(data)))
    assert preview.size == (8, 8)  # the linear decode: one pixel per latent pixel of a 64 px image
    assert running.progress_info["preview_step"] % 5 == 0
    job = submit(studio, steps=3)
    with running_worker(studio):
        done = wait_for(lambda: (found := studio.store.get(job.id)).finished and found)
    timings = done.result["timings"]
    assert timings["steps"] == 3
    assert 0 < timings["seconds_per_step"] <= timings["generate_seconds"]


def test_a_warm_worker_loads_the_default_model_once_and_says_so_on_the_board(studio):
    assert not studio.workers.generation_ready()
    with running_worker(studio, kinds=["generate"]) as worker:
        wait_for(studio.workers.generation_ready)
        (record,) = studio.workers.live("generate")
        assert record.loaded_models and record.model_loads == 1  # loaded before any job arrived
        for _ in range(2):
            job = submit(studio)
            wait_for(lambda job=job: studio.store.get(job.id).finished)
        wait_for(lambda: studio.workers.live()[0].state == "ready")
    assert worker.engine.models.loads == 1
    assert studio.workers.model_loads_total() == 1
    assert not studio.workers.live()  # a stopped worker leaves the board's live list at once


def test_queue_position_and_priorities(studio):
    low = submit(studio)
    high = submit_generation(studio, prepare_generation(studio, SMALL), priority=5)
    assert studio.store.queue_position(high.id) == 0
    assert studio.store.queue_position(low.id) == 1
    claimed = studio.store.claim("test-worker")
    assert claimed.id == high.id


def test_a_model_deleted_after_submission_fails_the_job_without_retrying(studio):
    job = submit(studio)
    studio.registry.remove("models/tiny-sd15")
    with running_worker(studio):
        done = wait_for(lambda: (found := studio.store.get(job.id)).finished and found)
    assert done.state == "failed"
    assert done.attempts == 1
    assert "tiny-sd15" in done.error
    assert done.progress_info == {"error_field": "model", "user_error": True}


def test_loras_are_used_by_name_and_switched_on_the_warm_model(studio, tiny_models, tmp_path):
    lora_file = make_lora(tiny_models("sd15"), tmp_path / "shoes.safetensors")
    studio.storage.put_file("models/loras/shoes.safetensors", lora_file)
    version = studio.storage.list("models/loras")[0].version
    studio.registry.register(
        name="shoes",
        storage_key="models/loras/shoes.safetensors",
        info=inspect_model(lora_file),
        version=version,
    )
    plain = submit(studio)
    with_lora = submit(studio, prompt=SMALL["prompt"] + " <lora:shoes:1>")
    plain_again = submit(studio)
    with running_worker(studio) as worker:
        for job in (plain, with_lora, plain_again):
            wait_for(lambda job=job: studio.store.get(job.id).state == "succeeded")
        loads = worker.engine.models.loads

    def pixels(job):
        key = studio.store.get(job.id).result["images"][0]["key"]
        return Image.open(studio.storage.local_path(key)).tobytes()

    assert pixels(with_lora) != pixels(plain)
    assert pixels(plain_again) == pixels(plain)
    assert loads == 1
    assert "Lora hashes" in studio.store.get(with_lora.id).result["infotexts"][0]


def test_unknown_names_are_refused_at_submission(studio):
    with pytest.raises(NotFoundError) as lora:
        prepare_generation(studio, {**SMALL, "prompt": "shoes <lora:missing:1>"})
    assert lora.value.field == "lora"
    with pytest.raises(NotFoundError) as model:
        prepare_generation(studio, SMALL, model="missing-model")
    assert model.value.field == "model"
    with pytest.raises(AtelierError) as sampler:
        prepare_generation(studio, {**SMALL, "sampler": "Nope 3000"})
    assert sampler.value.field == "sampler"


def test_seed_minus_one_is_fixed_at_submission(studio):
    prepared = prepare_generation(studio, {**SMALL, "seed": -1})
    assert prepared.params["seed"] >= 0


def test_output_names_use_the_job_creation_time(studio):
    job = submit(studio)
    stamp = job.created_at.astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    assert output_key(job, 7) == f"outputs/{job.id}/7_{stamp}.png"


def test_worker_with_s3_storage_downloads_models_and_stores_outputs(
    tmp_path, s3_endpoint, s3_client, tiny_models
):
    s3_client.create_bucket(Bucket="studio-worker")
    config = fast_config(
        tmp_path / "data", storage_url="s3://studio-worker/atelier", storage_endpoint_url=s3_endpoint
    )
    studio = Studio.open(config)
    try:
        install_checkpoint(studio, tiny_models("sd15"), "tiny-sd15")
        job = submit(studio)
        with running_worker(studio):
            done = wait_for(lambda: (found := studio.store.get(job.id)).finished and found)
        assert done.state == "succeeded", done.error
        stored = s3_client.list_objects_v2(Bucket="studio-worker", Prefix=f"atelier/outputs/{job.id}/")
        names = sorted(item["Key"].rsplit("/", 1)[1] for item in stored["Contents"])
        assert [name.rsplit(".", 1)[1] for name in names] == ["json", "png"]
        cached = list((config.cache_dir / "models").glob("*/tiny-sd15/model_index.json"))
        assert len(cached) == 1
    finally:
        studio.close()


def test_a_failure_that_retrying_cannot_fix_fails_once_with_one_line(studio, monkeypatch):
    """transformers refusing the installed peft: the same on every attempt, so one attempt, one line."""
    from atelier.engine.generate import Engine

    calls = []

    def incompatible(self, request, **kwargs):
        calls.append(request)
        raise ValueError(
            "The version of PEFT you are using is not compatible, please use a version >= 0.22.0\n"
            "  (a second line of detail)"
        )

    monkeypatch.setattr(Engine, "generate", incompatible)
    job = submit(studio)
    with running_worker(studio):
        done = wait_for(lambda: (found := studio.store.get(job.id)).finished and found)
    assert done.state == "failed"
    assert done.attempts == 1 and len(calls) == 1
    assert done.error == (
        "ValueError: The version of PEFT you are using is not compatible, please use a version >= 0.22.0"
    )


def test_an_infrastructure_fault_is_retried(studio, monkeypatch):
    import sqlalchemy as sa

    from atelier.engine.generate import Engine

    real_generate = Engine.generate
    calls = []

    def flaky_storage_then_fine(self, request, **kwargs):
        calls.append(request)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")  # EIO: the disk or network filesystem hiccuped
        return real_generate(self, request, **kwargs)

    monkeypatch.setattr(Engine, "generate", flaky_storage_then_fine)
    job = submit(studio)
    with running_worker(studio):
        done = wait_for(lambda: (found := studio.store.get(job.id)).finished and found)
    assert done.state == "succeeded", done.error
    assert done.attempts == 2 and len(calls) == 2

    # A database that dropped the connection counts too; a missing file does not.
    from atelier.service.failures import is_transient

    assert is_transient(sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")))
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as cause:
            raise RuntimeError("upload failed") from cause
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
    assert not is_transient(FileNotFoundError(2, "No such file or directory"))
    assert not is_transient(ValueError("bad value"))
    assert not is_transient(AtelierError("a user error"))


def test_every_job_kind_has_a_handler_and_typed_records():
    from atelier.service.handlers import HANDLERS
    from atelier.service.job_types import PAYLOAD_TYPES, RESULT_TYPES
    from atelier.service.jobs import JOB_KINDS

    assert set(HANDLERS) == set(PAYLOAD_TYPES) == set(RESULT_TYPES) == set(JOB_KINDS)
