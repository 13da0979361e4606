"""`atelier generate PROMPT`: txt2img, img2img, inpainting and SDXL refining from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from atelier.cli.common import DEFAULT_DATA_DIR, load_image, quiet_libraries


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate images from a prompt", description=__doc__)
    p.add_argument("prompt", help="the prompt (A1111 syntax)")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--model", help="model name in the models folder, or a path (default: first model found)")
    p.add_argument("--models-dir", type=Path, default=DEFAULT_DATA_DIR / "models", help="models folder")
    p.add_argument("--lora-dir", type=Path, default=None, help="LoRA folder for <lora:name:w> (default: models folder)")
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
    p.add_argument("--refiner-switch", type=float, default=0.8, help="fraction of steps done by the base model")
    p.add_argument("--out", type=Path, default=DEFAULT_DATA_DIR / "outputs", help="output folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from atelier.engine.generate import Engine
    from atelier.engine.library import ModelLibrary
    from atelier.engine.loras import LoraLibrary
    from atelier.engine.models import detect_architecture
    from atelier.engine.output import save_image
    from atelier.engine.request import GenerationRequest
    from atelier.engine.samplers import resolve_sampler

    # Cheap checks first, so a typo does not wait for torch and a model to load.
    resolve_sampler(args.sampler, args.schedule_type)
    init = load_image(args.init, what="init image") if args.init else None
    mask = load_image(args.mask, what="mask") if args.mask else None
    quiet_libraries()
    library = ModelLibrary(args.models_dir)
    model_path = library.resolve(args.model) if args.model else _default_model(library)
    refiner_path = library.resolve(args.refiner) if args.refiner else None
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
    )
    request.validate()
    detect_architecture(model_path)  # refuses pickles and non-checkpoints before anything loads
    if refiner_path:
        detect_architecture(refiner_path)
    engine = Engine(device=args.device, loras=LoraLibrary(args.lora_dir or args.models_dir))
    with tqdm(total=1, unit="step", desc="generating", dynamic_ncols=True) as bar:

        def on_step(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        result = engine.generate(request, on_step=on_step)
    for item in result.images:
        path = save_image(item, args.out)
        print(f"{path}  seed={item.seed}")
    return 0


def _default_model(library) -> Path:
    if not library.list():
        print(f"no model in {library.root}: creating the tiny demo model (demo: random weights, images are noise)")
        library.ensure_demo()
    return library.default()
