"""The `atelier` command line: a thin layer over the engine, training and service packages.

Each sub-command lives in its own module with a ``register(subparsers)`` function. Modules import heavy
libraries (torch, diffusers) inside their handlers only, so `atelier prompt` and `atelier --help` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from atelier.errors import AtelierError

# Order is the order shown in --help.
COMMAND_MODULES = [
    "atelier.cli.generate",
    "atelier.cli.info",
    "atelier.cli.models",
    "atelier.cli.train",
    "atelier.cli.prompt",
    "atelier.cli.ad",
    "atelier.cli.batch",
    "atelier.cli.sheet",
    "atelier.cli.serve",
    "atelier.cli.worker",
    "atelier.cli.keys",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description="Atelier generative studio")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AtelierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
