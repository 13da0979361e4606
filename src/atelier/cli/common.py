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
