"""Captions for training images that have none, written by a captioning model before training (kohya's BLIP).

kohya users run ``make_captions.py`` (BLIP) over their folder first; ``train_lora(..., caption_model=...)``
does the same in the run: every training image without a caption file, or with an empty one, gets one from the
model in ``models/captioning/`` (:mod:`atelier.engine.captioning`). Images that have a caption keep it, and
regularization images keep kohya's rule (their class tokens): they show the class, not the subject.

The caption is prefixed with the subset's class tokens (``oue car`` of a ``10_oue car`` folder) or the
instance prompt, which is what such an image would have been captioned with otherwise: the trigger word stays
in every caption, and the model's words describe the rest (kohya_ss's captioning has the same prefix option).

Captions are written only into the run's own copy of the data (the extracted zip, or the copied folder): a
user's folder is never changed behind their back, and the run folder shows exactly what was trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from atelier.errors import AtelierError
from atelier.files import write_text_atomic
from atelier.training.dataset import list_images, load_image, read_caption
from atelier.training.dataset_config import SubsetConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MissingCaption:
    """A training image that will be captioned, where its caption goes and what it starts with."""

    image: Path
    caption_file: Path
    prefix: str | None


def missing_captions(
    subsets: Sequence[SubsetConfig], *, inside: Path, instance_prompt: str | None = None
) -> list[MissingCaption]:
    """The training images of ``subsets`` without a caption (or with an empty caption file).

    Every subset must lie inside ``inside`` (the run's copy of the data): writing anywhere else is refused.
    """
    found: list[MissingCaption] = []
    for subset in subsets:
        if subset.is_reg:
            continue
        if not subset.image_dir.resolve().is_relative_to(inside.resolve()):
            raise AtelierError(
                f"cannot caption {subset.image_dir}: captions are only written into the run's copy of the "
                "training data; give the data as a folder or .zip",
                field="caption_missing",
            )
        prefix = subset.class_tokens or (instance_prompt.strip() if instance_prompt else None) or None
        for image in list_images(subset.image_dir):
            caption = read_caption(image, subset.caption_extension)
            if caption is not None and caption[0]:
                continue
            # An empty caption file is replaced where it is; a missing one gets the subset's extension.
            target = caption[1] if caption else image.with_name(image.stem + subset.caption_extension)
            found.append(MissingCaption(image, target, prefix))
    return found


def write_captions(
    missing: Sequence[MissingCaption],
    caption_model: Path,
    *,
    device: str | None = None,
    log: Callable[[str], None] = logger.info,
) -> list[Path]:
    """Caption each image with the model in ``caption_model`` and write its caption file; return those files.

    The model is loaded only when there is something to caption, and freed afterwards, before the base model
    is loaded for training.
    """
    if not missing:
        return []
    from atelier.engine import Captioner

    captioner = Captioner.load(caption_model, device=device)
    log(f"captioning {len(missing)} image(s) without a caption with {captioner.name}")
    written: list[Path] = []
    for item in missing:
        text = captioner.caption(load_image(item.image))
        caption = ", ".join(part for part in (item.prefix, text) if part)
        if not caption:
            # Nothing to write: the scan then gives the image the class tokens, or says it has no caption.
            log(f"warning: {captioner.name} wrote no caption for {item.image.name}")
            continue
        write_text_atomic(item.caption_file, caption + "\n")
        written.append(item.caption_file)
    del captioner
    _free_accelerator_memory()
    return written


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
