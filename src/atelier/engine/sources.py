"""What made a picture: the checkpoint, refiner, VAE, LoRAs, ControlNets and embeddings of a generation, as
the provenance record below and as A1111's infotext parameters (:func:`infotext_params`).

The record is plain JSON, by name and hash, and becomes the ``com.atelier.generation`` assertion of an output's
Content Credentials (:mod:`atelier.engine.credentials`). Hashes are the ones A1111 shows, in full where the
engine has them: a checkpoint's file sha256, a LoRA's tensor-data sha256 ("addnet" hash), an embedding's
sha256; ControlNets and VAEs carry the short hash the infotext records, because hashing a multi-gigabyte file
on every generation would cost more than the generation.

A LoRA also carries what its training metadata says about how it was made (kohya's ``ss_*`` keys, which
Atelier's trainer writes too): the dataset folders and image count, the session, the base model's hash, and
from Atelier's trainer the dataset's hash (``atelier.dataset_sha256``: every image's bytes and caption) and its
rights record (``atelier.rights``: the owner, whether people are shown, each consent's reference and date; the
people's names stay in the LoRA's own record).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atelier import __version__
from atelier.engine.fast import describe_fast_mode
from atelier.engine.hires import hires_infotext
from atelier.engine.paths import read_safetensors_header
from atelier.errors import AtelierError

if TYPE_CHECKING:
    from PIL import Image

    from atelier.engine.generate import _Run
    from atelier.engine.provenance import Provenance

# Training facts worth keeping from a LoRA's metadata, under shorter names.
_TRAINING_KEYS = {
    "ss_output_name": "output_name",
    "ss_session_id": "session_id",
    "ss_training_started_at": "training_started_at",
    "ss_sd_model_name": "base_model",
    "ss_new_sd_model_hash": "base_model_sha256",
    "ss_num_train_images": "num_train_images",
    "ss_dataset_dirs": "dataset_dirs",
    "sshs_model_hash": "model_hash",
    "atelier.dataset_sha256": "dataset_sha256",  # Atelier's trainer: the images' bytes and captions
    "atelier.rights": "rights",  # Atelier's trainer: who owns the images, people shown, their consent
    "modelspec.title": "title",
    "modelspec.date": "date",
    "modelspec.license": "license",
}


def generation_provenance(run: _Run) -> Provenance:
    """A generation's :class:`Provenance`: made from a prompt, or from a photo that was kept (img2img,
    inpainting), with the record of what made it."""
    from atelier.engine.provenance import COMPOSITE, GENERATED, Provenance

    source_type = COMPOSITE if run.request.init_image is not None else GENERATED
    return Provenance(source_type, generation=generation_record(run))


def generation_record(run: _Run) -> dict[str, Any]:
    request, model, refiner = run.request, run.model, run.refiner
    record: dict[str, Any] = {
        "mode": request.mode,
        "checkpoint": {"name": model.name, "sha256": model.sha256, "architecture": model.architecture},
    }
    if refiner is not None:
        record["refiner"] = {"name": refiner.name, "sha256": refiner.sha256}
    if request.vae:
        record["vae"] = {"name": Path(request.vae).name.removesuffix(".safetensors"), "hash": run.vae_hash}
    if run.prompt.loras:
        record["loras"] = [
            {
                "name": lora.entry.name,
                "sha256": lora.entry.sha256,
                "weight": lora.unet_weight,
                "training": lora_training(lora.entry.path),
            }
            for lora in run.prompt.loras
        ]
    if run.controls:
        record["controlnets"] = [
            {
                "name": control.net.name,
                "hash": control.net.short_hash,
                "module": control.unit.module,
                "weight": control.unit.weight,
            }
            for control in run.controls
        ]
    if run.prompt.embeddings:
        record["embeddings"] = [{"name": item.name, "sha256": item.sha256} for item in run.prompt.embeddings]
    return record


def lora_training(path: Path) -> dict[str, Any]:
    """What a LoRA file's metadata records of its training (empty for files that record none)."""
    try:
        metadata = read_safetensors_header(path).get("__metadata__") or {}
    except AtelierError:
        return {}
    found: dict[str, Any] = {}
    for key, name in _TRAINING_KEYS.items():
        value = metadata.get(key)
        if value in (None, "", "None"):
            continue
        if key == "ss_dataset_dirs":
            # kohya stores it as JSON text: {"folder": {"n_repeats": 10, "img_count": 25}}
            with contextlib.suppress(TypeError, ValueError):
                value = json.loads(value)
        if key == "atelier.rights":
            value = _public_rights(value)
            if value is None:
                continue
        found[name] = value
    return found


