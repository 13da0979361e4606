"""A shared studio: first-step latency cold vs warm, and generation latency while a LoRA trains vs idle.

Everything runs through ``atelier serve`` as shipped (a StudioServer with supervised ``atelier worker``
processes, SQLite and a local data folder) on the tiny demo model (SD 1.5 layout, random weights):

1. **Cold vs warm first step.** The time from ``POST /api/generate`` to the job's first denoising step:
   - cold: a studio with ``--min-workers 0``, idle, so the request pays a worker start and a model load (what
     every request after 30 s of quiet paid before workers were kept warm);
   - warm: a studio with the default ``--min-workers 1`` once ``/api/health/ready`` says the model is loaded,
     measured again after an idle pause longer than ``--idle-seconds``; ``atelier_model_loads_total`` on
     ``/metrics`` shows whether anything was reloaded.
2. **Generation while training.** The time from submission to a finished generation, idle vs while a LoRA run
   trains in the training lane (one generation worker and one training worker, the default), interleaved.

    python bench/studio_lanes.py [--runs 5] [--size 256] [--steps 20] [--append bench/RESULTS.md]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import io
import platform
import re
import socket
import statistics
import tempfile
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

TRAINING = b"""
resolution = 64
min_bucket_reso = 32
max_bucket_reso = 128
bucket_reso_steps = 32
train_batch_size = 2
network_dim = 4
network_alpha = 2.0
learning_rate = 0.05
max_data_loader_n_workers = 0
seed = 1
num_repeats = 1
max_train_epochs = 4000
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _training_zip() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, colour in enumerate(["yellow", "orange", "gold", "khaki"]):
            image = io.BytesIO()
            Image.new("RGB", (64, 64), colour).save(image, format="PNG")
            archive.writestr(f"parka/{index}.png", image.getvalue())
            archive.writestr(f"parka/{index}.txt", f"a {colour} parka")
    return buffer.getvalue()


def _wait(condition, timeout: float, interval: float = 0.005):
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s")


