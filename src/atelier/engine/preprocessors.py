"""ControlNet preprocessors ("modules" in sd-webui-controlnet): a photo in, the control map a ControlNet reads out.

The pipeline is the extension's, step by step, so a map made here matches the one A1111 would feed its ControlNet:

1. the photo is resized so that its short side is the processor resolution (``processor_res``; with "pixel
   perfect" it is derived from the output size instead) and padded to a multiple of 64 with its edge pixels;
2. the module runs (canny thresholds are ``threshold_a`` / ``threshold_b``), the padding is cut off again;
3. the map is brought to the output size by the resize mode: "Just Resize" stretches, "Crop and Resize" scales
   to cover and crops the middle, "Resize and Fill" scales to fit and fills the rest with the border's median
   colour.

Modules without weights: ``none`` (the user uploads a ready map), ``invert`` (black lines on white become white
on black), ``canny`` (OpenCV) and ``lineart_standard``. Modules with weights only run from a local model folder,
never a download: ``<models>/<module>/`` where ``<models>`` is the ``models_dir`` argument or the
``ATELIER_PREPROCESSOR_MODELS`` environment variable. Depth folders hold a transformers depth-estimation model
(DPT / MiDaS or Depth-Anything); ``lineart_realistic`` / ``lineart_coarse`` / ``softedge_hed`` folders hold a
``model.safetensors`` converted from lllyasviel's Annotators (``sk_model.pth``, ``sk_model2.pth``,
``ControlNetHED.pth``). Pickle files are refused.

Differs from the extension: when a binary one-pixel edge map is enlarged, the extension thins the edges again
(its ``lvmin_thin``); here the enlarged map is only re-thresholded.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from atelier.engine.paths import PICKLE_SUFFIXES, refuse_pickle
from atelier.errors import AtelierError, NotFoundError

PREPROCESSOR_MODELS_ENV = "ATELIER_PREPROCESSOR_MODELS"

# What /controlnet/module_list lists; the extension's internal names.
MODULES = (
    "none",
    "invert",
    "canny",
    "lineart_standard",
    "depth_midas",
    "depth_anything",
    "lineart_realistic",
    "lineart_coarse",
    "softedge_hed",
)
# Names the extension's UI and older API clients send for the same modules.
MODULE_ALIASES = {
    "invert (from white bg & black line)": "invert",
    "lineart_standard (from white bg & black line)": "lineart_standard",
    "depth": "depth_midas",
    "lineart": "lineart_realistic",
    "hed": "softedge_hed",
}
# Modules that need a model folder, and what kind of model it holds.
_MODEL_KINDS = {
    "depth_midas": "depth",
    "depth_anything": "depth",
    "lineart_realistic": "lineart",
    "lineart_coarse": "lineart",
    "softedge_hed": "hed",
}
_MODEL_HINTS = {
    "depth": "a transformers depth-estimation model saved with safetensors (e.g. Intel/dpt-hybrid-midas, "
    "LiheYoung/depth-anything-small-hf)",
    "lineart": "model.safetensors converted from lllyasviel/Annotators sk_model.pth (sk_model2.pth for coarse)",
    "hed": "model.safetensors converted from lllyasviel/Annotators ControlNetHED.pth",
}

# The extension's names; index = API integer value.
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
_RESIZE_MODE_ALIASES = {
    "Inner Fit (Scale to Fit)": "Crop and Resize",
    "Scale to Fit (Inner Fit)": "Crop and Resize",
    "Outer Fit (Shrink to Fit)": "Resize and Fill",
    "Envelope (Outer Fit)": "Resize and Fill",
}

DEFAULT_PROCESSOR_RES = 512
# The extension's slider defaults: canny has thresholds, every other module keeps the generic 0.5.
_THRESHOLD_DEFAULTS = {"canny": (100.0, 200.0)}
_GENERIC_THRESHOLD = 0.5
PROCESSOR_RES_RANGE = (64, 2048)
CANNY_THRESHOLD_RANGE = (1.0, 255.0)


def canonical_module(name: str) -> str:
    """The module's internal name; AtelierError for a module Atelier does not have."""
    if isinstance(name, str):
        module = MODULE_ALIASES.get(name, name)
        if module in MODULES:
            return module
    raise AtelierError(
        f"unknown ControlNet module {name!r}; choose one of {', '.join(MODULES)}", field="module"
    )


