"""Image upscalers by A1111's names: the built-in resamplers, and A1111's extras semantics (scale, size, crop).

Built in: ``Lanczos`` and ``Nearest`` (Pillow), and ``None``, which A1111 also lists: no model, the picture is
brought to the requested size with Lanczos, as A1111's base upscaler does after any model.

Model upscalers (ESRGAN, RealESRGAN, SwinIR through spandrel) are not here: spandrel requires torchvision, which
Atelier does not install (it pulls a second PyTorch build). The listing says so honestly by not listing any.
"""

from __future__ import annotations

from typing import Any

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


def tile_boxes(size: tuple[int, int], tile: tuple[int, int], overlap: int) -> list[tuple[int, int, int, int]]:
    """Boxes of ``tile`` size covering ``size``, neighbours sharing ``overlap`` pixels, spread evenly (row by row).

    The last tile of a row or column ends exactly at the edge, so every tile has the full size a model expects.
    """

    def starts(length: int, span: int) -> list[int]:
        if length <= span:
            return [0]
        stride = max(1, span - overlap)
        count = -(-(length - overlap) // stride)
        step = (length - span) / (count - 1) if count > 1 else 0
        return [round(index * step) for index in range(count)]

    width, height = size
    tile_width, tile_height = min(tile[0], width), min(tile[1], height)
    return [
        (left, top, left + tile_width, top + tile_height)
        for top in starts(height, tile_height)
        for left in starts(width, tile_width)
    ]


def merge_tiles(
    size: tuple[int, int], tiles: list[tuple[tuple[int, int, int, int], Image.Image]], overlap: int
) -> Image.Image:
    """One picture from processed tiles: where tiles overlap, each fades into its neighbour linearly (no seams)."""
    import numpy as np

    width, height = size
    total = np.zeros((height, width, 3), np.float64)
    weights = np.zeros((height, width, 1), np.float64)
    for (left, top, right, bottom), picture in tiles:
        pixels = np.asarray(picture.convert("RGB").resize((right - left, bottom - top)), np.float64)
        ramp_x = _ramp(right - left, overlap, left > 0, right < width)
        ramp_y = _ramp(bottom - top, overlap, top > 0, bottom < height)
        weight = (ramp_y[:, None] * ramp_x[None, :])[..., None]
        total[top:bottom, left:right] += pixels * weight
        weights[top:bottom, left:right] += weight
    merged = total / np.maximum(weights, 1e-8)
    return Image.fromarray(np.clip(np.round(merged), 0, 255).astype(np.uint8), "RGB")


def _ramp(length: int, overlap: int, fade_in: bool, fade_out: bool) -> Any:
    import numpy as np

    ramp = np.ones(length, np.float64)
    width = min(overlap, length // 2)
    if width > 0:
        rise = (np.arange(width) + 1) / (width + 1)
        if fade_in:
            ramp[:width] = rise
        if fade_out:
            ramp[length - width :] = rise[::-1]
    return ramp
