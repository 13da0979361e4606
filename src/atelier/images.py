"""Opening the images people bring: one pixel limit, one kind of error.

Pictures reach Atelier from users' folders (CLI init images, catalogs, training datasets, ad materials), from API
clients as base64 and from storage. Every one of them is opened by :func:`open_image`, so that:

- the pixel count is checked from the header, before any pixel is decoded, so an image bomb costs nothing.
  Pillow's own guard (``Image.MAX_IMAGE_PIXELS``: a warning at 89 Mpx, an error at twice that) is process-wide
  mutable state and too loose for a shared server, so the limit is an argument of each call instead;
- a file that is not an image, is truncated or is damaged becomes one :class:`~atelier.errors.AtelierError` naming
  the field, never a Pillow traceback.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from atelier.errors import AtelierError, NotFoundError

# 64 Mpx: an 8K x 8K photograph. Larger pictures are scans or bombs, not product shots or training images.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024


def open_image(
    source: bytes | str | os.PathLike[str],
    *,
    field: str,
    label: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    load: bool = True,
    orient: bool = False,
) -> Image.Image:
    """Open ``source`` (a file or its bytes) with the pixel limit checked first.

    ``field`` is the setting or request field the image came from; ``label`` is how messages name the image
    (default: the field). With ``load`` false only the header is read, which is enough for the size and format;
    with ``orient`` the EXIF orientation is applied, so the picture stands as the camera's owner saw it.
    """
    label = label or field
    if isinstance(source, bytes):
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = Path(source)
        if not stream.is_file():
            raise NotFoundError(f"{field} not found: {stream}", field=field)
    try:
        image: Image.Image = Image.open(stream)
        try:
            check_pixels(image.width, image.height, max_pixels, label=label, field=field)
            if load or orient:
                image.load()
            if orient:
                image = ImageOps.exif_transpose(image)
        except BaseException:
            image.close()
            raise
    except Image.DecompressionBombError:
        raise AtelierError(f"{label} has more pixels than the limit of {max_pixels}", field=field) from None
    except UnidentifiedImageError:
        raise AtelierError(
            f"{label} is not a readable image (not an image file in a format Pillow reads)",
            field=field,
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise AtelierError(f"{label} is not a readable image ({exc})", field=field) from None
    return image


def check_pixels(width: int, height: int, limit: int, *, label: str, field: str) -> None:
    """Refuse a picture (to open or to make) of more than ``limit`` pixels, naming its size."""
    if width * height > limit:
        raise AtelierError(
            f"{label} is {width}x{height} = {width * height} pixels, over the limit of {limit} pixels",
            field=field,
        )
