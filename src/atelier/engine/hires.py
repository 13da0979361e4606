"""Hires fix, as A1111 does it: generate at the model's size, upscale, then denoise again at the final size.

A model trained at 512 px (SD 1.5) or 1024 px (SDXL) composes badly when asked for a larger picture directly:
subjects repeat, products are duplicated. The hires fix keeps the composition of a first pass at the native size
and adds the detail in a second, img2img pass at the final size (``denoising_strength`` of it re-noised), which
is how product photos reach print and e-commerce sizes.

Upscalers, by A1111's names:

- ``Latent`` and its variants resize the first pass's latents (no decode and re-encode; needs a strength of
  about 0.5 or more, as in A1111, or the result stays soft);
- ``Lanczos``, ``Nearest`` and ``None`` resize the decoded picture, which the second pass encodes again.

The final size is ``hr_resize_x`` x ``hr_resize_y`` when given (one of them alone keeps the aspect ratio), else the
first pass's size times ``hr_scale``; either way rounded down to a multiple of 8, as the latents need.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from atelier.engine.upscalers import BUILTIN_UPSCALERS
from atelier.errors import AtelierError

# A1111's latent upscale modes (shared.latent_upscale_modes): torch interpolation mode and antialiasing.
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# The picture upscalers of engine/upscalers.py ("None": a plain Lanczos resize, as in A1111).
IMAGE_UPSCALERS = BUILTIN_UPSCALERS
HIRES_UPSCALERS = (*LATENT_UPSCALE_MODES, *IMAGE_UPSCALERS)


def is_latent_upscaler(name: str) -> bool:
    return name in LATENT_UPSCALE_MODES


def hires_size(width: int, height: int, *, scale: float, resize_x: int, resize_y: int) -> tuple[int, int]:
    """The second pass's size: the resize target (aspect kept when one side is 0) or the scaled first pass."""
    if resize_x or resize_y:
        target_x = resize_x or round(resize_y * width / height)
        target_y = resize_y or round(resize_x * height / width)
    else:
        target_x, target_y = int(width * scale), int(height * scale)
    return target_x // 8 * 8, target_y // 8 * 8


def check_upscaler(name: str, *, field: str = "hr_upscaler") -> None:
    if name not in HIRES_UPSCALERS:
        raise AtelierError(f"{field} must be one of {', '.join(HIRES_UPSCALERS)}, got {name!r}", field=field)


def upscale_latents(latents: Any, name: str, size: tuple[int, int]) -> Any:
    """Latents resized to ``size`` (pixels) with the named A1111 latent mode."""
    import torch.nn.functional as F

    mode, antialias = LATENT_UPSCALE_MODES[name]
    target = (size[1] // 8, size[0] // 8)
    if mode in ("nearest", "nearest-exact"):
        return F.interpolate(latents, size=target, mode=mode)
    return F.interpolate(latents, size=target, mode=mode, antialias=antialias)


def upscale_images(images: list[Image.Image], name: str, size: tuple[int, int]) -> list[Image.Image]:
    """Pictures resized to ``size`` with the named image upscaler."""
    return [image.convert("RGB").resize(size, IMAGE_UPSCALERS[name]) for image in images]


def second_pass(
    pipeline: Any,
    first: Any,
    *,
    upscaler: str,
    size: tuple[int, int],
    conditioning_kwargs: dict[str, Any],
    strength: float,
    steps: int,
    cfg_scale: float,
    seeds: list[int],
    callback: Any,
    tensor_inputs: list[str],
) -> list[Image.Image]:
    """Upscale the first pass (latents or pictures, by ``upscaler``) and denoise it again at ``size``.

    ``pipeline`` is the model's img2img pipeline with its scheduler set; each image keeps its own seed, so a batch
    gives the same pictures as the same seeds one by one.
    """
    import torch

    if is_latent_upscaler(upscaler):
        image: Any = upscale_latents(first, upscaler, size)
        count = image.shape[0]
    else:
        image = upscale_images(first, upscaler, size)
        count = len(image)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    return pipeline(
        **conditioning_kwargs,
        image=image,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=cfg_scale,
        num_images_per_prompt=count,
        generator=generators,
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=tensor_inputs,
        output_type="pil",
    ).images


def hires_infotext(request: Any) -> dict[str, Any]:
    """The hires fields of A1111's infotext (``processing.StableDiffusionProcessingTxt2Img``), in its order."""
    params: dict[str, Any] = {}
    if request.hr_resize_x or request.hr_resize_y:
        width, height = request.hires_size()
        params["Hires resize"] = f"{width}x{height}"
    else:
        params["Hires upscale"] = request.hr_scale
    if request.hr_second_pass_steps:
        params["Hires steps"] = request.hr_second_pass_steps
    params["Hires upscaler"] = request.hr_upscaler
    if request.hr_sampler:
        params["Hires sampler"] = request.hr_sampler
    if request.hr_prompt:
        params["Hires prompt"] = request.hr_prompt
    if request.hr_negative_prompt:
        params["Hires negative prompt"] = request.hr_negative_prompt
    return params