class Studio:
    """A StudioServer in this process with real worker processes; the API through httpx."""

    def __init__(self, **settings) -> None:
        import httpx

        from atelier.service.config import StudioConfig
        from atelier.service.server import StudioServer

        self.data_dir = Path(tempfile.mkdtemp(prefix="atelier-bench-lanes-"))
        config = StudioConfig.for_data_dir(
            self.data_dir, port=_free_port(), watch=True, watch_seconds=0.2, settle_seconds=0.0, **settings
        )
        self.server = StudioServer(config, log_level="warning")
        self.client = httpx.Client(base_url=self.server.start(), timeout=600)

    def generate(self, body: dict) -> dict:
        response = self.client.post("/api/generate", json=body)
        response.raise_for_status()
        return response.json()

    def first_step_seconds(self, body: dict) -> float:
        start = time.perf_counter()
        job = self.generate(body)
        store = self.server.studio.store
        _wait(lambda: (store.get(job["id"]).progress_step or 0) >= 1, timeout=600)
        elapsed = time.perf_counter() - start
        _wait(lambda: store.get(job["id"]).finished, timeout=600)
        return elapsed

    def finished_seconds(self, body: dict) -> float:
        start = time.perf_counter()
        job = self.generate(body)
        store = self.server.studio.store
        done = _wait(lambda: (found := store.get(job["id"])).finished and found, timeout=600)
        if done.state != "succeeded":
            raise SystemExit(f"generation failed: {done.error}")
        return time.perf_counter() - start

    def model_loads(self) -> float:
        text = self.client.get("/metrics").text
        found = re.search(r"^atelier_model_loads_total ([0-9.]+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def close(self) -> None:
        self.client.close()
        self.server.stop()


def measure_cold_vs_warm(body: dict, *, runs: int, idle: float) -> dict:
    cold_times = []
    cold = Studio(min_workers=0, max_workers=1, max_train_workers=0, scale_down_after_seconds=idle)
    try:
        for _ in range(runs):
            # Idle long enough for the supervisor to stop the worker: the next request starts from nothing.
            _wait(
                lambda: cold.server.supervisor.counts() == {"running": 0, "stopping": 0},
                timeout=120,
                interval=0.1,
            )
            cold_times.append(cold.first_step_seconds(body))
    finally:
        cold.close()
    warm_times = []
    warm = Studio(min_workers=1, max_workers=1, max_train_workers=0, scale_down_after_seconds=idle)
    try:
        _wait(lambda: warm.client.get("/api/health/ready").status_code == 200, timeout=300, interval=0.1)
        loads_before = warm.model_loads()
        for _ in range(runs):
            time.sleep(idle * 2)  # longer than the idle time: the warm worker is kept anyway
            warm_times.append(warm.first_step_seconds(body))
        loads_after = warm.model_loads()
    finally:
        warm.close()
    cold_median, warm_median = statistics.median(cold_times), statistics.median(warm_times)
    return {
        "cold_s": cold_median,
        "warm_s": warm_median,
        "ratio": cold_median / warm_median,
        "reloads_while_warm": loads_after - loads_before,
    }


def measure_while_training(body: dict, *, runs: int) -> dict:
    studio = Studio(min_workers=1, max_workers=1, max_train_workers=1)
    try:
        _wait(lambda: studio.client.get("/api/health/ready").status_code == 200, timeout=300, interval=0.1)
        studio.finished_seconds(body)  # warm-up
        idle_times = [studio.finished_seconds(body) for _ in range(runs)]
        storage = studio.server.studio.storage
        storage.put_bytes("training-data/parka.toml", TRAINING)
        storage.put_bytes("training-data/parka.zip", _training_zip())
        store = studio.server.studio.store
        run = _wait(lambda: store.list(kind="train", limit=1), timeout=60, interval=0.1)[0]
        _wait(lambda: (store.get(run.id).progress_step or 0) >= 1, timeout=300, interval=0.1)
        training_times = [studio.finished_seconds(body) for _ in range(runs)]
        still_training = store.get(run.id).state == "running"
        store.cancel(run.id)
    finally:
        studio.close()
    idle_median, training_median = statistics.median(idle_times), statistics.median(training_times)
    return {
        "idle_s": idle_median,
        "training_s": training_median,
        "ratio": training_median / idle_median,
        "training_ran_throughout": still_training,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--idle", type=float, default=2.0, help="the studios' --idle-seconds")
    parser.add_argument("--append", type=Path, default=None, help="append a results section to this file")
    args = parser.parse_args()
    from atelier.cli.common import quiet_libraries

    quiet_libraries()
    body = {
        "prompt": "a yellow parka",
        "steps": args.steps,
        "width": args.size,
        "height": args.size,
        "seed": 7,
    }
    first = measure_cold_vs_warm(body, runs=args.runs, idle=args.idle)
    print(
        f"first step after an idle pause, {args.size}x{args.size}: cold (worker start + model load) "
        f"{first['cold_s']:.2f} s, warm {first['warm_s']:.3f} s, ratio {first['ratio']:.1f}x; "
        f"model reloads while warm: {first['reloads_while_warm']:.0f}"
    )
    lanes = measure_while_training(body, runs=args.runs)
    print(
        f"generation {args.size}x{args.size}/{args.steps} steps: idle {lanes['idle_s']:.2f} s, while a LoRA "
        f"trains {lanes['training_s']:.2f} s, ratio {lanes['ratio']:.2f}; training ran throughout: "
        f"{lanes['training_ran_throughout']}"
    )
    if args.append:
        with args.append.open("a", encoding="utf-8") as results:
            results.write(_markdown(args, first, lanes))


def _markdown(args: argparse.Namespace, first: dict, lanes: dict) -> str:
    import torch

    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, CPU fp32"
    return "\n".join(
        [
            "",
            f"## A shared studio: warm workers and lanes (`bench/studio_lanes.py`, {datetime.now(UTC):%Y-%m-%d})",
            "",
            f"{machine}; tiny demo model, {args.size}x{args.size}, {args.steps} steps, {args.runs} runs, medians.",
            "",
            "| | median | ratio |",
            "| --- | ---: | ---: |",
            f"| first step, warm worker (model loaded), after {args.idle * 2:.0f} s idle | {first['warm_s']:.3f} s | 1.0 |",
            f"| first step, cold (`--min-workers 0`: worker start + model load) | {first['cold_s']:.2f} s "
            f"| {first['ratio']:.1f} |",
            f"| generation, studio idle | {lanes['idle_s']:.2f} s | 1.00 |",
            f"| generation while a LoRA trains in the training lane | {lanes['training_s']:.2f} s "
            f"| {lanes['ratio']:.2f} |",
            "",
            f"Model reloads by the warm worker across the idle pauses: {first['reloads_while_warm']:.0f}. The training "
            f"run was still running after the last generation: {lanes['training_ran_throughout']}.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
