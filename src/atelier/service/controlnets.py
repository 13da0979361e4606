"""ControlNet units in the service: parsing them from requests, checking their models, carrying them to workers.

ControlNet models live in the models bucket under ``models/controlnet/`` (a ``.safetensors`` file or a diffusers
folder each), named as the extension names them (file name without suffix). They are not registered like
checkpoints: the API and the workers read that folder through :func:`controlnet_library`. With S3 storage the
folder is mirrored into the machine's cache first.

A unit's control image is stored next to the job's other inputs (``outputs/<job>/inputs/control_<i>.png``) and the
job payload carries its settings and that key, so any worker can rebuild the unit.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from atelier.engine import ControlNetLibrary, ControlUnit, detect_controlnet_architecture
from atelier.errors import AtelierError
from atelier.images import open_image
from atelier.service.model_folders import mirror_prefix
from atelier.service.registry import ModelRecord
from atelier.service.security import decode_image
from atelier.service.storage import Storage, check_key

CONTROLNET_PREFIX = "models/controlnet"
# Unit settings a client may send, with ControlUnit's names.
UNIT_SETTINGS = (
    "module",
    "model",
    "weight",
    "guidance_start",
    "guidance_end",
    "control_mode",
    "resize_mode",
    "processor_res",
    "threshold_a",
    "threshold_b",
    "pixel_perfect",
)
# Fields of the extension's API that change nothing here (memory savers, hires-fix options, UI state).
_A1111_IGNORED = ("low_vram", "hr_option", "is_ui", "input_mode", "batch_images", "save_detected_map")


def controlnet_library(storage: Storage, cache_dir: str | os.PathLike[str]) -> ControlNetLibrary:
    """The ControlNets in ``models/controlnet/``, as a folder on this machine."""
    local = storage.local_path(CONTROLNET_PREFIX)
    if local is not None:
        return ControlNetLibrary(local)
    mirror = Path(cache_dir) / "controlnet"
    mirror_prefix(storage, CONTROLNET_PREFIX, mirror)
    return ControlNetLibrary(mirror)


def parse_units(
    raw_units: object,
    *,
    storage: Storage,
    max_pixels: int,
    a1111: bool = False,
) -> list[ControlUnit]:
    """Control units from a request: the native form, or sd-webui-controlnet's ``args`` with ``a1111``.

    Images are base64 (``image``; the extension also says ``input_image``) or, natively, ``image_key``: a stored
    output of an earlier job. Disabled A1111 units are left out, as the extension skips them.
    """
    if raw_units is None:
        return []
    if not isinstance(raw_units, list):
        raise AtelierError("controlnet_units must be a list of units", field="controlnet_units")
    units = []
    for index, raw in enumerate(raw_units):
        prefix = f"controlnet_units[{index}]"
        if not isinstance(raw, Mapping):
            raise AtelierError(f"{prefix} must be an object", field=prefix)
        if a1111 and raw.get("enabled", True) is False:
            continue
        allowed = {*UNIT_SETTINGS, "image", "image_key"}
        if a1111:
            allowed |= {"input_image", "mask", "enabled", "guessmode", *_A1111_IGNORED}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise AtelierError(
                f"{prefix}.{unknown[0]} is not a ControlNet unit field", field=f"{prefix}.{unknown[0]}"
            )
        settings = {name: raw[name] for name in UNIT_SETTINGS if raw.get(name) is not None}
        if a1111 and "control_mode" not in settings and raw.get("guessmode"):
            settings["control_mode"] = "ControlNet is more important"
        image = _unit_image(raw, prefix, storage=storage, max_pixels=max_pixels, a1111=a1111)
        units.append(ControlUnit(image=image, **settings))
    return units


def _unit_image(
    raw: Mapping[str, Any], prefix: str, *, storage: Storage, max_pixels: int, a1111: bool
) -> Image.Image | None:
    image = raw.get("input_image") or raw.get("image") if a1111 else raw.get("image")
    mask = raw.get("mask")
    if isinstance(image, Mapping):
        # The extension also takes {"image": ..., "mask": ...} in one field.
        mask = image.get("mask") or mask
        image = image.get("image")
    if mask:
        raise AtelierError(
            f"{prefix}.mask: ControlNet unit masks are not available in Atelier; send the unit without a mask",
            field=f"{prefix}.mask",
        )
    key = raw.get("image_key")
    if image and key:
        raise AtelierError(f"{prefix}: send image or image_key, not both", field=f"{prefix}.image")
    if key:
        return _stored_image(storage, key, field=f"{prefix}.image_key", max_pixels=max_pixels)
    if not image:
        return None
    return decode_image(image, field=f"{prefix}.image", max_pixels=max_pixels)


def _stored_image(storage: Storage, key: object, *, field: str, max_pixels: int) -> Image.Image:
    key = check_key(key)
    if not key.startswith("outputs/") or not storage.exists(key):
        raise AtelierError(f"{field} {key!r} is not a stored output image", field=field)
    encoded = base64.b64encode(storage.get_bytes(key)).decode("ascii")
    return decode_image(encoded, field=field, max_pixels=max_pixels)


def check_unit_models(
    library: ControlNetLibrary, units: Sequence[ControlUnit], checkpoint: ModelRecord
) -> None:
    """Every unit names an existing ControlNet made for the checkpoint's family (checked from headers only)."""
    for index, unit in enumerate(units):
        field = f"controlnet_units[{index}].model"
        path = library.resolve(unit.model, field=field)
        try:
            family = detect_controlnet_architecture(path).removeprefix("controlnet-")
        except AtelierError as problem:
            raise AtelierError(str(problem), field=field) from None
        if checkpoint.family in ("sd15", "sdxl") and family != checkpoint.family:
            raise AtelierError(
                f"{field}: ControlNet {unit.model!r} is for {family.upper()} but the model {checkpoint.name!r} "
                f"is {checkpoint.family.upper()}; pick a ControlNet made for the base model",
                field=field,
            )


def store_units(storage: Storage, job_id: str, units: Sequence[ControlUnit]) -> list[dict[str, Any]]:
    """Each unit's settings for the job payload, its image stored beside the job's inputs."""
    from atelier.service.submit import png_for_job  # submit imports this module's checks

    stored = []
    for index, unit in enumerate(units):
        entry = unit.to_params()
        if unit.image is not None:
            key = f"outputs/{job_id}/inputs/control_{index}.png"
            storage.put_bytes(key, png_for_job(unit.image))
            entry["image_key"] = key
        stored.append(entry)
    return stored


def load_units(
    storage: Storage, stored: Sequence[Mapping[str, Any]], *, max_pixels: int
) -> list[ControlUnit]:
    """The units a job payload carries, with their images read back from storage."""
    units = []
    for entry in stored:
        settings = {name: entry[name] for name in UNIT_SETTINGS if name in entry}
        image = None
        if entry.get("image_key"):
            image = open_image(
                storage.get_bytes(entry["image_key"]), field="image_key", max_pixels=max_pixels
            )
        units.append(ControlUnit(image=image, **settings))
    return units


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def a1111_script_units(scripts: Mapping[str, Any], *, storage: Storage, max_pixels: int) -> list[ControlUnit]:
    """The units of ``alwayson_scripts["controlnet"]["args"]`` (the script's name in any case, as clients vary)."""
    for name, script in scripts.items():
        if name.lower() == "controlnet":
            if not isinstance(script, Mapping):
                raise AtelierError(
                    "alwayson_scripts.controlnet must be an object with args", field="controlnet_units"
                )
            return parse_units(script.get("args") or [], storage=storage, max_pixels=max_pixels, a1111=True)
    return []
