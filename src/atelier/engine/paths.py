"""What a model path may be: a plain name that stays inside its folder, never a pickle, a readable header.

Light on purpose (no torch): every part of Atelier that takes a model name from a user checks it here first.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from atelier.errors import AtelierError, NotFoundError, UnsafeFileError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth", ".pkl", ".pickle")
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_SAFE_NAME = re.compile(r"^[^/\\\x00]+$")


def check_name(name: str, *, what: str = "model") -> str:
    if not name or not _SAFE_NAME.match(name) or name in (".", "..") or name.startswith("."):
        raise UnsafeFileError(f"invalid {what} name {name!r}: use a plain name without folders", field=what)
    return name


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeFileError(
            f"refusing to load {path.name}: {path.suffix} files are Python pickles, and loading one can run "
            "arbitrary code hidden in it. Convert it to .safetensors with a tool you trust, or download the "
            ".safetensors version of the model."
        )


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header (tensor names, dtypes, shapes, metadata) without loading any weights."""
    refuse_pickle(path)
    try:
        with open(path, "rb") as handle:
            raw_length = handle.read(8)
            if len(raw_length) != 8:
                raise ValueError("file too short")
            (length,) = struct.unpack("<Q", raw_length)
            if length <= 0 or length > MAX_SAFETENSORS_HEADER:
                raise ValueError("implausible header length")
            header = json.loads(handle.read(length))
    except FileNotFoundError:
        raise NotFoundError(f"model file not found: {path}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise AtelierError(f"{path.name} is not a valid .safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise AtelierError(f"{path.name} is not a valid .safetensors file (header is not an object)")
    return header
