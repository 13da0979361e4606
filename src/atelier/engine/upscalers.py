"""Image upscalers by A1111's names: the built-in resamplers, and A1111's extras semantics (scale, size, crop).

Built in: ``Lanczos`` and ``Nearest`` (Pillow), and ``None``, which A1111 also lists: no model, the picture is
brought to the requested size with Lanczos, as A1111's base upscaler does after any model.

Model upscalers (ESRGAN, RealESRGAN, SwinIR through spandrel) are not here: spandrel requires torchvision, which
Atelier does not install (it pulls a second PyTorch build). The listing says so honestly by not listing any.
"""

from __future__ import annotations

from PIL import Image

from atelier.errors import AtelierError

BUILTIN_UPSCALERS: dict[str, Image.Resampling] = {
    "None": Image.Resampling.LANCZOS,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}


def check_upscaler_name(name: str, *, field: str) -> None:
    if name not in BUILTIN_UPSCALERS:
        raise AtelierError(
            f"{field}: unknown upscaler {name!r}; available: {', '.join(BUILTIN_UPSCALERS)}", field=field
        )


def upscale_target(
    size: tuple[int, int], *, scale: float | None = None, to: tuple[int, int] | None = None, crop: bool = True
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(size to resize to, final size): by ``scale``, or to ``to`` (covering it and cropping when ``crop``)."""
    width, height = size
    if to is None:
        assert scale is not None
        target = (max(1, int(width * scale)), max(1, int(height * scale)))
        return target, target
    if not crop:
        return to, to
    cover = max(to[0] / width, to[1] / height)
    return (max(to[0], round(width * cover)), max(to[1], round(height * cover))), to


def upscale(
    image: Image.Image,
    upscaler: str,
    *,
    scale: float | None = None,
    to: tuple[int, int] | None = None,
    crop: bool = True,
    second: str | None = None,
    second_visibility: float = 0.0,
) -> Image.Image:
    """A1111's extras upscale: ``upscaler`` (blended with ``second`` at ``second_visibility``), then a crop."""
    resized_size, final_size = upscale_target(image.size, scale=scale, to=to, crop=crop)
    source = image.convert("RGB") if image.mode not in ("RGB", "RGBA") else image
    result = source.resize(resized_size, BUILTIN_UPSCALERS[upscaler])
    if second and second != "None" and second_visibility > 0:
        other = source.resize(resized_size, BUILTIN_UPSCALERS[second])
        result = Image.blend(result, other, min(1.0, second_visibility))
    if resized_size != final_size:
        left = (resized_size[0] - final_size[0]) // 2
        top = (resized_size[1] - final_size[1]) // 2
        result = result.crop((left, top, left + final_size[0], top + final_size[1]))
    return result