def _public_rights(text: Any) -> dict[str, Any] | None:
    """A LoRA's rights record as a picture may carry it: the owner, whether people are shown and each consent's
    reference and date, without the people's names (a picture travels further than the LoRA's records)."""
    try:
        record = json.loads(text)
    except (TypeError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    consent = record.get("consent")
    if not isinstance(consent, list):
        consent = []
    return {
        "owner": record.get("owner"),
        "depicts_people": record.get("depicts_people"),
        "consent": [
            {"reference": item.get("reference"), "date": item.get("date")}
            for item in consent
            if isinstance(item, dict)
        ],
    }


def infotext_params(run: _Run, seed: int, image: Image.Image) -> dict[str, Any]:
    """One image's generation parameters in A1111's infotext order (``processing.create_infotext``)."""
    request, prompt, model, refiner = run.request, run.prompt, run.model, run.refiner
    sampler, schedule_type = run.sampler, run.schedule_type
    params: dict[str, Any] = {
        "Steps": request.steps,
        "Sampler": sampler,
        "Schedule type": schedule_type,
        "CFG scale": request.cfg_scale,
        "Seed": seed,
        # A1111 writes the first pass's size; the hires fields below say what it became.
        "Size": f"{request.width}x{request.height}" if request.enable_hr else f"{image.width}x{image.height}",
        "Model hash": model.short_hash,
        "Model": model.name,
        "VAE hash": run.vae_hash,
        "VAE": f"{Path(request.vae).name.removesuffix('.safetensors')}.safetensors" if request.vae else None,
        "Denoising strength": (
            request.denoising_strength if request.mode != "txt2img" or request.enable_hr else None
        ),
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
    }
    if request.mode == "inpaint":
        params["Mask blur"] = request.mask_blur
        if request.inpaint_only_masked:
            params["Inpaint area"] = "Only masked"
            params["Masked area padding"] = request.inpaint_padding
        if request.mask_invert:
            params["Mask mode"] = "Inpaint not masked"
        params["Masked content"] = request.inpainting_fill
    if request.tiling:
        params["Tiling"] = True
    if request.fast != "off":
        params["Fast"] = describe_fast_mode(request.fast)  # the picture says it was made with a shortcut
    if request.enable_hr:
        params.update(hires_infotext(request))
    for control in run.controls:
        params[f"ControlNet {control.index}"] = control.unit.infotext(control.net.label)
    if prompt.loras:
        params["Lora hashes"] = ", ".join(
            f"{lora.entry.name}: {lora.entry.short_hash}" for lora in prompt.loras
        )
    if prompt.embeddings:
        params["TI hashes"] = ", ".join(
            f"{embedding.name}: {embedding.short_hash}" for embedding in prompt.embeddings
        )
    if refiner is not None:
        params["Refiner"] = f"{refiner.name} [{refiner.short_hash}]"
        params["Refiner switch at"] = request.refiner_switch_at
        if request.refiner_prompt is not None:
            params["Refiner prompt"] = request.refiner_prompt
        if request.refiner_negative_prompt is not None:
            params["Refiner negative prompt"] = request.refiner_negative_prompt
    params["Version"] = f"atelier {__version__}"
    return params
