"""The studio service against a direct engine call, and the job queue's throughput, in one run.

Latency: the tiny demo model (SD 1.5 layout, random weights), txt2img at 256x256 with 20 steps, once through
the whole service (HTTP POST /sdapi/v1/txt2img -> job queue -> a supervised `atelier worker` process ->
PNG + sidecar in the outputs bucket -> response with base64 PNGs) and once as a direct `Engine.generate` call
in this process, interleaved. Reports the median of each and their ratio (goal <= 1.05), and checks that both
ways give the same pixels.

Throughput: how many trivially small jobs per second the queue lets workers claim and complete, with several
claiming processes at once, on SQLite (WAL) and on PostgreSQL (FOR UPDATE SKIP LOCKED).

    python bench/service_vs_engine.py [--runs 7] [--size 256] [--steps 20] [--jobs 2000] [--claimers 4]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--append bench/RESULTS.md]
"""

from __future__ import annotations

import os

# Two processes take turns on the same cores here (this one for the direct call, the worker for the service);
# OpenMP threads that keep spinning after their turn would slow the other side down. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import base64
import io
import multiprocessing
import platform
import socket
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

PROMPT = "a product photo of a yellow windbreaker, forest, masterpiece"
NEGATIVE = "low quality, watermark"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure_latency(*, size: int, steps: int, runs: int, threads: int, overhead_runs: int) -> dict:
    import httpx
    import torch
    from PIL import Image

    from atelier.cli.common import quiet_libraries
    from atelier.engine.generate import Engine
    from atelier.engine.request import GenerationRequest
    from atelier.service.config import StudioConfig
    from atelier.service.server import StudioServer

    quiet_libraries()
    torch.set_num_threads(threads)
    # The worker process gets the same number of threads as the direct call here.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    data_dir = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    config = StudioConfig.for_data_dir(
        data_dir,
        port=_free_port(),
        min_workers=1,
        max_workers=1,
        max_train_workers=0,  # one worker with all of its threads, like the direct call
        watch=False,
        device="cpu",
    )
    server = StudioServer(config, log_level="warning")
    model = server.studio.registry.default_checkpoint()
    model_path = server.studio.storage.local_path(model.storage_key)
    url = server.start()
    body = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "steps": steps,
        "width": size,
        "height": size,
        "seed": 7,
        "sampler_name": "Euler a",
    }
    engine = Engine(device="cpu")
    try:
        with httpx.Client(base_url=url, timeout=600) as client:

            def through_service(values: dict) -> Image.Image:
                response = client.post("/sdapi/v1/txt2img", json=values)
                response.raise_for_status()
                return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))

            def direct(values: dict) -> Image.Image:
                request = GenerationRequest(
                    prompt=PROMPT,
                    negative_prompt=NEGATIVE,
                    model=str(model_path),
                    steps=values["steps"],
                    width=values["width"],
                    height=values["height"],
                    seed=7,
                )
                return engine.generate(request).images[0].image

            def interleaved(values: dict, count: int) -> tuple[float, float]:
                service_times, direct_times = [], []
                for _ in range(count):
                    for run, times in ((direct, direct_times), (through_service, service_times)):
                        start = time.perf_counter()
                        run(values)
                        times.append(time.perf_counter() - start)
                return statistics.median(service_times), statistics.median(direct_times)

            # Warm-up: the worker process starts and loads the model; the direct engine loads it too.
            served, local = through_service(body), direct(body)
            service, engine_only = interleaved(body, runs)
            # The service's fixed cost per request, measured where the engine's own time (and its noise on a
            # shared machine) is smallest: one step at 64x64.
            small = {**body, "steps": 1, "width": 64, "height": 64}
            small_service, small_engine = interleaved(small, overhead_runs)
    finally:
        server.stop()
    difference = np.abs(np.asarray(served.convert("RGB"), np.int16) - np.asarray(local, np.int16)).max()
    overhead = small_service - small_engine
    return {
        "service_s": service,
        "engine_s": engine_only,
        "ratio": service / engine_only,
        "small_service_s": small_service,
        "small_engine_s": small_engine,
        "overhead_ms": overhead * 1000,
        "ratio_from_overhead": (engine_only + overhead) / engine_only,
        "max_pixel_diff": int(difference),
    }


def _claim_until_empty(url: str, worker_id: str, start_at: float) -> int:
    from atelier.service.job_store import open_job_store

    store = open_job_store(url)
    while time.time() < start_at:
        time.sleep(0.001)
    done = 0
    while (job := store.claim(worker_id, lease_seconds=60)) is not None:
        store.complete(job.id, worker_id, {"ok": True})
        done += 1
    store.close()
    return done


