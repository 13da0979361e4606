"""Safe extraction of uploaded training archives (``training_data.zip``).

An uploaded zip is untrusted: its entry names may point outside the destination (``../``, absolute paths, drive
letters, ``..\\`` written with Windows separators), it may carry symlinks, and its headers may understate how much
data it expands to. :func:`extract_zip` checks every entry before writing anything, counts bytes while it streams
(headers can lie), and extracts into a temporary sibling folder that is renamed into place only when everything
succeeded, so a refused archive leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from atelier.errors import AtelierError, UnsafeFileError

DEFAULT_MAX_TOTAL_BYTES = 2 * 1024**3
DEFAULT_MAX_FILES = 20_000
# Images barely compress, and deflate itself tops out near 1032:1; a large entry claiming more than this is
# either a bomb or something that has no place in a training set.
DEFAULT_MAX_RATIO = 200
# Small files (captions, tiny PNGs of flat colour) legitimately reach high ratios, so the ratio check only
# applies above this declared size.
_RATIO_CHECK_MIN_BYTES = 1024**2
_CHUNK_BYTES = 1024**2
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class _Entry:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]
    is_dir: bool


def extract_zip(
    zip_path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> Path:
    """Extract ``zip_path`` into ``dest_dir`` (created; it must not exist yet or be empty) and return it.

    Raises :class:`UnsafeFileError` for entries that escape the folder, links or device files, and archives that
    expand beyond ``max_total_bytes`` or hold more than ``max_files`` entries; :class:`AtelierError` for a file
    that is not a readable zip. ``__MACOSX/`` and dotfiles (``.DS_Store``, ``._photo.png``) are skipped.
    """
    source = Path(zip_path)
    dest = Path(dest_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise AtelierError(
            f"cannot extract {source.name}: {dest} already exists and is not empty", field="dest_dir"
        )

    with _open_archive(source) as archive:
        entries = _checked_entries(archive, source.name, max_total_bytes, max_files, max_ratio)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
        try:
            _write_entries(archive, entries, staging, source.name, max_total_bytes)
            if dest.exists():
                dest.rmdir()  # verified empty above; Windows cannot rename onto an existing folder
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return dest


def check_zip(
    zip_path: str | os.PathLike[str],
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> list[str]:
    """Check an archive exactly as :func:`extract_zip` would, writing nothing; return its files' paths.

    Every entry is read through (so a CRC error or a header that lies about sizes is found now, when the
    archive arrives, rather than in a worker later). Ignored entries (``__MACOSX/``, dotfiles) are left out.
    """
    source = Path(zip_path)
    with _open_archive(source) as archive:
        entries = _checked_entries(archive, source.name, max_total_bytes, max_files, max_ratio)
        total = 0
        for entry in entries:
            if not entry.is_dir:
                total = _stream_entry(archive, entry, None, source.name, total, max_total_bytes)
    return ["/".join(entry.parts) for entry in entries if not entry.is_dir]


def _open_archive(source: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except FileNotFoundError as exc:
        raise AtelierError(f"archive not found: {source.name}", field="zip_path") from exc
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
        raise AtelierError(f"{source.name} is not a valid zip archive ({exc})", field="zip_path") from exc
    except OSError as exc:
        raise AtelierError(f"cannot read {source.name}: {exc.strerror or exc}", field="zip_path") from exc


def _checked_entries(
    archive: zipfile.ZipFile, archive_name: str, max_total_bytes: int, max_files: int, max_ratio: float
) -> list[_Entry]:
    infos = archive.infolist()
    if len(infos) > max_files:
        raise UnsafeFileError(
            f"{archive_name} holds {len(infos)} entries, more than the limit of {max_files}", field="zip_path"
        )

    entries: list[_Entry] = []
    seen: set[tuple[str, ...]] = set()
    declared_total = 0
    for info in infos:
        parts = _safe_parts(info.filename, archive_name)
        _refuse_special_file(info, archive_name)
        if info.flag_bits & 0x1:
            raise AtelierError(
                f"{archive_name}: entry {info.filename!r} is encrypted; upload an archive without a password",
                field="zip_path",
            )
        if _is_ignored(parts):
            continue

        is_dir = info.is_dir()
        if not is_dir:
            if parts in seen:
                raise UnsafeFileError(
                    f"{archive_name}: entry {info.filename!r} appears twice", field="zip_path"
                )
            seen.add(parts)
            declared_total += info.file_size
            if declared_total > max_total_bytes:
                raise UnsafeFileError(
                    f"{archive_name} expands to more than {max_total_bytes} bytes (at entry {info.filename!r})",
                    field="zip_path",
                )
            if info.file_size > _RATIO_CHECK_MIN_BYTES:
                ratio = info.file_size / max(info.compress_size, 1)
                if ratio > max_ratio:
                    raise UnsafeFileError(
                        f"{archive_name}: entry {info.filename!r} claims a compression ratio of {ratio:.0f}:1 "
                        f"(limit {max_ratio:.0f}:1), which looks like a zip bomb",
                        field="zip_path",
                    )
        entries.append(_Entry(info, parts, is_dir))
    return entries


def _safe_parts(name: str, archive_name: str) -> tuple[str, ...]:
    """Split an entry name into path components, refusing anything that could land outside the destination."""
    if "\x00" in name:
        raise UnsafeFileError(
            f"{archive_name}: entry {name!r} has a NUL character in its name", field="zip_path"
        )
    # Windows tools sometimes write backslash separators; treating them as separators means "..\\x" is caught
    # by the ".." check below instead of becoming a literal file name here and a traversal elsewhere.
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or _DRIVE_LETTER.match(normalized):
        raise UnsafeFileError(f"{archive_name}: entry {name!r} has an absolute path", field="zip_path")
    parts = tuple(part for part in PurePosixPath(normalized).parts if part not in ("", "."))
    if any(part == ".." for part in parts):
        raise UnsafeFileError(
            f"{archive_name}: entry {name!r} points outside the archive folder", field="zip_path"
        )
    if any(":" in part for part in parts):
        # A colon names an alternate data stream or a drive on Windows; no training file needs one.
        raise UnsafeFileError(f"{archive_name}: entry {name!r} has a ':' in its path", field="zip_path")
    return parts


def _refuse_special_file(info: zipfile.ZipInfo, archive_name: str) -> None:
    mode = info.external_attr >> 16
    if not mode:
        return  # archives made on Windows carry no Unix mode bits
    if stat.S_ISLNK(mode):
        raise UnsafeFileError(f"{archive_name}: entry {info.filename!r} is a symbolic link", field="zip_path")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and stat.S_IFMT(mode):
        raise UnsafeFileError(
            f"{archive_name}: entry {info.filename!r} is not a regular file", field="zip_path"
        )


def _is_ignored(parts: tuple[str, ...]) -> bool:
    # macOS Finder adds __MACOSX/ resource forks and .DS_Store files that are not part of the dataset; some
    # tools add a "./" entry for the archive root, which names nothing to create.
    return not parts or parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts)


def _stream_entry(
    archive: zipfile.ZipFile, entry: _Entry, out: Any, archive_name: str, total: int, max_total_bytes: int
) -> int:
    """Read one entry through (into ``out`` unless None), counting bytes: headers can lie. The new total."""
    written = 0
    try:
        with archive.open(entry.info) as source:
            while chunk := source.read(_CHUNK_BYTES):
                written += len(chunk)
                total += len(chunk)
                if written > entry.info.file_size:
                    raise UnsafeFileError(
                        f"{archive_name}: entry {entry.info.filename!r} holds more data than its header declares",
                        field="zip_path",
                    )
                if total > max_total_bytes:
                    raise UnsafeFileError(
                        f"{archive_name} expands to more than {max_total_bytes} bytes "
                        f"(at entry {entry.info.filename!r})",
                        field="zip_path",
                    )
                if out is not None:
                    out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise AtelierError(
            f"{archive_name}: entry {entry.info.filename!r} is corrupt ({exc})", field="zip_path"
        ) from exc
    except NotImplementedError as exc:
        raise AtelierError(
            f"{archive_name}: entry {entry.info.filename!r} uses an unsupported compression method ({exc})",
            field="zip_path",
        ) from exc
    return total


def _write_entries(
    archive: zipfile.ZipFile, entries: list[_Entry], staging: Path, archive_name: str, max_total_bytes: int
) -> None:
    written_total = 0
    for entry in entries:
        target = staging.joinpath(*entry.parts)
        if entry.is_dir:
            _make_dirs(target, entry, archive_name)
            continue
        _make_dirs(target.parent, entry, archive_name)
        try:
            with open(target, "xb") as out:
                written_total = _stream_entry(
                    archive, entry, out, archive_name, written_total, max_total_bytes
                )
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise AtelierError(
                f"{archive_name}: entry {entry.info.filename!r} clashes with another entry of the same path",
                field="zip_path",
            ) from exc
        except OSError as exc:
            raise AtelierError(
                f"{archive_name}: entry {entry.info.filename!r} cannot be written ({exc.strerror or exc})",
                field="zip_path",
            ) from exc
        # Mode bits from the archive are ignored on purpose: extracted files are data, never executables.
        os.chmod(target, 0o644)


def _make_dirs(path: Path, entry: _Entry, archive_name: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise AtelierError(
            f"{archive_name}: entry {entry.info.filename!r} clashes with a file of the same path",
            field="zip_path",
        ) from exc