def resize_mode_name(value: str | int) -> str:
    """A resize mode given by name, old alias or the API's integer (3, "latent upscale", is plain resize)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value == 3:
            return RESIZE_MODES[0]
        if 0 <= value < len(RESIZE_MODES):
            return RESIZE_MODES[value]
    elif isinstance(value, str):
        name = _RESIZE_MODE_ALIASES.get(value, value)
        if name in RESIZE_MODES:
            return name
    raise AtelierError(
        f"unknown resize mode {value!r}; choose one of {', '.join(RESIZE_MODES)} (or 0-2)",
        field="resize_mode",
    )


def needs_model(module: str) -> bool:
    return canonical_module(module) in _MODEL_KINDS


def resolved_settings(
    module: str, processor_res: int, threshold_a: float, threshold_b: float
) -> tuple[int, float, float]:
    """-1 means "the module's default", as in the extension's API."""
    module = canonical_module(module)
    default_a, default_b = _THRESHOLD_DEFAULTS.get(module, (_GENERIC_THRESHOLD, _GENERIC_THRESHOLD))
    return (
        DEFAULT_PROCESSOR_RES if processor_res == -1 else int(processor_res),
        default_a if threshold_a == -1 else float(threshold_a),
        default_b if threshold_b == -1 else float(threshold_b),
    )


def pixel_perfect_resolution(image_size: tuple[int, int], width: int, height: int, resize_mode: str) -> int:
    """The processor resolution at which the map lands on the output pixels 1:1 (the extension's formula)."""
    raw_width, raw_height = image_size
    scale_h, scale_w = height / raw_height, width / raw_width
    scale = min(scale_h, scale_w) if resize_mode == "Resize and Fill" else max(scale_h, scale_w)
    return int(np.round(scale * min(raw_width, raw_height)))


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8; transparency is flattened onto white, where line art is drawn."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "F"):
        # 16-bit and float maps (depth exports) are stretched to 8 bits, not clipped to white.
        values = np.asarray(image, dtype=np.float64)
        values = values - values.min()
        peak = values.max()
        gray = (values / peak * 255.0 if peak > 0 else values).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


# -- running a module ----------------------------------------------------------------------------------------


