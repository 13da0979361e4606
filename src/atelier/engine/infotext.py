"""A1111-compatible generation parameters ("infotext"), stored in a PNG ``parameters`` text chunk.

The layout is the one AUTOMATIC1111's web UI writes (``modules/processing.py`` ``create_infotext``) and reads
back (``modules/infotext_utils.py`` ``parse_generation_parameters``), so images made by Atelier paste into A1111
and A1111 images paste into Atelier::

    a red bottle on a marble table
    Negative prompt: blurry, lowres
    Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, Model: sd15

The prompt may span several lines; the negative prompt line is left out when it is empty; the last line holds
``key: value`` pairs in the order given. A value containing a comma, colon or newline is written as a JSON
string (A1111's ``quote``); Atelier also quotes a value that starts and ends with a double quote, which A1111
would otherwise unquote on reading.

Parsing returns what A1111's parser returns, minus its web-UI paste defaults: every value as a string,
``"Prompt"`` and ``"Negative prompt"`` always present, a ``WxH`` value split into ``"<key>-1"`` / ``"<key>-2"``
(``Size: 512x768`` gives ``Size-1 = "512"``, ``Size-2 = "768"``), and the two defaults that describe the
generation itself: a missing ``Clip skip`` means ``"1"`` and a missing ``Schedule type`` means ``"Automatic"``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from atelier.errors import NotFoundError
from atelier.images import open_image

if TYPE_CHECKING:
    from atelier.engine.provenance import Provenance

PARAMETERS_KEY = "parameters"
NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

# A1111's re_param_code: a key of word characters, spaces, '-' or '/', then a JSON string or text up to a comma.
_PARAM_PATTERN = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_IMAGE_SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
_KEY_PATTERN = re.compile(r"\w[\w \-/]+")

# A1111 treats the last line as parameters only when it holds at least this many "key: value" pairs.
_MIN_PARAMS_ON_LAST_LINE = 3

# EXIF UserComment tag inside the Exif IFD: where A1111 stores infotext in JPEG and WebP files.
_EXIF_IFD = 0x8769
_EXIF_USER_COMMENT = 0x9286


def quote(value: object) -> str:
    """A value as A1111 writes it in the parameters line: JSON-quoted when it would break the line apart."""
    text = str(value)
    needs_quoting = any(char in text for char in ",:\n") or (len(text) >= 2 and text[0] == text[-1] == '"')
    return json.dumps(text, ensure_ascii=False) if needs_quoting else text


def _unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def format_infotext(prompt: str, negative_prompt: str, params: dict[str, object]) -> str:
    """The infotext A1111 would write: prompt, ``Negative prompt:`` line if any, then the parameters line.

    Parameters keep their given order and ``None`` values are skipped. Keys are Atelier's own names, so a key
    that the A1111 format cannot carry is a programming error (``ValueError``).
    """
    pairs = []
    for key, value in params.items():
        if value is None:
            continue
        if not _KEY_PATTERN.fullmatch(key):
            raise ValueError(f"infotext key {key!r} must be word characters, spaces, '-' or '/'")
        # A1111 writes a parameter whose value equals its name as the bare name.
        pairs.append(key if key == value else f"{key}: {quote(value)}")

    negative_prompt_text = f"\n{NEGATIVE_PROMPT_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_prompt_text}\n{', '.join(pairs)}".strip()


def parse_infotext(text: str) -> dict[str, object]:
    """Prompt, negative prompt and parameters from an infotext, keyed as A1111's parser keys them."""
    *lines, last_line = text.strip().split("\n")
    if len(_PARAM_PATTERN.findall(last_line)) < _MIN_PARAMS_ON_LAST_LINE:
        lines.append(last_line)
        last_line = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for raw_line in lines:
        line = raw_line.strip()
        if not negative_lines and line.startswith(NEGATIVE_PROMPT_PREFIX):
            negative_lines.append(line[len(NEGATIVE_PROMPT_PREFIX) :].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)

    result: dict[str, object] = {
        "Prompt": "\n".join(prompt_lines),
        "Negative prompt": "\n".join(negative_lines),
    }
    for key, raw_value in _PARAM_PATTERN.findall(last_line):
        value = _unquote(raw_value)
        size = _IMAGE_SIZE_PATTERN.match(value)
        if size:
            result[f"{key}-1"] = size.group(1)
            result[f"{key}-2"] = size.group(2)
        else:
            result[key] = value

    result.setdefault("Clip skip", "1")
    result.setdefault("Schedule type", "Automatic")
    return result


def write_png(
    path: str | os.PathLike[str],
    image: Image.Image,
    infotext: str,
    extra: dict[str, str] | None = None,
    *,
    provenance: Provenance | None = None,
) -> None:
    """Save ``image`` as PNG with ``infotext`` in the ``parameters`` text chunk, atomically.

    ``extra`` adds more text chunks. Text that Latin-1 cannot encode goes into UTF-8 ``iTXt`` chunks, as
    A1111 does, so any prompt survives. The XMP AI disclosure of ``provenance`` is added (default: made from
    a prompt), by the one image encoder, :func:`atelier.engine.provenance.encode_image`.
    """
    from atelier.engine.provenance import GENERATED, Provenance, write_image

    if extra and PARAMETERS_KEY in extra:
        raise ValueError(f"extra text chunk {PARAMETERS_KEY!r} would replace the infotext")
    write_image(
        path, image, provenance or Provenance(GENERATED), output_format="png", infotext=infotext, text=extra
    )


def read_infotext(path_or_image: str | os.PathLike[str] | Image.Image) -> str | None:
    """The infotext stored in an image (PNG text chunk, or EXIF UserComment as A1111 writes JPEG/WebP)."""
    if isinstance(path_or_image, Image.Image):
        return _infotext_of(path_or_image)

    path = Path(path_or_image)
    if not path.is_file():
        raise NotFoundError(f"image file {str(path)!r} does not exist", field="image")
    # Only the header is read: the infotext is in the PNG text chunks or the EXIF block.
    with open_image(path, field="image", label=repr(str(path)), load=False) as image:
        return _infotext_of(image)


def _infotext_of(image: Image.Image) -> str | None:
    text = image.info.get(PARAMETERS_KEY)
    if isinstance(text, str):
        return text
    user_comment = image.getexif().get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT)
    if isinstance(user_comment, bytes):
        return _decode_user_comment(user_comment)
    if isinstance(user_comment, str) and user_comment:
        return user_comment
    return None


def _decode_user_comment(data: bytes) -> str | None:
    """Decode an EXIF UserComment: an 8-byte character-code prefix, then the text."""
    prefix, body = data[:8], data[8:]
    if prefix == b"UNICODE\x00":
        # piexif, which A1111 uses to write it, encodes UNICODE comments as big-endian UTF-16.
        return body.decode("utf-16-be", errors="replace").rstrip("\x00") or None
    if prefix in (b"ASCII\x00\x00\x00", b"\x00" * 8):
        return body.decode("latin-1").rstrip("\x00") or None
    return None
