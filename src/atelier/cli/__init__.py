"""The `atelier` command line: a thin layer over the engine, training and service packages.

Each sub-command lives in its own module with a ``register(subparsers)`` function. Modules import heavy
libraries (torch, diffusers) inside their handlers only, so `atelier prompt` and `atelier --help` stay fast.

No command prints a traceback. A problem the user can fix (:class:`AtelierError`, or the operating system
refusing a file or folder they named) is one line and exit code 2. Anything else is a bug, in Atelier or a
library: one line naming it, exit code 1, and ``ATELIER_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from atelier.errors import AtelierError

# Order is the order shown in --help.
COMMAND_MODULES = [
    "atelier.cli.generate",
    "atelier.cli.info",
    "atelier.cli.verify",
    "atelier.cli.provenance",
    "atelier.cli.models",
    "atelier.cli.train",
    "atelier.cli.prompt",
    "atelier.cli.ad",
    "atelier.cli.batch",
    "atelier.cli.product",
    "atelier.cli.sheet",
    "atelier.cli.serve",
    "atelier.cli.worker",
    "atelier.cli.keys",
    "atelier.cli.db",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description="Atelier generative studio")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def describe_os_error(exc: OSError) -> str:
    """ "out/shots: File exists" rather than "[Errno 17] File exists: 'out/shots'"."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename is not None else None
    return f"{where}: {reason}" if where is not None else reason


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(os.environ.get("ATELIER_DEBUG"))
    try:
        if getattr(args, "uses_models", False):
            from atelier.engine import check_libraries

            check_libraries()
        return int(args.func(args) or 0)
    except AtelierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # A path the user gave that cannot be read or written: missing, a file where a folder goes, no room.
        if debug:
            raise
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        print(
            f"error: {type(exc).__name__}: {_first_line(exc)} (an internal error; run with ATELIER_DEBUG=1 "
            "for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
