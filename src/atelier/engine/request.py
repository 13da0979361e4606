"""What a user asks the engine for, validated once, in A1111's vocabulary."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from typing import Any

from PIL import Image

from atelier.engine.controlnet import DEFAULT_MAX_UNITS, ControlUnit
from atelier.engine.hires import check_upscaler, hires_size
from atelier.errors import AtelierError

MAX_SIDE = 4096
MAX_BATCH = 64
INPAINTING_FILL_MODES = (
    "fill",
    "original",
    "latent noise",
    "latent nothing",
)  # A1111's order: index = API value


@dataclass
class GenerationRequest:
    """One txt2img / img2img / inpaint request. Images are PIL images; everything else plain values."""

    prompt: str
    negative_prompt: str = ""
    model: str | None = None
    sampler: str = "Euler a"
    schedule_type: str | None = None
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1
    width: int = 512
    height: int = 512
    batch_size: int = 1
    batch_count: int = 1
    clip_skip: int = 1
    # img2img / inpaint
    init_image: Image.Image | None = None
    denoising_strength: float = 0.75
    mask: Image.Image | None = None
    mask_blur: int = 4
    inpaint_only_masked: bool = False
    inpaint_padding: int = 32
    inpainting_fill: str = "original"
    mask_invert: bool = False
    # SDXL refiner, second stage
    refiner: str | None = None
    refiner_prompt: str | None = None
    refiner_negative_prompt: str | None = None
    refiner_switch_at: float = 0.8
    # External VAE (A1111's sd_vae): a name in the engine's VAE folder; None keeps the checkpoint's own
    vae: str | None = None
    # Seamless tiling: circular padding in the UNet and VAE (engine/tiling.py)
    tiling: bool = False
    # "Fast" step-caching speed-ups with a small quality cost: "off", "deepcache" or "tome" (engine/fast.py)
    fast: str = "off"
    # Hires fix (txt2img): a second, img2img pass at the upscaled size, with denoising_strength (engine/hires.py)
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0  # 0: as many as the first pass
    hr_sampler: str | None = None  # None: the first pass's sampler
    hr_prompt: str | None = None  # None: the prompt
    hr_negative_prompt: str | None = None
    # ControlNet units (sd-webui-controlnet's fields), applied together
    controlnet_units: list[ControlUnit] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        if self.mask is not None:
            return "inpaint"
        if self.init_image is not None:
            return "img2img"
        return "txt2img"

    def validate(self, *, max_controlnet_units: int = DEFAULT_MAX_UNITS) -> None:
        """Raise AtelierError naming the first bad field."""
        _int_range("steps", self.steps, 1, 500)
        _int_range("width", self.width, 64, MAX_SIDE)
        _int_range("height", self.height, 64, MAX_SIDE)
        for name in ("width", "height"):
            if getattr(self, name) % 8:
                raise AtelierError(f"{name} must be a multiple of 8, got {getattr(self, name)}", field=name)
        _int_range("batch_size", self.batch_size, 1, MAX_BATCH)
        _int_range("batch_count", self.batch_count, 1, 1000)
        _int_range("clip_skip", self.clip_skip, 1, 12)
        _int_range("mask_blur", self.mask_blur, 0, 64)
        _int_range("inpaint_padding", self.inpaint_padding, 0, 1024)
        _int_range("seed", self.seed, -1, 2**32 - 1)
        _float_range("cfg_scale", self.cfg_scale, 0.0, 100.0)
        _float_range("denoising_strength", self.denoising_strength, 0.0, 1.0)
        _float_range("refiner_switch_at", self.refiner_switch_at, 0.0, 1.0)
        from atelier.engine.fast import check_fast_mode

        check_fast_mode(self.fast)
        if self.inpainting_fill not in INPAINTING_FILL_MODES:
            raise AtelierError(
                f"inpainting_fill must be one of {', '.join(INPAINTING_FILL_MODES)}, got {self.inpainting_fill!r}",
                field="inpainting_fill",
            )
        if self.mask is not None and self.init_image is None:
            raise AtelierError("a mask needs an init image to inpaint", field="mask")
        if self.mask is not None and self.init_image is not None and self.mask.size != self.init_image.size:
            raise AtelierError(
                f"mask size {self.mask.size[0]}x{self.mask.size[1]} differs from image size "
                f"{self.init_image.size[0]}x{self.init_image.size[1]}",
                field="mask",
            )
        if self.mode != "txt2img" and int(self.steps * self.denoising_strength) < 1:
            raise AtelierError(
                f"denoising_strength {self.denoising_strength} with {self.steps} steps leaves no step to run; "
                "raise the strength or the steps",
                field="denoising_strength",
            )
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise AtelierError("prompt and negative prompt must be text", field="prompt")
        self._validate_controlnet_units(max_controlnet_units)
        if self.enable_hr:
            self._validate_hires()

    def _validate_hires(self) -> None:
        if self.mode != "txt2img":
            raise AtelierError(
                "hires fix is for txt2img; img2img works at its own size already", field="enable_hr"
            )
        if self.refiner:
            raise AtelierError(
                "hires fix cannot be combined with a refiner yet; choose one", field="enable_hr"
            )
        if self.controlnet_units:
            raise AtelierError(
                "hires fix cannot be combined with ControlNet yet; choose one", field="enable_hr"
            )
        _float_range("hr_scale", self.hr_scale, 1.0, 4.0)
        for name in ("hr_resize_x", "hr_resize_y"):
            value = getattr(self, name)
            _int_range(name, value, 0, MAX_SIDE)
            if 0 < value < 64:
                raise AtelierError(f"{name} must be 0 (use hr_scale) or at least 64, got {value}", field=name)
        check_upscaler(self.hr_upscaler)
        _int_range("hr_second_pass_steps", self.hr_second_pass_steps, 0, 500)
        width, height = self.hires_size()
        for name, value in (("width", width), ("height", height)):
            if not 64 <= value <= MAX_SIDE:
                raise AtelierError(
                    f"hires fix would make the {name} {value}; it must be between 64 and {MAX_SIDE}",
                    field="hr_scale",
                )
        if int(self.hires_steps() * self.denoising_strength) < 1:
            raise AtelierError(
                f"denoising_strength {self.denoising_strength} leaves the hires pass no step to run",
                field="denoising_strength",
            )

    def hires_size(self) -> tuple[int, int]:
        """The final size of a hires-fix generation (the first pass is width x height)."""
        return hires_size(
            self.width, self.height, scale=self.hr_scale, resize_x=self.hr_resize_x, resize_y=self.hr_resize_y
        )

    def hires_steps(self) -> int:
        return self.hr_second_pass_steps or self.steps

    def output_size(self) -> tuple[int, int]:
        """The size of the images this request makes."""
        return self.hires_size() if self.enable_hr else (self.width, self.height)

    def _validate_controlnet_units(self, max_units: int) -> None:
        if not isinstance(self.controlnet_units, list):
            raise AtelierError("controlnet_units must be a list of units", field="controlnet_units")
        if len(self.controlnet_units) > max_units:
            raise AtelierError(
                f"{len(self.controlnet_units)} ControlNet units given; at most {max_units} are allowed",
                field="controlnet_units",
            )
        for index, unit in enumerate(self.controlnet_units):
            if not isinstance(unit, ControlUnit):
                raise AtelierError(
                    f"controlnet_units[{index}] is not a ControlNet unit", field="controlnet_units"
                )
            unit.validate(index)
            if unit.image is None and self.init_image is None:
                raise AtelierError(
                    f"controlnet_units[{index}].image is missing: txt2img needs a control image for every unit",
                    field=f"controlnet_units[{index}].image",
                )
        if (
            self.controlnet_units
            and self.mode == "inpaint"
            and self.inpainting_fill in ("latent noise", "latent nothing")
        ):
            raise AtelierError(
                f"masked content {self.inpainting_fill!r} cannot be combined with ControlNet; use 'original' or 'fill'",
                field="inpainting_fill",
            )

    def resolved_seed(self) -> int:
        """Seed -1 means random, as in A1111."""
        return self.seed if self.seed != -1 else random.randrange(2**32 - 1)

    def to_params(self) -> dict[str, Any]:
        """JSON-safe parameters (images left out) for sidecars and job payloads."""
        skipped = {"init_image", "mask"}
        params = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skipped}
        params["controlnet_units"] = [unit.to_params() for unit in self.controlnet_units]
        return params


def _int_range(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AtelierError(f"{name} must be an integer, got {value!r}", field=name)
    if not low <= value <= high:
        raise AtelierError(f"{name} must be between {low} and {high}, got {value}", field=name)


def _float_range(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AtelierError(f"{name} must be a number, got {value!r}", field=name)
    if not low <= value <= high:
        raise AtelierError(f"{name} must be between {low} and {high}, got {value}", field=name)
