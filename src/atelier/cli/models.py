"""`atelier models ...`: create tiny demo models, list and inspect checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atelier.cli.common import DEFAULT_DATA_DIR


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="manage models", description=__doc__)
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    sub.required = True

    tiny = sub.add_parser(
        "create-tiny", help="write a tiny random-weight model or ControlNet (demo: random weights)"
    )
    tiny.add_argument(
        "--arch",
        required=True,
        choices=["sd15", "sd15-inpaint", "sdxl", "sdxl-refiner", "controlnet-sd15", "controlnet-sdxl"],
        help="architecture",
    )
    tiny.add_argument("dir", type=Path, help="output folder (diffusers layout)")
    tiny.add_argument("--overwrite", action="store_true")
    tiny.set_defaults(func=run_create_tiny, uses_models=True)

    listing = sub.add_parser("list", help="list the checkpoints in the models folder")
    listing.add_argument("--models-dir", type=Path, default=DEFAULT_DATA_DIR / "models")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=run_list)

    inspect = sub.add_parser("inspect", help="detect a checkpoint's architecture and hash without loading it")
    inspect.add_argument("path", type=Path)
    inspect.set_defaults(func=run_inspect)

    export = sub.add_parser("export", help="write a diffusers folder as one A1111/ComfyUI .safetensors file")
    export.add_argument("dir", type=Path, help="diffusers model folder")
    export.add_argument("out", type=Path, help="output .safetensors file")
    export.set_defaults(func=run_export, uses_models=True)


def run_create_tiny(args: argparse.Namespace) -> int:
    from atelier.cli.common import quiet_libraries
    from atelier.engine import create_tiny_model

    quiet_libraries()
    path = create_tiny_model(args.arch, args.dir, overwrite=args.overwrite)
    print(f"{path}  ({args.arch}, demo: random weights)")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from atelier.engine import ModelLibrary, detect_architecture

    rows = [
        {
            "name": entry.name,
            "label": entry.label,
            "path": str(entry.path),
            "architecture": detect_architecture(entry.path),
        }
        for entry in ModelLibrary(args.models_dir).list()
    ]
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print(f"no models in {args.models_dir}")
    for row in [] if args.json else rows:
        print(f"{row['label']:<40} {row['architecture']:<14} {row['path']}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from atelier.engine import detect_architecture, display_name, model_sha256

    arch = detect_architecture(args.path)
    digest = model_sha256(args.path)
    print(
        json.dumps(
            {"name": display_name(args.path), "architecture": arch, "sha256": digest, "hash": digest[:10]}
        )
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from atelier.cli.common import writable_folder
    from atelier.engine import detect_architecture, save_single_file

    arch = detect_architecture(args.dir)
    writable_folder(Path(args.out).parent, what="output")
    print(save_single_file(args.dir, args.out, arch))
    return 0
