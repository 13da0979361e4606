"""ControlNet units as sd-webui-controlnet defines them, and the ControlNet models they use.

A :class:`ControlUnit` carries the extension's fields (module, model, weight, guidance start/end, control mode,
resize mode, processor resolution, thresholds, pixel perfect). The engine runs the units with diffusers' own
ControlNet pipelines (a list of ControlNets becomes diffusers' ``MultiControlNetModel``): ``weight`` is
``controlnet_conditioning_scale``, guidance start/end are ``control_guidance_start/end``.

Control modes follow the extension's ``hook.py``, per unit, with forward hooks on the unit's ControlNet:

- "Balanced": the residuals as they are;
- "My prompt is more important": soft injection, residual ``i`` scaled by ``0.825 ** (12 - i)`` (the middle
  block of SD 1.5 keeps full weight, the shallowest layers get a tenth);
- "ControlNet is more important": soft injection, and the residuals reach only the conditional half of the
  classifier-free-guidance batch. diffusers' ``guess_mode=True`` is the same idea, but it applies to every
  ControlNet of a call and scales with ``logspace(-1, 0)``; the hooks keep the extension's numbers per unit.

Where this differs from the extension: SDXL ControlNets give 10 residuals, and the extension pairs them with the
first 10 of its 13 soft-injection scales (so its middle block gets ``0.825 ** 3``); that is kept as is. Guidance
start/end use diffusers' step rule (step ``i`` of ``n`` is controlled when ``start <= i/n`` and
``(i+1)/n <= end``), where the extension tests ``start <= i/n <= end``; ``guidance_end=0`` therefore means no
control at all here. With composable ``AND`` prompts the ControlNet sees the first part's text.

ControlNet models load from a diffusers folder (``config.json`` + safetensors) or a single ``.safetensors`` file
through diffusers' ``ControlNetModel.from_single_file``. Single files take their config from the file's metadata
when Atelier wrote it (the same key as checkpoints, see ``engine/convert.py``), otherwise from the standard SD 1.5
or SDXL ControlNet configs shipped in ``engine/configs``, chosen by the file's cross-attention width.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from PIL import Image

from atelier.engine import preprocessors
from atelier.engine.architectures import config_dir
from atelier.engine.cache import WarmCache
from atelier.engine.library import FolderLibrary
from atelier.engine.paths import PICKLE_SUFFIXES, read_safetensors_header, refuse_pickle
from atelier.errors import AtelierError, NotFoundError
from atelier.files import write_atomic

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
DEFAULT_MAX_UNITS = 3
MAX_WEIGHT = 2.0

# The extension's soft-injection scales, shallowest residual first, middle block last.
_SOFT_INJECTION_SCALES = tuple(0.825 ** float(12 - i) for i in range(13))
_TEXT_WIDTHS = {768: "controlnet-sd15", 2048: "controlnet-sdxl"}
_FAMILY_LABELS = {"sd15": "SD 1.5", "sdxl": "SDXL"}
_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]$")


@dataclass
class ControlUnit:
    """One ControlNet unit. ``image`` may be None in img2img / inpainting: the init image is used, as in A1111."""

    image: Image.Image | None = None
    module: str = "none"
    model: str = ""
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str | int = "Balanced"
    resize_mode: str | int = "Crop and Resize"
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    pixel_perfect: bool = False

    def __post_init__(self) -> None:
        # The API sends modes as names or as the extension's integers; keep one form from here on.
        mode = self.control_mode
        if isinstance(mode, int) and not isinstance(mode, bool) and 0 <= mode < len(CONTROL_MODES):
            self.control_mode = CONTROL_MODES[mode]
        with contextlib.suppress(AtelierError):
            self.resize_mode = preprocessors.resize_mode_name(self.resize_mode)
        with contextlib.suppress(AtelierError):
            self.module = preprocessors.canonical_module(self.module)

    @property
    def active(self) -> bool:
        """Whether any denoising step is controlled (diffusers refuses an empty start..end range)."""
        return self.guidance_end > self.guidance_start

    def validate(self, index: int) -> None:
        """Raise AtelierError naming ``controlnet_units[index].<field>``."""
        prefix = f"controlnet_units[{index}]"

        def fail(name: str, problem: str) -> AtelierError:
            return AtelierError(f"{prefix}.{name} {problem}", field=f"{prefix}.{name}")

        if self.image is not None and not isinstance(self.image, Image.Image):
            raise fail("image", "must be an image")
        if self.module not in preprocessors.MODULES:
            raise fail(
                "module", f"is unknown ({self.module!r}); choose one of {', '.join(preprocessors.MODULES)}"
            )
        if not isinstance(self.model, str) or not self.model.strip() or self.model == "None":
            raise fail("model", "is missing: name the ControlNet model to use")
        for name, low, high in (
            ("weight", 0.0, MAX_WEIGHT),
            ("guidance_start", 0.0, 1.0),
            ("guidance_end", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise fail(name, f"must be a number, got {value!r}")
            if not low <= value <= high:
                raise fail(name, f"must be between {low} and {high}, got {value}")
        if self.guidance_start > self.guidance_end:
            raise fail(
                "guidance_start", f"({self.guidance_start}) is after guidance_end ({self.guidance_end})"
            )
        if self.control_mode not in CONTROL_MODES:
            raise fail(
                "control_mode",
                f"is unknown ({self.control_mode!r}); choose one of {', '.join(CONTROL_MODES)} (or 0-2)",
            )
        if self.resize_mode not in preprocessors.RESIZE_MODES:
            raise fail(
                "resize_mode",
                f"is unknown ({self.resize_mode!r}); choose one of {', '.join(preprocessors.RESIZE_MODES)} (or 0-2)",
            )
        if isinstance(self.processor_res, bool) or not isinstance(self.processor_res, int):
            raise fail("processor_res", f"must be an integer, got {self.processor_res!r}")
        low_res, high_res = preprocessors.PROCESSOR_RES_RANGE
        if self.processor_res != -1 and not low_res <= self.processor_res <= high_res:
            raise fail(
                "processor_res",
                f"must be between {low_res} and {high_res} (or -1 for the default), got {self.processor_res}",
            )
        for name in ("threshold_a", "threshold_b"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise fail(name, f"must be a number, got {value!r}")
            low, high = preprocessors.CANNY_THRESHOLD_RANGE
            if self.module == "canny" and value != -1 and not low <= value <= high:
                raise fail(
                    name,
                    f"must be between {low:g} and {high:g} for canny (or -1 for the default), got {value}",
                )
        if not isinstance(self.pixel_perfect, bool):
            raise fail("pixel_perfect", f"must be true or false, got {self.pixel_perfect!r}")

    def settings(self) -> tuple[int, float, float]:
        """Processor resolution and thresholds with the module's defaults filled in."""
        return preprocessors.resolved_settings(
            self.module, self.processor_res, self.threshold_a, self.threshold_b
        )

    def infotext(self, model_label: str) -> str:
        """The extension's infotext value for this unit (``ControlNetUnit.serialize``)."""
        processor_res, threshold_a, threshold_b = self.settings()
        values = {
            "Module": self.module,
            "Model": model_label,
            "Weight": float(self.weight),
            "Resize Mode": self.resize_mode,
            "Processor Res": processor_res,
            "Threshold A": threshold_a,
            "Threshold B": threshold_b,
            "Guidance Start": float(self.guidance_start),
            "Guidance End": float(self.guidance_end),
            "Pixel Perfect": self.pixel_perfect,
            "Control Mode": self.control_mode,
        }
        return ", ".join(f"{key}: {value}" for key, value in values.items())

    def to_params(self) -> dict[str, Any]:
        """JSON-safe fields (the image left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "image"}

    def control_image(
        self,
        source: Image.Image,
        *,
        width: int,
        height: int,
        crop: tuple[tuple[int, int, int, int], tuple[int, int]] | None = None,
        models_dir: str | os.PathLike[str] | None = None,
        device: str = "cpu",
    ) -> Image.Image:
        """The map the ControlNet gets for a ``width`` x ``height`` generation.

        ``crop`` is ``(region, photo size)`` when inpainting: as in the extension, the control image is first
        fitted to the photo, then cut and resized exactly like the photo, so that map and photo line up.
        """
        if crop is not None:
            from atelier.engine.masks import crop_to_region

            region, photo_size = crop
            fitted = preprocessors.fit_map(preprocessors.to_rgb_array(source), self.resize_mode, *photo_size)
            source = crop_to_region(Image.fromarray(fitted), region, (width, height))
        return preprocessors.preview(
            source,
            self.module,
            width=width,
            height=height,
            resize_mode=self.resize_mode,
            processor_res=self.processor_res,
            threshold_a=self.threshold_a,
            threshold_b=self.threshold_b,
            pixel_perfect=self.pixel_perfect,
            models_dir=models_dir,
            device=device,
        )


# -- ControlNet models ----------------------------------------------------------------------------------------


@dataclass
class LoadedControlNet:
    path: Path
    name: str
    family: str  # "sd15" or "sdxl"
    cross_attention_dim: int
    model: Any  # diffusers ControlNetModel, on the engine's device and dtype
    short_hash: str  # the extension's model hash (A1111's legacy 8-character hash)

    @property
    def label(self) -> str:
        """``name [hash]``, how the extension lists and records models."""
        return f"{self.name} [{self.short_hash}]"


def legacy_hash(path: str | os.PathLike[str]) -> str:
    """A1111's ``sd_models.model_hash``: sha256 of the 64 KiB at offset 1 MiB, 8 characters."""
    path = Path(path)
    if path.is_dir():
        path = _folder_weights(path)
    with open(path, "rb") as handle:
        handle.seek(0x100000)
        return hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]


