"""Segmentation models for cutting products out: SAM folders in ``models/segmentation/<name>/``, and their licences.

Why SAM. The background-removal models people name first (BiRefNet, BRIA's RMBG) have no class in transformers:
loading them needs ``trust_remote_code``, which runs Python shipped with the download. Atelier refuses that just as
it refuses pickled weights. Segment Anything (``SamModel`` / ``SamProcessor``, and SAM-HQ's ``SamHQModel``) is
native to transformers, and Meta's weights (``facebook/sam-vit-base``, ``-large``, ``-huge``) are Apache-2.0, so
they are fine for commercial work (RMBG is not: its licence is non-commercial).

A folder is what ``save_pretrained`` writes, or what ``huggingface-cli download facebook/sam-vit-base`` brings:
``config.json`` (``model_type`` ``sam`` or ``sam_hq``), ``model.safetensors`` and the image processor's config.
It loads with ``local_files_only=True`` and ``use_safetensors=True``: nothing is downloaded and pickled weights
(``pytorch_model.bin``) are never read; a folder with only pickles is refused by name.

Licences. Each model's licence is read, in this order, from:

1. ``atelier.toml`` in the folder, Atelier's own note, which a person writes when adding a model::

       license = "apache-2.0"
       source = "https://huggingface.co/facebook/sam-vit-base"

2. the ``license:`` line of the model card's front matter (``README.md``), which a hub download includes;
3. otherwise it is ``"unknown"``, shown as such so nobody mistakes silence for permission.

Product photos are centred, so the prompt is a box covering the photo less a small margin plus a foreground point
in the middle; of SAM's three candidate masks the one with the highest predicted IoU is kept.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from atelier.config_models import closest, unknown_key_error
from atelier.engine import PICKLE_SUFFIXES, check_name, refuse_pickle
from atelier.errors import AtelierError, NotFoundError
from atelier.files import read_toml

MODEL_NOTE = "atelier.toml"
MODEL_NOTE_KEYS = ("license", "source")
UNKNOWN_LICENSE = "unknown"
# model_type in config.json -> (model class, processor class) in transformers; both native, no remote code.
SAM_CLASSES = {"sam": ("SamModel", "SamProcessor"), "sam_hq": ("SamHQModel", "SamHQProcessor")}
# The prompt box leaves this fraction of each side out: products are centred and rarely touch the frame.
BOX_MARGIN = 0.02
_FRONT_MATTER_LICENSE = re.compile(r"^license:\s*[\"']?([^\"'\n#]+?)[\"']?\s*$", re.MULTILINE)


@dataclass(frozen=True)
class SegmentationModel:
    """A segmentation model folder: its name, where it is, its architecture and its licence."""

    name: str
    folder: Path
    kind: str  # a key of SAM_CLASSES
    license: str
    source: str | None = None


def list_segmentation_models(root: str | os.PathLike[str]) -> list[SegmentationModel]:
    """The usable models in ``root`` (``models/segmentation/``), by name; folders that are not SAM are left out."""
    folder = Path(root)
    if not folder.is_dir():
        return []
    models = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            try:
                models.append(read_segmentation_model(entry))
            except AtelierError:
                continue  # listed by what it is not; segmentation_model() says why when it is asked for
    return models


def segmentation_model(root: str | os.PathLike[str], name: str) -> SegmentationModel:
    """The model ``name`` in ``root``, or a NotFoundError that lists the known names."""
    check_name(name, what="segmentation_model")
    folder = Path(root) / name
    if not folder.is_dir():
        known = [model.name for model in list_segmentation_models(root)]
        guess = closest(name, known)
        hint = f"; did you mean {guess!r}?" if guess else f"; available: {', '.join(known) or 'none'}"
        raise NotFoundError(f"no segmentation model {name!r} in {root}{hint}", field="segmentation_model")
    return read_segmentation_model(folder)


def read_segmentation_model(folder: str | os.PathLike[str]) -> SegmentationModel:
    """Check a model folder without loading weights: a SAM config, safetensors weights, and its licence."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AtelierError(
            f"{folder} has no config.json; it should hold a SAM model", field="segmentation_model"
        ) from None
    except (OSError, ValueError) as exc:
        raise AtelierError(
            f"{folder}/config.json is not readable JSON ({exc})", field="segmentation_model"
        ) from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in SAM_CLASSES:
        raise AtelierError(
            f"{folder.name} is a {kind or 'unknown'} model; Atelier cuts products out with SAM "
            f"(model_type {' or '.join(SAM_CLASSES)}), which loads without running downloaded code",
            field="segmentation_model",
        )
    files = [path for path in folder.iterdir() if path.is_file()]
    if not any(path.suffix == ".safetensors" for path in files):
        pickles = [path for path in files if path.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            refuse_pickle(pickles[0])
        raise AtelierError(f"{folder} holds no .safetensors weights", field="segmentation_model")
    license_name, source = _licence(folder)
    return SegmentationModel(folder.name, folder, kind, license_name, source)


def _licence(folder: Path) -> tuple[str, str | None]:
    note_path = folder / MODEL_NOTE
    if note_path.is_file():
        note = read_toml(note_path, what="model note", field="segmentation_model")
        for key in note:
            if key not in MODEL_NOTE_KEYS:
                raise unknown_key_error(
                    key, MODEL_NOTE_KEYS, where=str(note_path), field="segmentation_model"
                )
        license_name, source = note.get("license"), note.get("source")
        if not isinstance(license_name, str) or not license_name.strip():
            raise AtelierError(f"{note_path}: license must be text", field="segmentation_model")
        if source is not None and not isinstance(source, str):
            raise AtelierError(f"{note_path}: source must be text", field="segmentation_model")
        return license_name.strip(), source
    card = folder / "README.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            front_matter = text[3:].split("\n---", 1)[0]
            match = _FRONT_MATTER_LICENSE.search(front_matter)
            if match:
                return match.group(1).strip(), None
    return UNKNOWN_LICENSE, None


class SamSegmenter:
    """A loaded SAM model that cuts the centred product out of a photo. Holds the weights; make one per use."""

    def __init__(self, model: SegmentationModel, *, device: str = "cpu") -> None:
        import transformers

        self.model = model
        self.device = device
        model_class_name, processor_class_name = SAM_CLASSES[model.kind]
        model_class = getattr(transformers, model_class_name)
        processor_class = getattr(transformers, processor_class_name)
        folder = str(model.folder)
        try:
            self.network: Any = model_class.from_pretrained(
                folder, local_files_only=True, use_safetensors=True
            )
            # The PIL image processor: transformers' default one needs torchvision, which Atelier does not install.
            image_processor = transformers.SamImageProcessorPil.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AtelierError(
                f"cannot load the segmentation model {model.name}: {first_line}", field="segmentation_model"
            ) from None
        self.network.to(device).eval()
        self.processor: Any = processor_class(image_processor=image_processor)

    def segment(self, photo: Image.Image) -> Image.Image:
        """The product's mask (mode ``L``, 0 or 255) at the photo's size, before any refinement."""
        import torch

        rgb = photo.convert("RGB")
        width, height = rgb.size
        margin_x, margin_y = max(1, round(width * BOX_MARGIN)), max(1, round(height * BOX_MARGIN))
        box = [margin_x, margin_y, width - margin_x, height - margin_y]
        centre = [width / 2, height / 2]
        inputs = self.processor(
            images=rgb, input_boxes=[[box]], input_points=[[[centre]]], return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            output = self.network(**inputs, multimask_output=True)
        masks = self.processor.image_processor.post_process_masks(
            output.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )[0]  # (boxes, candidates, height, width), binarised at SAM's logit threshold 0
        best = int(torch.argmax(output.iou_scores[0, 0]).item())
        chosen = masks[0, best].numpy()
        return Image.fromarray(np.where(chosen, 255, 0).astype(np.uint8), "L")
