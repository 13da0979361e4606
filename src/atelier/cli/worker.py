"""`atelier worker`: run generate and train jobs from a shared queue, on this machine's CPU or GPU.

Start any number, on any machines, pointing at the same database and storage:

    atelier worker --db postgresql://atelier@db/atelier --storage s3://studio --s3-endpoint http://minio:9000

SIGTERM (or Ctrl-C) stops taking jobs; the current job finishes within --stop-grace seconds (default 20) or is
handed back to the queue at its next step, without using up an attempt. A second signal hands it back at once.
"""

from __future__ import annotations

import argparse
import logging
import signal

from atelier.cli.serve import add_studio_arguments, studio_config


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("worker", help="run jobs from the studio's queue", description=__doc__)
    add_studio_arguments(p)
    p.add_argument(
        "--kinds",
        default="generate,train,caption,product",
        help="job kinds to take (default generate,train,caption,product)",
    )
    p.add_argument("--worker-id", default=None, help="unique id (default: host-pid-random)")
    p.add_argument("--lease", type=float, default=None, help="job lease in seconds (default 30)")
    p.add_argument("--poll", type=float, default=None, help="queue poll interval in seconds when busy")
    p.add_argument("--progress", type=float, default=None, help="heartbeat / progress interval in seconds")
    p.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    p.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    p.add_argument(
        "--stop-grace",
        type=float,
        default=None,
        help="on SIGTERM, seconds the current job may take to finish before it is handed back (default 20)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: all cores)")
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run, uses_models=True)


def run(args: argparse.Namespace) -> int:
    from atelier.cli.common import quiet_libraries
    from atelier.service.studio import Studio
    from atelier.service.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    config = studio_config(
        args,
        lease_seconds=args.lease,
        poll_seconds=args.poll,
        progress_seconds=args.progress,
        stop_grace_seconds=args.stop_grace,
    )
    studio = Studio.open(config)
    worker = Worker(
        studio,
        worker_id=args.worker_id,
        kinds=[kind.strip() for kind in args.kinds.split(",") if kind.strip()],
        parent_pid=args.parent_pid,
    )
    signals_seen = 0

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal signals_seen
        signals_seen += 1
        worker.stop(abandon_current=signals_seen > 1, grace_seconds=config.stop_grace_seconds)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logging.getLogger(__name__).info("worker %s waiting for jobs", worker.worker_id)
    try:
        worker.run(idle_exit_seconds=args.idle_exit, max_jobs=args.max_jobs)
    finally:
        studio.close()
    return 0
