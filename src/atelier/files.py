"""Files, the same way in every layer: reading what users write by hand, and writing outputs atomically.

Editors on Windows save UTF-8 with a byte-order mark, and ``tomllib`` refuses the mark as an "invalid
statement" at line 1. Every TOML file Atelier reads goes through :func:`parse_toml`, which drops the mark, so a
file reads the same whether it is a training config, a kohya ``dataset.toml``, an ad spec, a scenes file or an
upload beside a training zip. Problems become one-line :class:`AtelierError` messages naming the file.

Every file Atelier writes goes through :func:`write_atomic` (see its policy).
"""

from __future__ import annotations

import os
import secrets
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atelier.errors import AtelierError, NotFoundError


def parse_toml(data: bytes | str, *, name: str, field: str | None = None) -> dict[str, Any]:
    """Parse TOML text or UTF-8 bytes (with or without a byte-order mark); ``name`` is shown in errors."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise AtelierError(f"{name} is not UTF-8 text", field=field) from None
    try:
        return tomllib.loads(data.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise AtelierError(f"{name} is not valid TOML: {exc}", field=field) from None


def read_toml(path: str | os.PathLike[str], *, what: str, field: str | None = None) -> dict[str, Any]:
    """Read a TOML file; ``what`` names it in errors ("training config not found: ...")."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundError(f"{what} not found: {path}", field=field) from None
    except IsADirectoryError:
        raise AtelierError(f"{what} {path} is a folder, not a TOML file", field=field) from None
    except OSError as exc:
        raise AtelierError(f"cannot read {what} {path}: {exc.strerror or exc}", field=field) from None
    return parse_toml(data, name=path.name, field=field)


# -- atomic writes -----------------------------------------------------------------------------------------------

# Temporary files start with this, so listings, watchers and storage skip them.
TEMP_PREFIX = ".tmp-"


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Have ``write(temp_path)`` write a temporary file beside ``path``, then move it over ``path``.

    One policy for every file Atelier writes, so a reader (a person, a watcher, A1111) never sees half a file:
    - the temporary file is in the same folder (the rename is atomic, never a cross-device copy), is named
      ``.tmp-<random>-<name>`` (hidden, and it keeps the suffix for writers that pick the format from it);
    - it is created with mode 0666 less the umask, as ``open()`` would: 0644 usually, so models and images
      are readable by the web server and teammates (``mkstemp``'s 0600 is not);
    - its data is flushed to disk (fsync) before the rename, and the folder after it, so a power cut leaves
      the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(6)}-{path.name}")
    os.close(os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    usual_mode = stat.S_IMODE(temp_path.stat().st_mode)  # 0666 less this process's umask
    try:
        write(temp_path)
        # Some writers replace the file rather than fill it (safetensors' Rust writer leaves 0600).
        os.chmod(temp_path, usual_mode)
        with open(temp_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    return write_atomic(path, lambda temp: temp.write_bytes(data))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    return write_atomic(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on this platform (Windows): the rename itself is still atomic
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