def preprocess(
    image: Image.Image,
    module: str,
    *,
    processor_res: int = -1,
    threshold_a: float = -1,
    threshold_b: float = -1,
    models_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """The module's map (HxWx3 uint8) at processor resolution, before any resize to the output size."""
    module = canonical_module(module)
    resolution, low, high = resolved_settings(module, processor_res, threshold_a, threshold_b)
    pixels = to_rgb_array(image)
    if module == "none":
        return pixels
    if module == "invert":
        return 255 - pixels
    if module == "canny":
        import cv2

        return _at_resolution(pixels, resolution, lambda padded: cv2.Canny(padded, low, high))
    if module == "lineart_standard":
        return _at_resolution(pixels, resolution, _lineart_standard)
    folder = model_folder(module, models_dir)
    if _MODEL_KINDS[module] == "depth":
        estimator = _load_depth_estimator(str(folder), device)
        return _at_resolution(pixels, resolution, lambda padded: _estimate_depth(estimator, padded))
    if _MODEL_KINDS[module] == "lineart":
        network = _load_network(str(folder / "model.safetensors"), "lineart", device)
        return _at_resolution(pixels, resolution, lambda padded: 255 - _run_lineart(network, padded))
    network = _load_network(str(folder / "model.safetensors"), "hed", device)
    return _at_resolution(pixels, resolution, lambda padded: _run_hed(network, padded))


def _at_resolution(pixels: np.ndarray, resolution: int, detect: Any) -> np.ndarray:
    """Resize the short side to ``resolution``, pad to a multiple of 64 with edge pixels, detect, cut the pad."""
    import cv2

    height, width = pixels.shape[:2]
    scale = resolution / min(height, width)
    target_h, target_w = int(np.round(height * scale)), int(np.round(width * scale))
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    resized = cv2.resize(pixels, (target_w, target_h), interpolation=interpolation)
    pad_h, pad_w = -target_h % 64, -target_w % 64
    padded = np.ascontiguousarray(np.pad(resized, [[0, pad_h], [0, pad_w], [0, 0]], mode="edge"))
    detected = np.asarray(detect(padded))[:target_h, :target_w]
    return _three_channels(detected)


def _three_channels(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[:, :, :3])


def _lineart_standard(pixels: np.ndarray) -> np.ndarray:
    """Lines are where a pixel is darker than its blurred surroundings, scaled by the typical line strength."""
    import cv2

    image = pixels.astype(np.float32)
    darker_by = np.min(cv2.GaussianBlur(image, (0, 0), 6.0) - image, axis=2).clip(0, 255)
    strong = darker_by[darker_by > 8]
    typical = max(16.0, float(np.median(strong))) if strong.size else 16.0
    return (darker_by / typical * 127).clip(0, 255).astype(np.uint8)


# -- the output size -----------------------------------------------------------------------------------------


def fit_map(detected: np.ndarray, resize_mode: str | int, width: int, height: int) -> np.ndarray:
    """Bring a map to ``width`` x ``height`` by the extension's resize mode."""
    resize_mode = resize_mode_name(resize_mode)
    if resize_mode == "Just Resize":
        return _resize_map(detected, width, height)
    old_h, old_w = detected.shape[:2]
    if resize_mode == "Resize and Fill":
        scale = min(height / old_h, width / old_w)
        border = np.concatenate([detected[0], detected[-1], detected[:, 0], detected[:, -1]])
        canvas = np.tile(np.median(border, axis=0).astype(np.uint8)[None, None], (height, width, 1))
        fitted = _resize_map(detected, int(np.round(old_w * scale)), int(np.round(old_h * scale)))
        top, left = max(0, (height - fitted.shape[0]) // 2), max(0, (width - fitted.shape[1]) // 2)
        canvas[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted[:height, :width]
        return canvas
    scale = max(height / old_h, width / old_w)
    covering = _resize_map(detected, int(np.round(old_w * scale)), int(np.round(old_h * scale)))
    top, left = max(0, (covering.shape[0] - height) // 2), max(0, (covering.shape[1] - width) // 2)
    return np.ascontiguousarray(covering[top : top + height, left : left + width])


def _resize_map(detected: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize that keeps maps crisp: few-colour maps (segments, edges) never get in-between colours."""
    import cv2

    if detected.shape[:2] == (height, width):
        return detected
    rgb = detected.reshape(-1, 3).astype(np.uint32)
    colours = len(np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]))
    binary = colours == 2 and detected.min() < 16 and detected.max() > 240
    if 2 < colours < 200:
        interpolation = cv2.INTER_NEAREST
    elif width * height < detected.shape[0] * detected.shape[1]:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    resized = cv2.resize(detected, (width, height), interpolation=interpolation)
    if binary:
        gray = resized.astype(np.float32).mean(axis=2).clip(0, 255).astype(np.uint8)
        _, gray = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        resized = np.stack([gray] * 3, axis=2)
    return resized


def preview(
    image: Image.Image,
    module: str = "none",
    *,
    width: int,
    height: int,
    resize_mode: str | int = "Crop and Resize",
    processor_res: int = -1,
    threshold_a: float = -1,
    threshold_b: float = -1,
    pixel_perfect: bool = False,
    models_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> Image.Image:
    """The control map exactly as the ControlNet will see it: preprocessed, then fitted to the output size."""
    resize_mode = resize_mode_name(resize_mode)
    if pixel_perfect:
        processor_res = pixel_perfect_resolution(image.size, width, height, resize_mode)
    detected = preprocess(
        image,
        module,
        processor_res=processor_res,
        threshold_a=threshold_a,
        threshold_b=threshold_b,
        models_dir=models_dir,
        device=device,
    )
    return Image.fromarray(fit_map(detected, resize_mode, width, height))


# -- modules with weights --------------------------------------------------------------------------------------


def model_folder(module: str, models_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding ``module``'s model, or an AtelierError that says how to provide one."""
    module = canonical_module(module)
    hint = _MODEL_HINTS[_MODEL_KINDS[module]]
    root = models_dir or os.environ.get(PREPROCESSOR_MODELS_ENV)
    if not root:
        raise AtelierError(
            f"the {module} preprocessor needs a local model: set {PREPROCESSOR_MODELS_ENV} (or pass "
            f"--preprocessor-models) to a folder with a '{module}' folder holding {hint}; or upload a ready map "
            "with module 'none'",
            field="module",
        )
    folder = Path(root) / module
    if not folder.is_dir():
        raise NotFoundError(
            f"no model for the {module} preprocessor: expected {folder} holding {hint}", field="module"
        )
    files = [path for path in folder.iterdir() if path.is_file()]
    if not any(path.suffix == ".safetensors" for path in files):
        pickles = [path for path in files if path.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            refuse_pickle(pickles[0])
        raise AtelierError(f"{folder} holds no .safetensors weights; it should hold {hint}", field="module")
    return folder


@functools.lru_cache(maxsize=2)
def _load_depth_estimator(folder: str, device: str) -> Any:
    from transformers import pipeline

    try:
        return pipeline(
            "depth-estimation", model=folder, device=device, model_kwargs={"use_safetensors": True}
        )
    except (OSError, ValueError, KeyError) as exc:
        raise AtelierError(f"cannot load the depth model in {folder}: {exc}", field="module") from None


def _estimate_depth(estimator: Any, pixels: np.ndarray) -> np.ndarray:
    """Relative depth (near = bright), stretched to 0..255 like the extension's MiDaS / Depth-Anything maps."""
    import torch

    with torch.inference_mode():
        predicted = estimator(Image.fromarray(pixels))["predicted_depth"]
    predicted = predicted.reshape(1, 1, *predicted.shape[-2:]).float()
    resized = torch.nn.functional.interpolate(
        predicted, size=pixels.shape[:2], mode="bicubic", align_corners=False
    )
    depth = resized[0, 0].cpu().numpy()
    depth = depth - depth.min()
    peak = float(depth.max())
    if peak > 0:  # a flat prediction stays all black
        depth = depth / peak
    return (depth * 255.0).clip(0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=2)
def _load_network(weights: str, kind: str, device: str) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    network = _lineart_network() if kind == "lineart" else _hed_network()
    try:
        network.load_state_dict(load_file(weights, device="cpu"))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise AtelierError(
            f"{weights} does not hold {_MODEL_HINTS[kind]}: {str(exc).splitlines()[0]}", field="module"
        ) from None
    return network.to(device).eval()


def _lineart_network() -> Any:
    """The informative-drawings generator behind the extension's lineart modules (3 residual blocks)."""
    from torch import nn

    def residual_block() -> nn.Module:
        block = nn.Module()
        block.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(256, 256, 3),
            nn.InstanceNorm2d(256),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(256, 256, 3),
            nn.InstanceNorm2d(256),
        )
        return block

    network = nn.Module()
    network.model0 = nn.Sequential(
        nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), nn.InstanceNorm2d(64), nn.ReLU()
    )
    network.model1 = nn.Sequential(
        nn.Conv2d(64, 128, 3, stride=2, padding=1),
        nn.InstanceNorm2d(128),
        nn.ReLU(),
        nn.Conv2d(128, 256, 3, stride=2, padding=1),
        nn.InstanceNorm2d(256),
        nn.ReLU(),
    )
    network.model2 = nn.Sequential(*[residual_block() for _ in range(3)])
    network.model3 = nn.Sequential(
        nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1),
        nn.InstanceNorm2d(128),
        nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1),
        nn.InstanceNorm2d(64),
        nn.ReLU(),
    )
    network.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())
    return network


def _run_lineart(network: Any, pixels: np.ndarray) -> np.ndarray:
    """Dark lines on white, as the generator draws them (the caller inverts)."""
    import torch

    device = next(network.parameters()).device
    with torch.inference_mode():
        x = torch.from_numpy(pixels).float().to(device).permute(2, 0, 1)[None] / 255.0
        h = network.model1(network.model0(x))
        for block in network.model2:
            h = h + block.conv_block(h)
        lines = network.model4(network.model3(h))[0, 0]
    return (lines.cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)


_HED_BLOCKS = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))


