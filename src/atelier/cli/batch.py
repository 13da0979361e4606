"""`atelier batch CATALOG.csv --scenes SCENES.toml --model M --out DIR`: product images for every row x scene x seed."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from atelier.cli.common import (
    DEFAULT_DATA_DIR,
    add_engine_options,
    add_format_options,
    content_signer,
    engine_options,
    lora_library,
    quiet_libraries,
    sam_segmenter,
)

API_KEY_VARIABLE = "ATELIER_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="generate catalog images: every CSV row in every scene, resumable",
        description=(
            "Generate an image for every catalog row x scene x seed. CATALOG.csv has a 'sku' column, optional "
            "'image' and 'mask' columns (a product photo and its mask, relative to the CSV, for inpainting; "
            "a photo without a mask is cut out automatically: its transparency, else a SAM model) "
            "and attribute columns used as {placeholders} in the scenes' prompts. Images go to "
            "DIR/<sku>/<scene>/, each listed in DIR/manifest.jsonl; a re-run makes only what is missing. "
            "Exit status: 0 all done, 1 some rows failed, 2 unusable arguments or files."
        ),
    )
    parser.add_argument("catalog", type=Path, metavar="CATALOG.csv", help="the product catalog")
    parser.add_argument("--scenes", type=Path, required=True, metavar="SCENES.toml", help="[[scene]] tables")
    parser.add_argument(
        "--model", required=True, help="model name in the models folder (or the studio's), or a path"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    add_format_options(parser)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_DATA_DIR / "models", help="models folder")
    parser.add_argument("--lora-dir", type=Path, default=None, help="LoRA folder (default: models folder)")
    add_engine_options(parser)
    parser.add_argument(
        "--server", metavar="URL", help="generate through a running studio's A1111 API instead of in-process"
    )
    parser.add_argument(
        "--api-key", default=None, help=f"the studio's API key (default: ${API_KEY_VARIABLE})"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds to wait for the studio per image (default 900)"
    )
    parser.add_argument(
        "--no-sheet", action="store_true", help="do not write the DIR/index.html contact sheet"
    )
    parser.add_argument(
        "--segmentation-model",
        default=None,
        help="SAM model (name in <models-dir>/segmentation, or a path) that cuts out opaque photos of rows "
        "without a mask (default: the first one there; photos with transparency need none)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, uses_models=True)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from atelier.campaign.batch import (
        BatchProblem,
        EngineBackend,
        StudioBackend,
        load_catalog,
        load_scenes,
        plan_batch,
        run_batch,
    )
    from atelier.campaign.contact_sheet import build_contact_sheet
    from atelier.engine import check_output_format

    # The files first, so a typo is reported before a model loads or a studio is called.
    output_format = check_output_format(args.format, args.quality)
    signer = content_signer()
    catalog = load_catalog(args.catalog)
    scenes = load_scenes(args.scenes)
    backend: StudioBackend | EngineBackend
    if args.server:
        api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
        backend = StudioBackend(args.server, args.model, api_key=api_key, timeout=args.timeout)
    else:
        from atelier.engine import Engine, ModelLibrary, detect_architecture

        model_path = ModelLibrary(args.models_dir).resolve(args.model)
        detect_architecture(model_path)  # refuses pickles and non-checkpoints before any work
        quiet_libraries()
        engine = Engine(**engine_options(args), loras=lora_library(args.lora_dir, args.models_dir))
        backend = EngineBackend(engine, model_path)
        backend.check_loras(scenes)

    def report(problem: BatchProblem) -> None:
        tqdm.write(f"failed: {problem}", file=sys.stderr)

    try:
        plan = plan_batch(catalog, scenes, backend.model_hash, args.out)
        if plan.manifest.dropped:
            print(
                f"manifest: dropped {plan.manifest.dropped} unfinished line(s); their images will be made again"
            )
        print(
            f"{len(catalog.rows)} rows x {len(scenes)} scenes: {plan.total} images, "
            f"{plan.done} already done, {len(plan.jobs)} to make"
        )
        for problem in plan.problems:
            report(problem)
        summary = run_batch(
            plan,
            backend,
            on_problem=report,
            progress=not args.no_progress,
            output_format=output_format,
            quality=args.quality,
            signer=signer,
            segmenter=sam_segmenter(
                args.models_dir, args.segmentation_model, args.device, what="opaque photos without a mask"
            ),
        )
    finally:
        if isinstance(backend, StudioBackend):
            backend.close()

    made = len(summary.generated)
    print(
        f"made {made} image{'' if made == 1 else 's'}, {summary.done_before} already done, "
        f"{summary.failed_images} not made"
    )
    if summary.problems:
        rows = len(summary.failed_skus)
        print(f"{rows} row{'' if rows == 1 else 's'} with problems: {', '.join(summary.failed_skus)}")
    if not args.no_sheet and plan.manifest.records:
        print(f"wrote {build_contact_sheet(args.out)}")
    return 0 if summary.succeeded else 1
