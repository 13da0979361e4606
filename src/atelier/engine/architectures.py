"""The model architectures Atelier knows, and the configs shipped for them (no hub access needed)."""

from __future__ import annotations

from pathlib import Path

ARCHITECTURES = ("sd15", "sd15-inpaint", "sdxl", "sdxl-refiner")
SDXL_ARCHITECTURES = ("sdxl", "sdxl-refiner")
CONTROLNET_ARCHITECTURES = ("controlnet-sd15", "controlnet-sdxl")

# Written into tiny random-weight models; every place that shows a model shows this label for them.
DEMO_MARKER = "atelier_demo.json"
DEMO_LABEL = "demo: random weights"

# diffusers' single-file model-type names -> ours.
_DIFFUSERS_MODEL_TYPES = {
    "v1": "sd15",
    "inpainting": "sd15-inpaint",
    "xl_base": "sdxl",
    "xl_refiner": "sdxl-refiner",
}


def config_dir(arch: str) -> Path:
    """Folder of the diffusers-format configs for ``arch`` shipped inside the package."""
    return Path(__file__).parent / "configs" / arch


def from_diffusers_model_type(model_type: str) -> str | None:
    return _DIFFUSERS_MODEL_TYPES.get(model_type)


def base_family(arch: str) -> str:
    """'sd15' or 'sdxl': what LoRAs and ControlNets must match."""
    return "sdxl" if arch in SDXL_ARCHITECTURES else "sd15"