def _hed_network() -> Any:
    """lllyasviel's Apache-2 HED: five VGG-like stages, each with a 1-channel edge projection."""
    import torch
    from torch import nn

    network = nn.Module()
    network.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
    for number, (channels_in, channels_out, convs) in enumerate(_HED_BLOCKS, start=1):
        block = nn.Module()
        block.convs = nn.Sequential(
            *[
                nn.Conv2d(channels_in if i == 0 else channels_out, channels_out, 3, padding=1)
                for i in range(convs)
            ]
        )
        block.projection = nn.Conv2d(channels_out, 1, 1)
        setattr(network, f"block{number}", block)
    return network


def _run_hed(network: Any, pixels: np.ndarray) -> np.ndarray:
    """Soft edges: the stages' projections, upsampled, averaged, through a sigmoid."""
    import cv2
    import torch

    height, width = pixels.shape[:2]
    device = network.norm.device
    projections = []
    with torch.inference_mode():
        h = torch.from_numpy(pixels).float().to(device).permute(2, 0, 1)[None] - network.norm
        for number in range(1, len(_HED_BLOCKS) + 1):
            block = getattr(network, f"block{number}")
            if number > 1:
                h = torch.nn.functional.max_pool2d(h, kernel_size=2, stride=2)
            for conv in block.convs:
                h = torch.relu(conv(h))
            projections.append(block.projection(h)[0, 0].float().cpu().numpy())
    upsampled = [cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in projections]
    edges = 1.0 / (1.0 + np.exp(-np.mean(np.stack(upsampled, axis=2), axis=2).astype(np.float64)))
    return (edges * 255.0).clip(0, 255).astype(np.uint8)