def measure_throughput(url: str, *, jobs: int, claimers: int) -> dict:
    from atelier.service.job_store import open_job_store

    store = open_job_store(url)
    start = time.perf_counter()
    for index in range(jobs):
        store.submit("generate", {"n": index})
    submitted = time.perf_counter() - start
    store.close()
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 2.0  # every process connected before the clock starts
    with context.Pool(claimers) as pool:
        results = [
            pool.apply_async(_claim_until_empty, (url, f"bench-{index}", start_at))
            for index in range(claimers)
        ]
        counts = [result.get() for result in results]
    elapsed = time.time() - start_at
    if sum(counts) != jobs:
        raise SystemExit(f"claimed {sum(counts)} jobs of {jobs}: the queue lost or duplicated jobs")
    return {
        "jobs": jobs,
        "claimers": claimers,
        "submit_per_s": jobs / submitted,
        "jobs_per_s": jobs / elapsed,
    }


def postgres_schema_url(base_url: str) -> tuple[str, str] | None:
    """A fresh schema in the PostgreSQL database at ``base_url`` (None if no server answers)."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(base_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as problem:
        print(f"PostgreSQL at {base_url} is not reachable ({str(problem).strip()}); skipping it")
        return None
    return f"{base_url}?options=-csearch_path%3D{schema}", schema


def drop_schema(base_url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--overhead-runs", type=int, default=15)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--claimers", type=int, default=4)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--append", type=Path, default=None, help="append a results section to this file")
    args = parser.parse_args()

    latency = measure_latency(
        size=args.size,
        steps=args.steps,
        runs=args.runs,
        threads=args.threads,
        overhead_runs=args.overhead_runs,
    )
    print(
        f"latency {args.size}x{args.size}, {args.steps} steps: service {latency['service_s']:.3f}s, "
        f"engine {latency['engine_s']:.3f}s, ratio {latency['ratio']:.3f} (goal <= 1.05), "
        f"max pixel diff {latency['max_pixel_diff']}"
    )
    print(
        f"fixed overhead (64x64, 1 step): service {latency['small_service_s'] * 1000:.0f} ms, engine "
        f"{latency['small_engine_s'] * 1000:.0f} ms, overhead {latency['overhead_ms']:.0f} ms per request; "
        f"ratio at {args.size}x{args.size}/{args.steps} steps from it: {latency['ratio_from_overhead']:.3f}"
    )
    queues = {}
    with tempfile.TemporaryDirectory(prefix="atelier-bench-queue-") as folder:
        queues["SQLite (WAL)"] = measure_throughput(
            f"sqlite:///{folder}/queue.db", jobs=args.jobs, claimers=args.claimers
        )
    schema = postgres_schema_url(args.postgres)
    if schema is not None:
        try:
            queues["PostgreSQL"] = measure_throughput(schema[0], jobs=args.jobs, claimers=args.claimers)
        finally:
            drop_schema(args.postgres, schema[1])
    for name, result in queues.items():
        print(
            f"queue {name}: {result['jobs_per_s']:.0f} jobs/s claimed+completed by {result['claimers']} processes "
            f"({result['jobs']} jobs); submit {result['submit_per_s']:.0f} jobs/s from one process"
        )
    if args.append:
        with args.append.open("a", encoding="utf-8") as results:
            results.write(_markdown(args, latency, queues))


def _markdown(args: argparse.Namespace, latency: dict, queues: dict) -> str:
    import torch

    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, CPU fp32"
    lines = [
        "",
        f"## Studio service vs direct engine call ({datetime.now(UTC):%Y-%m-%d})",
        "",
        f"`python bench/service_vs_engine.py --runs {args.runs}` on {machine}, {args.threads} threads.",
        "",
        "| path | median | ratio |",
        "| --- | --- | --- |",
        f"| direct `Engine.generate`, tiny SD 1.5, {args.size}x{args.size}, {args.steps} steps "
        f"| {latency['engine_s']:.3f} s | 1.000 |",
        f"| HTTP `/sdapi/v1/txt2img` -> queue -> worker process -> outputs bucket -> response "
        f"| {latency['service_s']:.3f} s | {latency['ratio']:.3f} |",
        f"| the same at 64x64, 1 step: the service's fixed cost | {latency['small_engine_s'] * 1000:.0f} ms "
        f"direct, {latency['small_service_s'] * 1000:.0f} ms service | overhead {latency['overhead_ms']:.0f} ms: "
        f"ratio {latency['ratio_from_overhead']:.3f} at {args.size}x{args.size}, {args.steps} steps |",
        "",
        f"Goal: ratio <= 1.05. Both ways give the same pixels (max difference {latency['max_pixel_diff']}). "
        f"Load average at the end of the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        "",
        "| queue | claim + complete, trivial jobs | claiming processes | submit (one process) |",
        "| --- | --- | --- | --- |",
    ]
    for name, result in queues.items():
        lines.append(
            f"| {name} | {result['jobs_per_s']:.0f} jobs/s | {result['claimers']} | {result['submit_per_s']:.0f} jobs/s |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
