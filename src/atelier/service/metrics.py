"""Prometheus metrics on ``/metrics``: queue depth per state and kind, job latencies, workers and their VRAM.

The numbers come from the jobs table, so any API process reports the whole queue, wherever its workers run.
``atelier_queue_depth`` (jobs waiting) is the metric an external autoscaler such as KEDA scales worker pods on;
see docs/service.md. Latency histograms are fed from jobs that finished since the previous scrape of this
process; scrape one API process (or aggregate with ``max``), not the sum of several.

Uses the official ``prometheus_client`` package, with a registry per app instead of the global one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from atelier.service.database import utc_now
from atelier.service.jobs import JOB_KINDS, JobStore
from atelier.service.worker_board import WorkerBoard

# Generation on a warm GPU takes seconds; training takes hours.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, float("inf"))
# The VRAM a worker on a GPU reports (engine/memory.vram_stats), one gauge each: atelier_worker_vram_<key>_bytes.
_VRAM_GAUGES = (
    ("used", "GPU memory in use on the worker's card, by every process"),
    ("total", "GPU memory of the worker's card"),
    ("free", "GPU memory free on the worker's card"),
    ("peak", "Most GPU memory the worker's PyTorch allocated at once since it started"),
    ("reserved", "GPU memory the worker's PyTorch holds (allocated or cached for reuse)"),
)


class _QueueCollector(Collector):
    def __init__(
        self,
        store: JobStore,
        worker_counts: Callable[[], dict[str, int]] | None,
        board: WorkerBoard | None,
    ) -> None:
        self.store = store
        self.worker_counts = worker_counts
        self.board = board

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        counts = self.store.counts_by_kind()
        jobs = GaugeMetricFamily(
            "atelier_jobs", "Jobs in the queue table by state and kind", labels=["state", "kind"]
        )
        for (state, kind), count in sorted(counts.items()):
            jobs.add_metric([state, kind], count)
        yield jobs
        depth = GaugeMetricFamily(
            "atelier_queue_depth", "Jobs waiting for a worker (state queued), by kind", labels=["kind"]
        )
        for kind in JOB_KINDS:
            depth.add_metric([kind], counts[("queued", kind)])
        yield depth
        running = GaugeMetricFamily("atelier_jobs_running", "Jobs being run by a worker right now")
        running.add_metric([], sum(counts[("running", kind)] for kind in JOB_KINDS))
        yield running
        if self.worker_counts is not None:
            workers = GaugeMetricFamily(
                "atelier_local_workers", "Worker processes supervised by this server", labels=["state"]
            )
            for state, count in sorted(self.worker_counts().items()):
                workers.add_metric([state], count)
            yield workers
        if self.board is not None:
            yield from self._board_metrics(self.board)

    @staticmethod
    def _board_metrics(board: WorkerBoard) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        # Every worker of the studio, on any machine: the board is in the shared database.
        loads = CounterMetricFamily(
            "atelier_model_loads", "Checkpoints read from disk by workers (a warm worker adds none)"
        )
        loads.add_metric([], board.model_loads_total())
        yield loads
        live = GaugeMetricFamily(
            "atelier_workers_live", "Workers seen in the last few seconds, by job kind", labels=["kind"]
        )
        records = board.live()
        for kind in JOB_KINDS:
            live.add_metric([kind], sum(1 for record in records if kind in record.kinds))
        yield live
        # GPU memory of each live worker with a CUDA device (CPU workers report none and are left out).
        for key, help_text in _VRAM_GAUGES:
            gauge = GaugeMetricFamily(f"atelier_worker_vram_{key}_bytes", help_text, labels=["worker"])
            for record in records:
                if record.vram is not None and key in record.vram:
                    gauge.add_metric([record.id], record.vram[key])
            if gauge.samples:
                yield gauge


class StudioMetrics:
    """The metrics of one API process."""

    def __init__(
        self,
        store: JobStore,
        *,
        worker_counts: Callable[[], dict[str, int]] | None = None,
        board: WorkerBoard | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_QueueCollector(store, worker_counts, board))
        self.latency = Histogram(
            "atelier_job_latency_seconds",
            "Time from submission to the end of a job",
            ["kind", "state"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.wait = Histogram(
            "atelier_job_wait_seconds",
            "Time a job waited in the queue before its (last) run started",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.run = Histogram(
            "atelier_job_run_seconds",
            "Time a worker spent on a job's (last) run",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._since = clock()
        self._seen_at_since: set[str] = set()

    def observe_finished(self) -> int:
        """Add jobs that finished since the last call to the histograms; return how many."""
        rows = self.store.finished_since(self._since)
        observed = 0
        newest = self._since
        seen_at_newest: set[str] = set(self._seen_at_since)
        for row in rows:
            if row.finished_at == self._since and row.id in self._seen_at_since:
                continue
            self.latency.labels(row.kind, row.state).observe(_seconds(row.created_at, row.finished_at))
            if row.started_at is not None:
                self.wait.labels(row.kind).observe(_seconds(row.created_at, row.started_at))
                self.run.labels(row.kind).observe(_seconds(row.started_at, row.finished_at))
            observed += 1
            if row.finished_at > newest:
                newest, seen_at_newest = row.finished_at, set()
            seen_at_newest.add(row.id)
        # Jobs finishing in the same instant as the newest one seen are remembered so they count once.
        self._since, self._seen_at_since = newest, seen_at_newest
        return observed

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        self.observe_finished()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _seconds(start: Any, end: Any) -> float:
    return max(0.0, (end - start).total_seconds())
