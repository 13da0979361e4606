"""`atelier generate PROMPT`: txt2img, img2img, inpainting, SDXL refining and ControlNet from the command line."""

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
    writable_folder,
)
from atelier.errors import AtelierError
from atelier.files import write_atomic


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate images from a prompt", description=__doc__)
    p.add_argument("prompt", help="the prompt (A1111 syntax)")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--model", help="model name in the models folder, or a path (default: first model found)")
    p.add_argument("--models-dir", type=Path, default=DEFAULT_DATA_DIR / "models", help="models folder")
    p.add_argument(
        "--lora-dir",
        type=Path,
        default=None,
        help="LoRA folder for <lora:name:w> (default: the models folder, then atelier-data/training)",
    )
    p.add_argument(
        "--embeddings-dir",
        type=Path,
        default=None,
        help="textual inversion embeddings used by name in prompts (default: <models-dir>/embeddings)",
    )
    p.add_argument("--vae", help="an external VAE: a name in <models-dir>/vae, or a .safetensors path")
    p.add_argument("--seed", type=int, default=-1, help="seed; -1 = random. Image i of a batch uses seed+i")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0, help="CFG scale")
    p.add_argument("--sampler", default="Euler a", help="A1111 sampler name, e.g. 'DPM++ 2M Karras'")
    p.add_argument("--schedule-type", default=None, help="A1111 schedule type: Automatic, Karras, ...")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--batch-count", type=int, default=1)
    p.add_argument("--clip-skip", type=int, default=1)
    p.add_argument(
        "--fast",
        default="off",
        help="off, deepcache or tome: faster drafts with a small quality cost (README 'Speed on a GPU')",
    )
    p.add_argument("--init", type=Path, help="init image for img2img / inpainting")
    p.add_argument("--strength", type=float, default=0.75, help="denoising strength for img2img / inpainting")
    p.add_argument("--mask", type=Path, help="inpainting mask (white = repaint)")
    p.add_argument("--mask-blur", type=int, default=4)
    p.add_argument("--invert-mask", action="store_true", help="repaint the black part instead")
    p.add_argument("--only-masked", action="store_true", help="inpaint the masked region at full resolution")
    p.add_argument("--padding", type=int, default=32, help="padding around the masked region (--only-masked)")
    p.add_argument(
        "--masked-content",
        default="original",
        choices=["original", "fill", "latent noise", "latent nothing"],
        help="what the masked area starts from",
    )
    p.add_argument("--refiner", help="SDXL refiner model (name or path)")
    p.add_argument("--refiner-prompt", default=None)
    p.add_argument("--refiner-negative", default=None)
    p.add_argument(
        "--refiner-switch", type=float, default=0.8, help="fraction of steps done by the base model"
    )
    p.add_argument(
        "--control",
        action="append",
        default=[],
        metavar="MODULE:IMAGE[:WEIGHT[:START:END]]",
        help="ControlNet unit: preprocessor (canny, none, invert, depth_midas, ...) and control image, optionally "
        "weight and guidance start/end, e.g. canny:sketch.png:0.8:0:0.6 (repeatable)",
    )
    p.add_argument(
        "--control-model",
        action="append",
        default=[],
        metavar="NAME",
        help="ControlNet model of each --control, in order: a name in --controlnet-dir or a path (repeatable)",
    )
    p.add_argument(
        "--control-mode",
        action="append",
        default=[],
        metavar="MODE",
        help="balanced, prompt (my prompt is more important) or controlnet (ControlNet is more important); "
        "once for all units or once per unit",
    )
    p.add_argument(
        "--control-resize",
        action="append",
        default=[],
        metavar="MODE",
        help="how the control image meets the output size: resize, crop (default) or fill; once for all units "
        "or once per unit",
    )
    p.add_argument(
        "--controlnet-dir",
        type=Path,
        default=None,
        help="ControlNet folder (default: models folder/controlnet)",
    )
    p.add_argument(
        "--preprocessor-models",
        type=Path,
        default=None,
        help="folder of preprocessor models (depth, line art, soft edge); default: $ATELIER_PREPROCESSOR_MODELS",
    )
    p.add_argument(
        "--control-preview", type=Path, default=None, help="also write the preprocessed control maps here"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_DATA_DIR / "outputs", help="output folder")
    add_format_options(p)
    add_engine_options(p)
    p.set_defaults(func=run, uses_models=True)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from atelier.engine import (
        EmbeddingLibrary,
        Engine,
        GenerationRequest,
        Ingredient,
        ModelLibrary,
        check_output_format,
        detect_architecture,
        resolve_sampler,
        save_image,
    )

    # Cheap checks first, so a typo does not wait for torch and a model to load.
    resolve_sampler(args.sampler, args.schedule_type)
    output_format = check_output_format(args.format, args.quality)
    signer = content_signer()
    init = load_image(args.init, what="init image") if args.init else None
    mask = load_image(args.mask, what="mask") if args.mask else None
    writable_folder(args.out, what="--out")
    quiet_libraries()
    library = ModelLibrary(args.models_dir)
    model_path = library.resolve(args.model) if args.model else _default_model(library)
    refiner_path = library.resolve(args.refiner) if args.refiner else None
    controlnet_units = _control_units(args)
    request = GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative,
        model=str(model_path),
        sampler=args.sampler,
        schedule_type=args.schedule_type,
        steps=args.steps,
        cfg_scale=args.cfg,
        seed=args.seed,
        width=args.width,
        height=args.height,
        batch_size=args.batch_size,
        batch_count=args.batch_count,
        clip_skip=args.clip_skip,
        fast=args.fast,
        init_image=init,
        denoising_strength=args.strength,
        mask=mask,
        mask_blur=args.mask_blur,
        mask_invert=args.invert_mask,
        inpaint_only_masked=args.only_masked,
        inpaint_padding=args.padding,
        inpainting_fill=args.masked_content,
        refiner=str(refiner_path) if refiner_path else None,
        refiner_prompt=args.refiner_prompt,
        refiner_negative_prompt=args.refiner_negative,
        refiner_switch_at=args.refiner_switch,
        controlnet_units=controlnet_units,
    )
    vaes, request.vae = _vae_choice(args.vae, args.models_dir)
    request.validate()
    detect_architecture(model_path)  # refuses pickles and non-checkpoints before anything loads
    if refiner_path:
        detect_architecture(refiner_path)
    engine = Engine(
        **engine_options(args),
        loras=lora_library(args.lora_dir, args.models_dir),
        embeddings=EmbeddingLibrary(args.embeddings_dir or args.models_dir / "embeddings"),
        vaes=vaes,
        preprocessor_models=args.preprocessor_models,
    )
    with tqdm(total=1, unit="step", desc="generating", dynamic_ncols=True) as bar:

        def on_step(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        result = engine.generate(request, on_step=on_step)
    # Signed outputs name the photo they came from as their parent ingredient.
    photo = (Ingredient(args.init.name, args.init.read_bytes(), "parentOf"),) if signer and args.init else ()
    for item in result.images:
        path = save_image(
            item,
            args.out,
            output_format=output_format,
            quality=args.quality,
            signer=signer,
            ingredients=photo,
        )
        print(f"{path}  seed={item.seed}")
    if args.control_preview is not None:
        for index, (unit, control_map) in enumerate(zip(controlnet_units, result.control_maps, strict=True)):
            print(
                f"{_write_png(control_map, args.control_preview / f'control-{index}-{unit.module}.png')}  (control map)"
            )
    return 0


_CONTROL_MODES = {"balanced": 0, "prompt": 1, "controlnet": 2}
_RESIZE_MODES = {"resize": 0, "crop": 1, "fill": 2}


def _control_units(args: argparse.Namespace) -> list:
    """--control / --control-model / --control-mode / --control-resize as ControlNet units, checked cheaply."""
    from atelier.engine import (
        ControlNetLibrary,
        ControlUnit,
        canonical_module,
        detect_controlnet_architecture,
        model_folder,
        needs_model,
    )

    count = len(args.control)
    if len(args.control_model) != count:
        raise AtelierError(
            f"{count} --control given but {len(args.control_model)} --control-model: give one model per control",
            field="control-model",
        )
    modes = _per_unit(args.control_mode, count, "control-mode", _CONTROL_MODES)
    resize_modes = _per_unit(args.control_resize, count, "control-resize", _RESIZE_MODES)
    library = ControlNetLibrary(args.controlnet_dir or args.models_dir / "controlnet")
    units = []
    for spec, model_name, mode, resize_mode in zip(
        args.control, args.control_model, modes, resize_modes, strict=True
    ):
        module, image_path, weight, start, end = _parse_control(spec)
        module = canonical_module(module)
        if needs_model(module):
            model_folder(module, args.preprocessor_models)
        candidate = Path(model_name).expanduser()
        is_path = ("/" in model_name or os.sep in model_name) and candidate.exists()
        model_path = candidate if is_path else library.resolve(model_name, field="control-model")
        detect_controlnet_architecture(
            model_path
        )  # refuses pickles and non-ControlNets before anything loads
        units.append(
            ControlUnit(
                image=load_image(image_path, what="control image"),
                module=module,
                model=str(model_path),
                weight=weight,
                guidance_start=start,
                guidance_end=end,
                control_mode=mode,
                resize_mode=resize_mode,
            )
        )
    return units


def _parse_control(spec: str) -> tuple[str, str, float, float, float]:
    """``module:image[:weight[:start:end]]``; the image path may itself contain colons."""
    module, _, rest = spec.partition(":")
    parts = rest.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 3:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    image = ":".join(parts)
    if not module or not image or len(numbers) == 2:
        raise AtelierError(
            f"--control {spec!r}: expected MODULE:IMAGE[:WEIGHT[:START:END]], e.g. canny:sketch.png:0.8:0:1",
            field="control",
        )
    weight, start, end = (numbers + [1.0, 0.0, 1.0][len(numbers) :]) if numbers else (1.0, 0.0, 1.0)
    return module, image, weight, start, end


def _per_unit(values: list[str], count: int, option: str, short_names: dict[str, int]) -> list[str | int]:
    """One value for every unit, or one per unit; short names and 0-2 become what the engine takes."""
    if len(values) not in (0, 1, count):
        raise AtelierError(f"give --{option} once for all units or once per --control", field=option)
    converted: list[str | int] = []
    for value in values:
        if value.lower() in short_names:
            converted.append(short_names[value.lower()])
        else:
            converted.append(int(value) if value.isdigit() else value)
    if not converted:
        return [0 if option == "control-mode" else 1] * count
    return converted * count if len(converted) == 1 else converted


def _write_png(image, path: Path) -> Path:
    return write_atomic(path, lambda temp: image.save(temp, format="PNG"))


def _default_model(library) -> Path:
    if not library.list():
        print(
            f"no model in {library.root}: creating the tiny demo model (demo: random weights, images are noise)"
        )
        library.ensure_demo()
    return library.default()


def _vae_choice(vae: str | None, models_dir: Path) -> tuple[Any, str | None]:
    """``--vae``: a file anywhere (the user's own CLI files may live anywhere) or a name in models/vae."""
    from atelier.engine import VaeLibrary

    if not vae:
        return None, None
    path = Path(vae)
    if path.suffix == ".safetensors" and path.is_file():
        return VaeLibrary(path.parent), path.stem
    return VaeLibrary(models_dir / "vae"), vae
