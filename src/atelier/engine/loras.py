"""LoRA files: finding them by name, checking they fit the model, and applying ``<lora:name:w>`` tags.

LoRAs are loaded with diffusers' own ``load_lora_weights`` (which reads kohya/A1111 ``lora_unet_*`` /
``lora_te*_`` files and diffusers/PEFT files alike) as named adapters. Switching LoRAs between generations only
changes which adapters are active and at what weight; the base model is never reloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atelier.engine.hotswap import hotswap_slots
from atelier.engine.library import FolderLibrary
from atelier.engine.models import read_safetensors_header, safetensors_kind
from atelier.errors import AtelierError

# Cross-attention width of each base family, the surest sign of what a LoRA was trained on.
_FAMILY_BY_WIDTH = {768: "SD 1.5", 1024: "SD 2.x", 2048: "SDXL", 1280: "SDXL refiner"}
# The tiny demo models (engine/tiny.py) are architectures of their own: 32 (SD 1.5), 80 (SDXL), 48 (refiner).
_FAMILY_CODE_BY_WIDTH = {768: "sd15", 2048: "sdxl", 1280: "sdxl", 32: "sd15", 80: "sdxl", 48: "sdxl"}
_CROSS_ATTENTION_KEY = re.compile(r"attn2[._]to_k.*(lora_down|lora_A|lora\.down)\.weight$")
# Structure only SDXL has: a second text encoder; kohya's SGM block names (its SD 1.5 files use diffusers'
# down_blocks names); more than one transformer block per attention (SD 1.5 has one).
_SDXL_KEY_PREFIXES = (
    "lora_te1_",
    "lora_te2_",
    "text_encoder_2.",
    "lora_unet_input_blocks_",
    "lora_unet_middle_block_",
    "lora_unet_output_blocks_",
)
_SECOND_TRANSFORMER_BLOCK = re.compile(r"transformer_blocks[._]1[._]")
# diffusers' DreamBooth / AutoTrain scripts write a LoRA as this file in a folder named after the LoRA.
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class LoraEntry:
    name: str
    path: Path
    family: str  # "sdxl", "sd15" or "unknown"
    sha256: str

    @property
    def short_hash(self) -> str:
        """A1111's "Lora hashes" value: the first 12 characters of the tensor-data sha256."""
        return self.sha256[:12]


