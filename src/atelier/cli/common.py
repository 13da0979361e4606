"""Small helpers shared by CLI commands: reading user files with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

from atelier.errors import AtelierError

DEFAULT_DATA_DIR = Path("atelier-data")


def load_image(path: str | os.PathLike[str], *, what: str):
    """A user's own picture (init image, mask, control image), opened with the default pixel limit."""
    from atelier.images import open_image

    return open_image(path, field=what, label=f"{what} {path}")


def writable_folder(path: str | os.PathLike[str], *, what: str) -> Path:
    """Create the output folder ``path`` (and its parents) now, so a bad choice fails before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AtelierError(f"{what} {path} is a file; give a folder", field=what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AtelierError(f"cannot create {what} folder {path}: {exc.strerror or exc}", field=what) from None
    if not os.access(path, os.W_OK):
        raise AtelierError(f"{what} folder {path} is not writable", field=what)
    return path


def lora_library(lora_dir: Path | None, models_dir: Path):
    """The LoRA folder (default: the models folder, then the runs of `atelier train`'s default --out, so a LoRA
    just trained is usable by its name)."""
    from atelier.engine import LoraLibrary

    if lora_dir is not None:
        return LoraLibrary(lora_dir)
    return LoraLibrary(models_dir, also=[DEFAULT_DATA_DIR / "training"])


def quiet_libraries() -> None:
    """Library progress bars and warnings would drown the CLI's own progress bar."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)


def content_signer():
    """The Content Credentials signer that ``ATELIER_C2PA_CERT`` with ``ATELIER_C2PA_KEY`` (or
    ``ATELIER_C2PA_SIGN_CALLBACK``) name, the studio's settings of the same names; None when unset."""
    from atelier.engine import signer_from_settings

    return signer_from_settings(
        cert=os.environ.get("ATELIER_C2PA_CERT") or None,
        key=os.environ.get("ATELIER_C2PA_KEY") or None,
        callback=os.environ.get("ATELIER_C2PA_SIGN_CALLBACK") or None,
        algorithm=os.environ.get("ATELIER_C2PA_ALGORITHM") or None,
        tsa_url=os.environ.get("ATELIER_C2PA_TSA_URL") or None,
    )


def add_format_options(parser) -> None:
    """``--format`` and ``--quality``: what e-commerce uploads want (JPEG, WebP) besides A1111's PNG."""
    parser.add_argument(
        "--format",
        default="png",
        choices=["png", "jpeg", "jpg", "webp"],
        help="image file format (default png; jpeg and webp keep the infotext in EXIF, as A1111 does)",
    )
    parser.add_argument("--quality", type=int, default=None, help="jpeg / webp quality, 1-100 (default 90)")


def sam_segmenter(models_dir: Path, name: str | None, device: str | None, *, what: str):
    """A SAM segmenter for cut-outs: ``name`` (a folder in ``<models-dir>/segmentation`` or a path), else the
    first model there; None when there is none. Prints which model cuts ``what`` out, with its licence."""
    from atelier.campaign.product import (
        SamSegmenter,
        list_segmentation_models,
        read_segmentation_model,
        segmentation_model,
    )

    root = Path(models_dir) / "segmentation"
    if name:
        path = Path(name)
        model = read_segmentation_model(path) if path.is_dir() else segmentation_model(root, name)
    else:
        found = list_segmentation_models(root)
        if not found:
            return None
        model = found[0]
    print(f"cutting out {what} with {model.name} (licence: {model.license})")
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return SamSegmenter(model, device=device)


def add_engine_options(parser) -> None:
    """Where and how fast models run: ``--device``, ``--precision`` and the speed paths (engine/acceleration.py)."""
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument(
        "--precision",
        default="auto",
        help="auto (fp16 on CUDA, fp32 on the CPU), fp16, bf16 (CUDA, or a CPU with native bf16) or fp32",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet and VAE decoder (minutes once, cached on disk; faster on a GPU)",
    )
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode (default: max-autotune on CUDA, default on CPU)",
    )
    parser.add_argument(
        "--compile-cache",
        type=Path,
        default=DEFAULT_DATA_DIR / "cache" / "compile",
        help="folder for compiled graphs, so the next run does not compile again",
    )
    parser.add_argument(
        "--fuse-qkv", action="store_true", help="fuse attention projections (unused while a LoRA is active)"
    )


def engine_options(args) -> dict:
    """Keyword arguments for :class:`atelier.engine.Engine` from :func:`add_engine_options`' flags."""
    from atelier.engine import SpeedSettings, default_device, resolve_precision

    device = args.device or default_device()
    speed = SpeedSettings(
        compile=args.compile,
        compile_mode=args.compile_mode,
        compile_cache_dir=args.compile_cache,
        fuse_qkv=args.fuse_qkv,
    )
    speed.validate()
    return {"device": device, "dtype": resolve_precision(args.precision, device), "speed": speed}
