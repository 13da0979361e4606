"""`atelier serve`: the whole studio on one machine (API, workers, bucket watchers), or one node of a cluster.

With no options everything lives in ./atelier-data: a SQLite database and the training-data/, models/ and
outputs/ buckets. A tiny demo model (random weights) is created when no model exists yet. Give --db and
--storage to share a PostgreSQL database and an S3 bucket with workers on other machines.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atelier.service.config import StudioConfig


def add_studio_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the studio's database, storage and cache are (shared by serve and worker)."""
    # Defaults are None so that ATELIER_* environment variables (StudioConfig) apply when a flag is not given.
    parser.add_argument(
        "--data", type=Path, default=None, help="data folder (default: $ATELIER_DATA_DIR or ./atelier-data)"
    )
    parser.add_argument("--db", default=None, help="database URL (default: SQLite in the data folder)")
    parser.add_argument(
        "--storage", default=None, help="storage: a folder or s3://bucket/prefix (default: the data folder)"
    )
    parser.add_argument(
        "--s3-endpoint", default=None, help="endpoint URL of an S3-compatible store (MinIO, ...)"
    )
    parser.add_argument("--cache", type=Path, default=None, help="local model cache (default: DATA/cache)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def studio_config(args: argparse.Namespace, **settings: Any) -> StudioConfig:
    """The studio settings from the arguments of :func:`add_studio_arguments` and command-specific ``settings``."""
    from atelier.service.config import StudioConfig

    return StudioConfig.for_data_dir(
        args.data,
        database_url=args.db,
        storage_url=args.storage,
        storage_endpoint_url=args.s3_endpoint,
        cache_dir=args.cache,
        device=args.device,
        **settings,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="run the studio: HTTP API, workers, bucket watchers", description=__doc__
    )
    add_studio_arguments(p)
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default 7860)")
    p.add_argument(
        "--min-workers",
        type=int,
        default=None,
        help="generation workers kept running, model loaded, when idle (default 1)",
    )
    p.add_argument(
        "--max-workers",
        type=int,
        default=None,
        help="generation workers at most (default 1; 0: run no workers here, they run elsewhere)",
    )
    p.add_argument(
        "--max-train-workers",
        type=int,
        default=None,
        help="training workers at most, beside the generation workers (default 1)",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=None,
        help="a worker beyond the minimum stops this long after its last job (default 30)",
    )
    p.add_argument(
        "--no-watch", action="store_true", help="do not watch the training-data and models buckets"
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="NAME",
        help="a host name the API answers to besides the loopback ones (repeat; '*' for any)",
    )
    p.set_defaults(func=run, uses_models=True)


def run(args: argparse.Namespace) -> int:
    from atelier.service.server import StudioServer, check_port_free
    from atelier.ui import mount_ui

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = studio_config(
        args,
        host=args.host,
        port=args.port,
        min_workers=args.min_workers,
        max_workers=args.max_workers,
        max_train_workers=args.max_train_workers,
        scale_down_after_seconds=args.idle_seconds,
        watch=False if args.no_watch else None,
        allowed_hosts=tuple(args.allowed_host) if args.allowed_host else None,
    )
    check_port_free(config.host, config.port)
    server = StudioServer(config)
    # The UI is a client of the public API; it is mounted here, where the layers are put together.
    mount_ui(server.app)
    print(
        f"Atelier studio on http://{config.host}:{config.port}  (Studio UI: /, API docs: /docs, A1111 API: /sdapi/v1)",
        flush=True,
    )
    server.run()
    return 0