def lora_sha256(path: Path) -> str:
    """A1111's LoRA hash: sha256 of the tensor data after the safetensors header (the "addnet" hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        handle.seek(8 + length)
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def inspect_lora(path: Path) -> tuple[str, int | None]:
    """Return (family, cross-attention width) of a LoRA file from its header, or raise if it is not a LoRA.

    The family ("sd15", "sdxl" or "unknown") is decided here only, for the CLI and the studio alike, from the
    strongest evidence present: the cross-attention width when it is a known one (768, 2048, 1280); then
    structure only SDXL has (see ``_SDXL_KEY_PREFIXES``); then kohya's ``ss_base_model_version`` note; then
    SD 1.5's single text encoder (``lora_te_``).
    """
    header = read_safetensors_header(path)
    if safetensors_kind(path, header) != "lora":
        raise AtelierError(f"{path.name} is not a LoRA file (no lora_down/lora_up or lora_A/lora_B weights)")
    keys = [key for key in header if key != "__metadata__"]
    width = None
    for key in keys:
        if _CROSS_ATTENTION_KEY.search(key):
            width = int(header[key]["shape"][-1])
            break
    base = str((header.get("__metadata__") or {}).get("ss_base_model_version", ""))
    if width in _FAMILY_CODE_BY_WIDTH:
        family = _FAMILY_CODE_BY_WIDTH[width]
    elif width == 1024:
        family = "unknown"  # SD 2.x: no Atelier model fits it, and check_compatible says so
    elif base.startswith("sdxl") or any(
        key.startswith(_SDXL_KEY_PREFIXES) or _SECOND_TRANSFORMER_BLOCK.search(key) for key in keys
    ):
        family = "sdxl"
    elif base.startswith("sd_v1") or any(key.startswith("lora_te_") for key in keys):
        family = "sd15"
    else:
        family = "unknown"
    return family, width


class LoraLibrary(FolderLibrary):
    """The LoRAs in a folder, by name: ``<name>.safetensors`` files (kohya, A1111, Civitai) and
    ``<name>/pytorch_lora_weights.safetensors`` folders (diffusers, AutoTrain). A file wins over a folder of
    the same name."""

    field = "lora"
    label = "LoRA"

    def __init__(self, root: str | os.PathLike[str], *, also: Sequence[str | os.PathLike[str]] = ()) -> None:
        super().__init__(root, also=also)
        self._hashes: dict[tuple[str, float, int], str] = {}

    def name_of(self, path: Path) -> str | None:
        if path.is_file() and path.suffix == ".safetensors":
            return path.stem
        if path.is_dir() and (path / DIFFUSERS_LORA_FILE).is_file():
            return path.name
        return None

    def candidates(self, root: Path, name: str) -> list[Path]:
        return [root / f"{name}.safetensors", root / name / DIFFUSERS_LORA_FILE]

    def resolve(self, name: str) -> Path:
        path = super().resolve(name)
        # A folder name leads to the diffusers file inside it.
        return path / DIFFUSERS_LORA_FILE if path.is_dir() else path

    def list(self) -> list[LoraEntry]:
        entries = []
        for name in self.names():
            try:
                entries.append(self.entry(name))
            except AtelierError:
                continue  # not a LoRA (a checkpoint in the same folder); listed elsewhere
        return entries

    def entry(self, name: str) -> LoraEntry:
        path = self.resolve(name)
        family, _ = inspect_lora(path)
        stat = path.stat()
        key = (str(path), stat.st_mtime, stat.st_size)
        if key not in self._hashes:
            self._hashes[key] = lora_sha256(path)
        return LoraEntry(name=name, path=path, family=family, sha256=self._hashes[key])


@dataclass
class AppliedLora:
    entry: LoraEntry
    te_weight: float
    unet_weight: float


def _adapter_name(entry: LoraEntry) -> str:
    # PEFT adapter names become module attribute names: keep them to safe characters.
    return "lora_" + re.sub(r"\W", "_", entry.name) + "_" + entry.sha256[:8]


def check_compatible(entry: LoraEntry, path: Path, model_cross_attention: int) -> None:
    family, width = inspect_lora(path)
    if width is not None and width != model_cross_attention:
        made_for = _FAMILY_BY_WIDTH.get(width, f"cross-attention width {width}")
        model_is = _FAMILY_BY_WIDTH.get(
            model_cross_attention, f"cross-attention width {model_cross_attention}"
        )
        raise AtelierError(
            f"LoRA {entry.name!r} was made for {made_for}, but the model is {model_is}", field="lora"
        )


def apply_loras(pipeline: Any, loaded: dict[str, tuple[str, float]], loras: list[AppliedLora]) -> None:
    """Make exactly ``loras`` active on ``pipeline`` (loading new files as adapters), at their weights.

    ``loaded`` records the adapters already in the pipeline (adapter name -> (path, mtime)) and is updated.
    A UNet prepared for compiling (engine/hotswap.py) never gets another adapter: the UNet parts of the LoRAs
    are copied into its fixed slots, so that switching LoRAs does not recompile it.
    """
    cross_attention = pipeline.unet.config.cross_attention_dim
    slots = hotswap_slots(pipeline)
    if slots is not None:
        for lora in loras:
            check_compatible(lora.entry, lora.entry.path, cross_attention)
        slots.apply(pipeline, loaded, [(_adapter_name(lora.entry), lora) for lora in loras])
        return
    wanted = []
    for lora in loras:
        check_compatible(lora.entry, lora.entry.path, cross_attention)
        name = _adapter_name(lora.entry)
        mtime = lora.entry.path.stat().st_mtime
        if loaded.get(name) != (str(lora.entry.path), mtime):
            if name in loaded:
                pipeline.delete_adapters([name])
            try:
                pipeline.load_lora_weights(str(lora.entry.path), adapter_name=name)
            except (ValueError, KeyError, RuntimeError, json.JSONDecodeError) as exc:
                raise AtelierError(
                    f"LoRA file {lora.entry.path.name} could not be applied: {exc}", field="lora"
                ) from None
            loaded[name] = (str(lora.entry.path), mtime)
        wanted.append((name, lora))
    if not loaded:
        return
    if not wanted:
        pipeline.disable_lora()
        return
    pipeline.enable_lora()
    components = [
        c for c in ("unet", "text_encoder", "text_encoder_2") if getattr(pipeline, c, None) is not None
    ]
    weights = []
    for _, lora in wanted:
        weights.append({c: (lora.unet_weight if c == "unet" else lora.te_weight) for c in components})
    pipeline.set_adapters([name for name, _ in wanted], adapter_weights=weights)