def _folder_weights(folder: Path) -> Path:
    weights = folder / _WEIGHTS_FILE
    if weights.is_file():
        return weights
    candidates = sorted(folder.glob("*.safetensors"))
    if candidates:
        return candidates[0]
    pickles = [path for path in folder.iterdir() if path.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        refuse_pickle(pickles[0])
    raise AtelierError(f"{folder} holds no .safetensors ControlNet weights")


def controlnet_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The diffusers config of a ControlNet folder or file, read without loading weights."""
    from atelier.engine.convert import CONFIG_METADATA_KEY

    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"ControlNet not found: {path}")
    refuse_pickle(path)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise AtelierError(f"{path} is not a diffusers ControlNet folder (no config.json)")
        config = json.loads(config_file.read_text())
        if "ControlNet" not in str(config.get("_class_name", "")):
            raise AtelierError(f"{path} holds a {config.get('_class_name')}, not a ControlNet")
        _folder_weights(path)
        return config
    if path.suffix.lower() != ".safetensors":
        raise AtelierError(f"{path.name}: expected a .safetensors ControlNet or a diffusers folder")
    header = read_safetensors_header(path)
    embedded = header.get("__metadata__", {}).get(CONFIG_METADATA_KEY)
    if embedded:
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            config = json.loads(embedded).get("config.json")
            if isinstance(config, dict):
                return config
    keys = [key for key in header if key != "__metadata__"]
    if not any("input_hint_block" in key or "controlnet_cond_embedding" in key for key in keys):
        raise AtelierError(f"{path.name} is not a ControlNet (no control-image input layers)")
    width = next((header[key]["shape"][1] for key in keys if key.endswith("attn2.to_k.weight")), None)
    if width not in _TEXT_WIDTHS:
        raise AtelierError(
            f"{path.name} is a ControlNet for text width {width}; Atelier supports SD 1.5 (768) and SDXL (2048)"
        )
    return json.loads((config_dir(_TEXT_WIDTHS[width]) / "config.json").read_text())


def detect_controlnet_architecture(path: str | os.PathLike[str]) -> str:
    """``controlnet-sd15`` or ``controlnet-sdxl``."""
    config = controlnet_config(path)
    return "controlnet-sdxl" if config.get("addition_embed_type") == "text_time" else "controlnet-sd15"


def load_controlnet(
    path: str | os.PathLike[str], *, device: str = "cpu", dtype: Any = None
) -> LoadedControlNet:
    import torch
    from diffusers import ControlNetModel

    path = Path(path)
    config = controlnet_config(path)
    try:
        if path.is_dir():
            model = ControlNetModel.from_pretrained(str(path), use_safetensors=True, local_files_only=True)
        else:
            with tempfile.TemporaryDirectory(prefix="atelier-controlnet-") as config_folder:
                (Path(config_folder) / "config.json").write_text(json.dumps(config))
                model = ControlNetModel.from_single_file(
                    str(path), config=config_folder, local_files_only=True
                )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise AtelierError(f"cannot load ControlNet {path.name}: {str(exc).splitlines()[0]}") from None
    model.to(device=device, dtype=dtype or torch.float32)
    model.eval()
    return LoadedControlNet(
        path=path,
        name=path.stem if path.is_file() else path.name,
        family="sdxl" if config.get("addition_embed_type") == "text_time" else "sd15",
        cross_attention_dim=int(config["cross_attention_dim"]),
        model=model,
        short_hash=legacy_hash(path),
    )


def check_matches_base(net: LoadedControlNet, unet_config: Any, base_name: str, *, field: str) -> None:
    """A ControlNet reads the base UNet's text features and adds to its layers: both must be the same family."""
    base_family = "sdxl" if unet_config.get("addition_embed_type") == "text_time" else "sd15"
    base_width = unet_config["cross_attention_dim"]
    if net.family != base_family or net.cross_attention_dim != base_width:
        raise AtelierError(
            f"ControlNet {net.name} is for {_FAMILY_LABELS[net.family]} (text width {net.cross_attention_dim}), "
            f"but {base_name} is {_FAMILY_LABELS[base_family]} (text width {base_width}); pick a ControlNet made "
            "for the base model",
            field=field,
        )


class ControlNetCache(WarmCache[LoadedControlNet]):
    """ControlNets kept loaded between generations (see :class:`~atelier.engine.cache.WarmCache`)."""

    def __init__(self, *, max_models: int = DEFAULT_MAX_UNITS) -> None:
        super().__init__(load_controlnet, max_models=max_models)


class ControlNetLibrary(FolderLibrary):
    """ControlNets in one folder, by name: ``<root>/<name>/`` (diffusers) or ``<root>/<name>.safetensors``.

    ``name [hash]`` (as the extension lists them), ``name.safetensors`` and any capitalisation also work.
    """

    field = "model"
    label = "ControlNet model"

    def name_of(self, path: Path) -> str | None:
        if (path.is_dir() and (path / "config.json").is_file()) or (
            path.is_file() and path.suffix == ".safetensors"
        ):
            return _name(path)
        return None

    def candidates(self, root: Path, name: str) -> list[Path]:
        exact = [root / name, root / f"{name}.safetensors"]
        others = [path for other, path in self.paths().items() if other.lower() == name.lower()]
        return exact + others

    def list(self) -> list[Path]:
        return list(self.paths().values())

    def model_list(self) -> builtins.list[str]:
        """``name [hash]`` for every ControlNet, as the extension's ``/controlnet/model_list`` gives them."""
        return [f"{name} [{legacy_hash(path)}]" for name, path in self.paths().items()]

    def resolve(self, name: str, *, field: str = "model") -> Path:
        """The ControlNet called ``name``; never outside its folder."""
        plain = _HASH_SUFFIX.sub("", name.strip()) if isinstance(name, str) else ""
        try:
            return super().resolve(plain.removesuffix(".safetensors"))
        except AtelierError as problem:
            raise type(problem)(str(problem), field=field) from None

    def unknown_message(self, name: str) -> str:
        available = ", ".join(self.names()) or "none"
        return f"unknown ControlNet model {name!r}; available in {self.root}: {available}"


def _name(path: Path) -> str:
    return path.stem if path.is_file() else path.name


def save_single_file(controlnet_dir: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """Write a diffusers ControlNet folder as one ``.safetensors`` file that carries its config, atomically."""
    from safetensors.torch import load_file, save_file

    from atelier.engine.convert import CONFIG_METADATA_KEY

    folder, out = Path(controlnet_dir), Path(out_path)
    if out.suffix != ".safetensors":
        raise AtelierError(f"output file {out.name!r} must end in .safetensors", field="out_path")
    config = controlnet_config(folder)
    state_dict = load_file(_folder_weights(folder), device="cpu")
    metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps({"config.json": config})}
    return write_atomic(out, lambda temp: save_file(state_dict, str(temp), metadata=metadata))


# -- running units ----------------------------------------------------------------------------------------------


@dataclass
class ResolvedControl:
    """A unit of a request with its ControlNet loaded; ``index`` is its place in the request (for infotext)."""

    index: int
    unit: ControlUnit
    net: LoadedControlNet


def controlnet_pipeline(base_pipeline: Any, class_name: str, controls: list[ResolvedControl]) -> Any:
    """The base pipeline's components wrapped in a diffusers ControlNet pipeline with these units' ControlNets."""
    import diffusers

    cls = getattr(diffusers, class_name)
    pipeline = cls.from_pipe(base_pipeline, controlnet=[control.net.model for control in controls])
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def pipeline_inputs(
    controls: list[ResolvedControl], images: list[Image.Image], *, image_key: str
) -> dict[str, Any]:
    return {
        image_key: images,
        "controlnet_conditioning_scale": [float(control.unit.weight) for control in controls],
        "control_guidance_start": [float(control.unit.guidance_start) for control in controls],
        "control_guidance_end": [float(control.unit.guidance_end) for control in controls],
    }


@contextlib.contextmanager
def control_modes_attached(controls: list[ResolvedControl], *, cfg: bool) -> Iterator[None]:
    """Apply each unit's control mode to its ControlNet's output while the pipeline runs."""
    modes_by_model: dict[int, tuple[Any, list[str | int]]] = {}
    for control in controls:
        model = control.net.model
        modes_by_model.setdefault(id(model), (model, []))[1].append(control.unit.control_mode)
    handles = [
        model.register_forward_hook(_ControlModeHook(modes, cfg=cfg))
        for model, modes in modes_by_model.values()
        if any(mode != "Balanced" for mode in modes)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _ControlModeHook:
    """Scales one ControlNet's residuals after it ran.

    The same ControlNet can serve several units; diffusers calls the units in order every step, so the hook
    takes their modes in turn.
    """

    def __init__(self, modes: list[str | int], *, cfg: bool) -> None:
        self.modes = modes
        self.cfg = cfg
        self.calls = 0

    def __call__(self, module: Any, args: tuple, output: Any) -> Any:
        import torch

        mode = self.modes[self.calls % len(self.modes)]
        self.calls += 1
        if mode == "Balanced":
            return output
        down, mid = (
            (output[0], output[1])
            if isinstance(output, tuple)
            else (output.down_block_res_samples, output.mid_block_res_sample)
        )
        residuals = [
            residual * scale for residual, scale in zip([*down, mid], _SOFT_INJECTION_SCALES, strict=False)
        ]
        if mode == "ControlNet is more important" and self.cfg:
            # The pipeline batches [uncond, cond]; the unconditional half runs as if there were no ControlNet.
            half = residuals[0].shape[0] // 2
            residuals = [torch.cat([torch.zeros_like(r[:half]), r[half:]]) for r in residuals]
        down_scaled, mid_scaled = residuals[: len(down)], residuals[len(down)]
        if isinstance(output, tuple):
            return (down_scaled, mid_scaled, *output[2:])
        output.down_block_res_samples, output.mid_block_res_sample = tuple(down_scaled), mid_scaled
        return output
