"""Crashes and restarts with real processes, and the supervisor's scaling decisions."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import httpx
import pytest
from studio_helpers import fast_config, install_checkpoint, wait_for

from atelier.service.studio import Studio
from atelier.service.submit import prepare_generation, submit_generation
from atelier.service.supervisor import Lane, WorkerSupervisor, worker_command

SMALL = {"prompt": "a red bottle", "steps": 2, "width": 64, "height": 64, "seed": 11}
# Worker processes inherit these: a test run on two cores stays responsive.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start_worker(config, worker_id: str) -> subprocess.Popen:
    return subprocess.Popen(worker_command(config, worker_id), env=CHILD_ENV)


def stop(process: subprocess.Popen, signum: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(signum)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_a_worker_killed_mid_job_leaves_the_job_to_another_worker(tmp_path, postgres_url, tiny_models):
    config = fast_config(
        tmp_path / "data", database_url=postgres_url, lease_seconds=1.5, progress_seconds=0.1
    )
    studio = Studio.open(config)
    workers: dict[str, subprocess.Popen] = {}
    try:
        install_checkpoint(studio, tiny_models("sd15"), "tiny-sd15")
        job = submit_generation(studio, prepare_generation(studio, {**SMALL, "steps": 40}))
        # Two workers share the queue; whichever takes the job is killed in the middle of it.
        workers = {worker_id: start_worker(config, worker_id) for worker_id in ("worker-a", "worker-b")}
        running = wait_for(lambda: (found := studio.store.get(job.id)).progress_step and found, timeout=120)
        victim = running.worker_id
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait()
        assert studio.store.get(job.id).state == "running"
        done = wait_for(lambda: (found := studio.store.get(job.id)).finished and found, timeout=120)
        assert done.state == "succeeded", done.error
        assert done.attempts == 2
        images = [item.key for item in studio.storage.list(f"outputs/{job.id}") if item.key.endswith(".png")]
        assert len(images) == 1
        assert not studio.store.complete(job.id, victim, {"stale": True})
        assert studio.store.get(job.id).result == done.result
    finally:
        for process in workers.values():
            stop(process)
        studio.close()


def test_sigterm_during_a_long_job_hands_it_back_within_the_grace_period(tmp_path, tiny_models):
    config = fast_config(tmp_path / "data", stop_grace_seconds=1.0)
    studio = Studio.open(config)
    worker = None
    try:
        install_checkpoint(studio, tiny_models("sd15"), "tiny-sd15")
        job = submit_generation(studio, prepare_generation(studio, {**SMALL, "steps": 500, "batch_count": 8}))
        worker = start_worker(config, "scaled-down")
        wait_for(lambda: studio.store.get(job.id).progress_step, timeout=120)
        worker.send_signal(signal.SIGTERM)  # a scale-down or a deploy
        assert worker.wait(timeout=30) == 0
        handed_back = studio.store.get(job.id)
        # Not lost, not failed, no attempt used up: the next worker runs it.
        assert (handed_back.state, handed_back.attempts, handed_back.worker_id) == ("queued", 0, None)
        assert handed_back.error == "the worker was stopped; the job was requeued"
        board = {record.id: record.state for record in studio.workers.list()}
        assert board["scaled-down"] == "stopped"
    finally:
        if worker is not None:
            stop(worker)
        studio.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(data_dir, port: int, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "atelier", "serve", "--data", str(data_dir), "--port", str(port), *extra]
    return subprocess.Popen(command, env=CHILD_ENV)


def test_jobs_queued_before_a_restart_all_complete(tmp_path, tiny_models):
    data_dir = tmp_path / "data"
    studio = Studio.open(fast_config(data_dir))
    install_checkpoint(studio, tiny_models("sd15"), "tiny-sd15")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    first = _serve(data_dir, port, "--max-workers", "0")
    second = None
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            wait_for(lambda: _healthy(client), timeout=120)
            ids = [
                client.post("/api/generate", json={**SMALL, "seed": seed}).json()["id"] for seed in (1, 2, 3)
            ]
            stop(first)
            assert [studio.store.get(job_id).state for job_id in ids] == ["queued"] * 3
            second = _serve(data_dir, port, "--max-workers", "1")
            wait_for(lambda: _healthy(client), timeout=120)
            wait_for(
                lambda: all(
                    client.get(f"/api/jobs/{job_id}").json()["state"] == "succeeded" for job_id in ids
                ),
                timeout=180,
            )
            assert "atelier_local_workers" in client.get("/metrics").text
        stop(second)
        assert second.returncode == 0
    finally:
        stop(first)
        if second is not None:
            stop(second)
        studio.close()


def _healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/api/health").status_code == 200
    except httpx.TransportError:
        return False


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


SLEEPER = (
    "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *args: sys.exit(0))\ntime.sleep(120)\n"
)


@pytest.fixture
def supervised(tmp_path, database_url, tiny_models):
    studio = Studio.open(fast_config(tmp_path / "data", database_url=database_url))
    install_checkpoint(studio, tiny_models("sd15"), "tiny-sd15")
    clock = FakeTime()
    spawned: list[subprocess.Popen] = []

    def spawn(worker_id: str, lane: Lane) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", SLEEPER])
        spawned.append(process)
        return process

    supervisor = WorkerSupervisor(
        studio.store,
        lanes=[Lane("generate", ("generate",), 0, 2), Lane("train", ("train",), 0, 1)],
        spawn=spawn,
        scale_down_after=30,
        monotonic=clock,
    )
    yield studio, supervisor, clock, spawned
    supervisor.shutdown(timeout=5)
    studio.close()


def _settle(supervisor, spawned, expected_running: int) -> None:
    def reached() -> bool:
        supervisor.tick()
        return supervisor.counts() == {"running": expected_running, "stopping": 0}

    wait_for(reached, timeout=20, interval=0.05)


def test_the_supervisor_scales_on_queue_depth_and_down_to_zero(supervised):
    studio, supervisor, clock, spawned = supervised
    supervisor.tick()
    assert supervisor.counts()["running"] == 0
    jobs = [submit_generation(studio, prepare_generation(studio, SMALL)) for _ in range(3)]
    supervisor.tick()
    assert supervisor.counts()["running"] == 2  # three queued, two at most
    busy_worker = supervisor.worker_ids[0]
    claimed = studio.store.claim(busy_worker)
    for job in jobs:
        if job.id != claimed.id:
            studio.store.cancel(job.id)
    supervisor.tick()
    clock.now += 10
    supervisor.tick()
    assert supervisor.counts()["running"] == 2  # idle, but not for long enough yet
    clock.now += 30
    supervisor.tick()
    assert supervisor.counts() == {"running": 1, "stopping": 1}
    assert supervisor.worker_ids.count(busy_worker) == 1
    _settle(supervisor, spawned, 1)
    assert busy_worker in supervisor.worker_ids  # the worker with a job is never stopped
    studio.store.complete(claimed.id, busy_worker, {})
    supervisor.tick()
    clock.now += 31
    supervisor.tick()
    _settle(supervisor, spawned, 0)


def test_the_supervisor_replaces_crashed_workers_and_keeps_the_minimum(supervised):
    studio, supervisor, clock, spawned = supervised
    supervisor.lanes["generate"] = Lane("generate", ("generate",), 1, 2)
    supervisor.tick()
    assert supervisor.counts()["running"] == 1
    submit_generation(studio, prepare_generation(studio, SMALL))
    supervisor.tick()
    assert supervisor.counts()["running"] == 1  # one queued job: the minimum worker is enough
    spawned[0].kill()
    spawned[0].wait()
    _settle(supervisor, spawned, 1)
    assert supervisor.started_total == 2
    clock.now += 100
    for job in studio.store.list(state="queued"):
        studio.store.cancel(job.id)
    supervisor.tick()
    clock.now += 100
    supervisor.tick()
    assert supervisor.counts()["running"] == 1


def test_training_gets_its_own_worker_so_generation_is_not_held_back(supervised):
    studio, supervisor, clock, spawned = supervised
    run = studio.store.submit("train", {"output_name": "oue-windbreaker"}, priority=-1)
    supervisor.tick()
    assert supervisor.counts("train")["running"] == 1
    assert supervisor.counts("generate")["running"] == 0
    (trainer,) = supervisor.worker_ids
    assert studio.store.claim(trainer, kinds=["train"]).id == run.id
    picture = submit_generation(studio, prepare_generation(studio, SMALL))
    supervisor.tick()
    # A colleague's generation gets a generation worker while the LoRA trains.
    assert supervisor.counts("generate")["running"] == 1
    assert supervisor.counts("train")["running"] == 1
    assert studio.store.queue_position(picture.id) == 0  # the training run does not count as ahead of it


def test_idle_time_counts_from_the_workers_last_job_not_from_when_the_queue_emptied(supervised):
    studio, supervisor, clock, spawned = supervised
    jobs = [submit_generation(studio, prepare_generation(studio, SMALL)) for _ in range(2)]
    supervisor.tick()
    first, second = supervisor.worker_ids
    claimed = [studio.store.claim(first), studio.store.claim(second)]
    supervisor.tick()
    studio.store.complete(claimed[0].id, first, {})
    supervisor.tick()  # the queue is empty from here on; the second worker runs a long job
    clock.now += 100
    supervisor.tick()
    assert supervisor.counts("generate") == {"running": 1, "stopping": 1}  # the first, idle 100 s, stops
    studio.store.complete(claimed[1].id, second, {})
    clock.now += 0.4
    supervisor.tick()
    # The old timer started when the queue emptied, 100 s ago, and stopped this worker 0.4 s after its job.
    assert second in supervisor.worker_ids
    assert supervisor.counts("generate")["running"] == 1
    assert {job.id for job in jobs} == {job.id for job in claimed}


def test_local_cpu_workers_share_the_cores(tmp_path):
    alone = fast_config(tmp_path, max_workers=1, max_train_workers=0, device="cpu")
    assert "--threads" not in worker_command(alone, "w1")
    # A generation worker and a training worker may compute at once: each gets half the cores.
    beside_training = fast_config(tmp_path, max_workers=1, device="cpu")
    command = worker_command(beside_training, "w1")
    assert command[command.index("--threads") + 1] == str(max(1, (os.cpu_count() or 1) // 2))
    shared = fast_config(tmp_path, max_workers=2, max_train_workers=1, device="cpu")
    command = worker_command(shared, "w1")
    assert command[command.index("--threads") + 1] == str(max(1, (os.cpu_count() or 1) // 3))
    assert "--threads" not in worker_command(fast_config(tmp_path, max_workers=4, device="cuda"), "w1")
