"""`atelier product PHOTO --scene marble --channels square,story --out DIR`: product shots from one photo.

The product is cut out (the photo's transparency, a ``--mask``, or a SAM model in ``<models-dir>/segmentation``),
a scene is generated around it with the product's pixels untouched, a shadow grounds it, and each shot is
expanded to every channel's shape and optionally upscaled. In-process by default; ``--server`` generates through
a running studio's A1111 API instead.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from atelier.cli.common import (
    DEFAULT_DATA_DIR,
    add_engine_options,
    add_format_options,
    content_signer,
    engine_options,
    load_image,
    lora_library,
    quiet_libraries,
    sam_segmenter,
    writable_folder,
)
from atelier.errors import AtelierError

API_KEY_VARIABLE = "ATELIER_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "product", help="product shots: cut out, new scene, shadow, channels", description=__doc__
    )
    p.add_argument(
        "photo", type=Path, nargs="?", help="the product photo (a PNG/WebP cut-out keeps its transparency)"
    )
    p.add_argument("--scene", default="studio", help="scene preset (--list-scenes shows them)")
    p.add_argument(
        "--list-scenes", action="store_true", help="print the scene presets and channels, then exit"
    )
    p.add_argument("--product", default="", help="what the product is, e.g. 'a leather handbag'")
    p.add_argument("--prompt", default=None, help="your own scene prompt instead of the preset's")
    p.add_argument("--negative", default=None, help="your own negative prompt instead of the preset's")
    p.add_argument(
        "--mask", type=Path, help="the product's mask (white = product) instead of the automatic one"
    )
    p.add_argument("--model", help="model name in the models folder (or the studio's), or a path")
    p.add_argument("--models-dir", type=Path, default=DEFAULT_DATA_DIR / "models", help="models folder")
    p.add_argument("--lora-dir", type=Path, default=None, help="LoRA folder (default: the models folder)")
    p.add_argument(
        "--segmentation-model",
        help="SAM model folder name in <models-dir>/segmentation, or its path (default: the first one there)",
    )
    p.add_argument("--count", type=int, default=1, help="how many shots (seeds seed, seed+1, ...)")
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument(
        "--size", default=None, help="shot size WxH (default 512x512; 1024x1024 for an SDXL model in-process)"
    )
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--sampler", default="DPM++ 2M")
    p.add_argument("--schedule-type", default="Karras")
    p.add_argument("--cfg", type=float, default=7.0, help="CFG scale")
    p.add_argument("--no-shadow", action="store_true", help="no shadow under the product")
    p.add_argument("--shadow-direction", type=float, default=None, help="degrees the shadow falls toward")
    p.add_argument("--shadow-opacity", type=float, default=None, help="0-1 (default 0.35)")
    p.add_argument("--shadow-softness", type=float, default=None, help="blur, as a fraction of the product")
    p.add_argument("--shadow-distance", type=float, default=None, help="offset, as a fraction of the product")
    p.add_argument(
        "--channels", default="", help="channels to expand each shot to: square,story,banner or WxH"
    )
    p.add_argument("--upscale", type=float, default=None, help="upscale each shot by this factor (Lanczos)")
    p.add_argument(
        "--expand-only",
        action="store_true",
        help="expand PHOTO itself (any picture) to --channels: its pixels kept, the new area generated",
    )
    p.add_argument("--out", type=Path, default=Path("product-shots"), help="output folder")
    add_format_options(p)
    add_engine_options(p)
    p.add_argument("--server", metavar="URL", help="generate through a running studio's A1111 API")
    p.add_argument("--api-key", default=None, help=f"the studio's API key (default: ${API_KEY_VARIABLE})")
    p.set_defaults(func=run, uses_models=True)


def run(args: argparse.Namespace) -> int:
    from atelier.campaign.product import (
        InpaintSettings,
        ShotSettings,
        channel,
        load_channels,
        load_scene_presets,
        product_shots,
        scene_preset,
    )
    from atelier.engine import COMPOSITE, Ingredient, Provenance, check_output_format, write_image

    if args.list_scenes:
        for preset in load_scene_presets().values():
            print(f"{preset.name:14} {preset.title}: {preset.prompt}")
        print("channels: " + ", ".join(f"{c.name} {c.width}x{c.height}" for c in load_channels().values()))
        return 0
    if args.photo is None:
        raise AtelierError("give the product photo (or --list-scenes)", field="photo")
    # Everything that can be checked without a model first, so a typo does not wait for torch.
    output_format = check_output_format(args.format, args.quality)
    signer = content_signer()
    preset = scene_preset(args.scene)
    targets = tuple(channel(name) for name in args.channels.split(",") if name.strip())
    photo = load_image(args.photo, what="photo")
    mask = load_image(args.mask, what="mask") if args.mask else None
    shadow = None if args.no_shadow else _shadow(args)
    writable_folder(args.out, what="--out")
    backend, family = _backend(args)
    size = _size(args.size, family)
    settings = ShotSettings(
        size=size,
        count=args.count,
        shadow=shadow,
        inpaint=InpaintSettings(
            steps=args.steps,
            sampler=args.sampler,
            schedule_type=args.schedule_type,
            cfg_scale=args.cfg,
            seed=args.seed,
        ),
    )
    settings.check()
    scene = _custom_scene(preset, args.prompt, args.negative)
    if args.expand_only:
        return _expand_only(args, photo, backend, scene, settings, targets, output_format, signer)
    segmenter = _segmenter(args, needed=mask is None and _opaque(photo))
    try:
        shots = product_shots(
            photo,
            backend,
            scene,
            product=args.product,
            mask=mask,
            segmenter=segmenter,
            settings=settings,
            channels=targets,
            upscale_by=args.upscale,
        )
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    provenance = Provenance(
        COMPOSITE,
        generation={"model": backend.model_name, "model_hash": backend.model_hash, "kind": "product shot"},
        ingredients=(Ingredient(args.photo.name, args.photo.read_bytes(), "parentOf"),),
    )
    suffix = "jpg" if output_format == "jpeg" else output_format
    written: list[tuple[Path, Any]] = []
    outputs = [(f"shot-{i}", shot) for i, shot in enumerate(shots.shots)]
    outputs += [
        (f"{name}-{i}", shot) for name, items in shots.channels.items() for i, shot in enumerate(items)
    ]
    outputs += [(f"upscaled-{i}", shot) for i, shot in enumerate(shots.upscaled)]
    for stem, shot in outputs:
        path = write_image(
            args.out / f"{stem}.{suffix}",
            shot.image,
            provenance,
            output_format=output_format,
            quality=args.quality,
            infotext=shot.infotext,
            signer=signer,
        )
        written.append((path, shot))
    shots.mask.save(args.out / "mask.png")
    for path, shot in written:
        note = f"  ({shot.note})" if shot.note else ""
        print(f"{path}  seed={shot.seed}{note}")
    print(f"{args.out / 'mask.png'}  (the product's mask)")
    return 0


def _expand_only(
    args: argparse.Namespace,
    picture: Any,
    backend: Any,
    scene: Any,
    settings: Any,
    targets: tuple[Any, ...],
    output_format: str,
    signer: Any,
) -> int:
    from atelier.campaign.product import expand_image
    from atelier.engine import COMPOSITE, Ingredient, Provenance, write_image

    if not targets:
        raise AtelierError("--expand-only needs --channels to expand to", field="channels")
    provenance = Provenance(
        COMPOSITE,
        generation={"model": backend.model_name, "model_hash": backend.model_hash, "kind": "expand"},
        ingredients=(Ingredient(args.photo.name, args.photo.read_bytes(), "parentOf"),),
    )
    suffix = "jpg" if output_format == "jpeg" else output_format
    for target in targets:
        expanded = expand_image(
            picture.convert("RGB"),
            target.size,
            backend,
            prompt=scene.prompt_for(args.product),
            negative=scene.negative,
            settings=settings.inpaint,
        )
        path = write_image(
            args.out / f"{target.name}.{suffix}",
            expanded.image,
            provenance,
            output_format=output_format,
            quality=args.quality,
            infotext=expanded.infotext or None,
            signer=signer,
        )
        print(f"{path}  seed={expanded.seed}")
    return 0


def _shadow(args: argparse.Namespace) -> Any:
    from atelier.campaign.product import ShadowParams

    given = {
        "direction": args.shadow_direction,
        "opacity": args.shadow_opacity,
        "softness": args.shadow_softness,
        "distance": args.shadow_distance,
    }
    shadow = ShadowParams(**{key: value for key, value in given.items() if value is not None})
    shadow.check()
    return shadow


def _size(text: str | None, family: str) -> tuple[int, int]:
    if text is None:
        return (1024, 1024) if family == "sdxl" else (512, 512)
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise AtelierError(f"--size must be WxH, like 768x768; got {text!r}", field="size")
    return int(parts[0]), int(parts[1])


def _custom_scene(preset: Any, prompt: str | None, negative: str | None) -> Any:
    from dataclasses import replace

    changes = {key: value for key, value in (("prompt", prompt), ("negative", negative)) if value is not None}
    return replace(preset, **changes) if changes else preset


def _opaque(photo: Any) -> bool:
    from atelier.campaign.product import alpha_mask

    return alpha_mask(photo) is None


def _segmenter(args: argparse.Namespace, *, needed: bool) -> Any:
    """The SAM segmenter for an opaque photo without a mask: named, else the first in <models-dir>/segmentation."""
    if not needed:
        return None
    segmenter = sam_segmenter(args.models_dir, args.segmentation_model, args.device, what="the product")
    if segmenter is None:
        raise AtelierError(
            f"{args.photo} has no transparency and no --mask was given, and {args.models_dir / 'segmentation'} "
            "holds no SAM model: use a PNG/WebP cut-out, give --mask, or put a SAM folder (e.g. "
            "facebook/sam-vit-base, safetensors) there",
            field="photo",
        )
    return segmenter


def _backend(args: argparse.Namespace) -> tuple[Any, str]:
    """Where the shots are generated, and the model's family (for the default size)."""
    from atelier.campaign.batch import EngineBackend, StudioBackend

    if args.server:
        api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
        if not args.model:
            raise AtelierError("--model is required with --server", field="model")
        # A1111's model list does not say a model's family: the default size is SD 1.5's, --size changes it.
        return StudioBackend(args.server, args.model, api_key=api_key), "sd15"
    from atelier.engine import Engine, ModelLibrary, base_family, detect_architecture

    library = ModelLibrary(args.models_dir)
    model_path = library.resolve(args.model) if args.model else library.default()
    architecture = detect_architecture(model_path)  # refuses pickles and non-checkpoints before any work
    quiet_libraries()
    engine = Engine(**engine_options(args), loras=lora_library(args.lora_dir, args.models_dir))
    return EngineBackend(engine, model_path), base_family(architecture)
