"""``atelier serve``: the API, the bucket watchers, the webhook dispatcher and the worker supervisor together.

:class:`StudioServer` starts each piece on one :class:`~atelier.service.studio.Studio`. Everything it keeps
is in the database and the storage, so the server can be stopped and started again at any time: queued jobs
wait in the database and are run once workers are back.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from typing import Any

import uvicorn

from atelier.errors import AtelierError
from atelier.service.api import create_app
from atelier.service.config import StudioConfig, is_loopback_host
from atelier.service.studio import Studio
from atelier.service.supervisor import LaneSpawn, WorkerSupervisor, spawn_worker_process, studio_lanes
from atelier.service.watcher import BucketWatcher

logger = logging.getLogger(__name__)


class StudioServer:
    """Runs one studio: HTTP API plus background services. ``spawn=None`` uses ``atelier worker`` processes."""

    def __init__(
        self, config: StudioConfig, *, spawn: LaneSpawn | None = None, log_level: str = "info"
    ) -> None:
        self.config = config
        self.studio = Studio.open(config)
        self.always_require_keys = not is_loopback_host(config.host)
        if self.always_require_keys and not self.studio.keys.any_active():
            self.studio.close()
            raise AtelierError(
                f"listening on {config.host} makes the studio reachable from other machines, so it needs an API "
                "key first: run 'atelier keys create NAME' (with the same --data or --db), or bind 127.0.0.1",
                field="host",
            )
        self.studio.storage.create_buckets()
        self.studio.ensure_demo_model()
        self.watcher = BucketWatcher(self.studio) if config.watch else None
        self.supervisor = None
        if config.max_workers > 0:
            self.supervisor = WorkerSupervisor(
                self.studio.store,
                lanes=studio_lanes(config),
                spawn=spawn or spawn_worker_process(config),
                scale_down_after=config.scale_down_after_seconds,
                # A little longer than the workers' own grace, which they use to finish or hand back their job.
                stop_grace_seconds=config.stop_grace_seconds + 10,
            )
        self.app = create_app(
            self.studio,
            always_require_keys=self.always_require_keys,
            supervisor=self.supervisor,
            watcher=self.watcher,
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app, host=config.host, port=config.port, log_level=log_level, access_log=False
            )
        )
        self._server_thread: threading.Thread | None = None

    def _start_background(self) -> None:
        config = self.config
        tasks: list[tuple[str, Any]] = [
            ("webhooks", lambda: self.studio.webhooks.run(self._stop, 0.25)),
            # Jobs of workers that died go back to the queue even when no worker is left to notice.
            ("leases", lambda: _requeue_expired_leases(self.studio, self._stop, config.lease_seconds)),
        ]
        if self.watcher is not None:
            tasks.append(("watcher", lambda: self.watcher.run(self._stop, config.watch_seconds)))
        if self.supervisor is not None:
            tasks.append(("supervisor", lambda: self.supervisor.run(self._stop, config.supervise_seconds)))
        for name, target in tasks:
            thread = threading.Thread(target=target, name=f"atelier-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _stop_background(self) -> None:
        self._stop.set()
        if self.watcher is not None:
            self.watcher.wake.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self.supervisor is not None:
            self.supervisor.shutdown()

    @property
    def url(self) -> str:
        """The base URL the API listens on (with the real port when started with port 0)."""
        port = self.config.port
        if self._server.started and self._server.servers:
            port = self._server.servers[0].sockets[0].getsockname()[1]
        host = self.config.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def run(self) -> None:
        """Serve until interrupted (Ctrl-C / SIGTERM), then stop everything."""
        check_port_free(self.config.host, self.config.port)
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            # uvicorn shuts the HTTP server down on these signals, then raises the signal again; with the
            # default handler that would kill the process before workers and watchers are stopped.
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, _note_signal)
        self._start_background()
        logger.info("Atelier studio: data in %s", self.config.data_dir)
        try:
            self._server.run()
        finally:
            self._stop_background()
            self.studio.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def start(self, timeout: float = 30.0) -> str:
        """Serve from a background thread (tests, notebooks); return the base URL once it accepts requests."""
        self._start_background()
        self._server_thread = threading.Thread(target=self._server.run, name="atelier-http", daemon=True)
        self._server_thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._server_thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        """Stop a server started with :meth:`start`."""
        self._server.should_exit = True
        if self._server_thread is not None:
            self._server_thread.join(timeout=10)
        self._stop_background()
        self.studio.close()


def _requeue_expired_leases(studio: Studio, stop: threading.Event, lease_seconds: float) -> None:
    """Put running jobs whose worker stopped heartbeating back in the queue (or fail them), until ``stop``.

    Workers do this too before they claim, but a lone job whose only worker was killed has nobody else to
    notice: without this it stayed "running" until another job arrived.
    """
    interval = min(max(lease_seconds / 4, 0.05), 5.0)
    while not stop.is_set():
        try:
            moved = studio.store.requeue_expired()
            if moved:
                logger.info("requeued %d job(s) whose worker stopped heartbeating", moved)
        except Exception:
            logger.warning("requeueing expired leases failed; retrying", exc_info=True)
        stop.wait(interval)


def _note_signal(signum: int, _frame: object) -> None:
    logger.info("signal %d received: stopping workers and watchers", signum)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port in use with one line, before uvicorn logs its own error and exits with code 3."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As uvicorn binds: SO_REUSEADDR lets a port in TIME_WAIT from a previous run be taken again.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise AtelierError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; stop what uses it or choose --port",
                field="port",
            ) from None
