"""File storage for training data, models and outputs: a local folder or an S3-compatible bucket.

:func:`open_storage` picks the backend from a URL; both go through fsspec, so the rest of Atelier uses one
interface. Keys are relative POSIX paths whose first part is one of :data:`BUCKETS`, e.g.
``outputs/2024-05-01/shoe.png``. Keys that could leave the storage root are refused.

The local backend writes through a temporary file in the destination folder, named with
:data:`TEMP_PREFIX`, then renames it, so readers and folder watchers never see half-written files (watchers
should ignore names starting with :data:`TEMP_PREFIX`). S3 objects appear only once their upload finishes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from atelier.errors import AtelierError, NotFoundError, UnsafeFileError
from atelier.files import TEMP_PREFIX, write_atomic, write_bytes_atomic

BUCKETS = ("training-data", "models", "outputs")

MAX_KEY_BYTES = 1024  # S3's limit, applied everywhere so keys stay portable between backends


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key, size in bytes, last modification time (aware UTC) and ETag if known."""

    key: str
    size: int
    mtime: datetime
    etag: str | None

    @property
    def version(self) -> str:
        """A string that changes when the object's content is replaced (for the processed-object ledger)."""
        if self.etag:
            return f"etag:{self.etag}"
        return f"size:{self.size};mtime:{self.mtime.isoformat()}"


def check_key(key: object, *, allow_bucket_only: bool = False) -> str:
    """Return ``key`` if it is a safe storage key inside one of :data:`BUCKETS`; raise otherwise.

    :class:`UnsafeFileError` for keys that are absolute, contain ``..``, ``.``, empty parts, backslashes or
    control characters, or use the reserved temporary-file prefix; :class:`AtelierError` for unknown buckets.
    """
    if not isinstance(key, str) or not key:
        raise UnsafeFileError("storage key must be a non-empty string", field="key")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise UnsafeFileError(f"storage key is longer than {MAX_KEY_BYTES} bytes", field="key")
    if "\\" in key:
        raise UnsafeFileError(
            f"storage key {key!r} contains a backslash; use '/' between folders", field="key"
        )
    if any(ord(char) < 32 or ord(char) == 127 for char in key):
        raise UnsafeFileError(f"storage key {key!r} contains a control character", field="key")
    if key.startswith("/"):
        raise UnsafeFileError(
            f"storage key {key!r} is absolute; keys are relative to the storage", field="key"
        )
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafeFileError(f"storage key {key!r} has an empty, '.' or '..' part", field="key")
        if part.startswith(TEMP_PREFIX):
            raise UnsafeFileError(
                f"storage key {key!r} uses the reserved temporary-file prefix {TEMP_PREFIX!r}", field="key"
            )
    if parts[0] not in BUCKETS:
        raise AtelierError(
            f"storage key {key!r} must start with one of the buckets {', '.join(BUCKETS)}", field="key"
        )
    if len(parts) == 1 and not allow_bucket_only:
        raise AtelierError(f"storage key {key!r} names a bucket, not a file inside it", field="key")
    return key


def _is_temporary(relative_key: str) -> bool:
    return any(part.startswith(TEMP_PREFIX) for part in relative_key.split("/"))


def _as_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return datetime.fromtimestamp(float(value), UTC)


def _object_info(key: str, info: Mapping[str, Any]) -> ObjectInfo:
    # Local files report "mtime" (epoch seconds); s3fs reports "LastModified" and a quoted "ETag".
    modified = info.get("LastModified", info.get("mtime"))
    etag = info.get("ETag")
    return ObjectInfo(
        key=key,
        size=int(info["size"]),
        mtime=_as_utc(modified) if modified is not None else datetime.fromtimestamp(0, UTC),
        etag=etag.strip('"') if isinstance(etag, str) else None,
    )


class Storage:
    """Objects under one root of an fsspec filesystem (an S3 bucket/prefix); see :func:`open_storage`."""

    def __init__(self, fs: AbstractFileSystem, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")

    def _path(self, key: str, *, allow_bucket_only: bool = False) -> str:
        return f"{self.root}/{check_key(key, allow_bucket_only=allow_bucket_only)}"

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any previous object."""
        self.fs.pipe_file(self._path(key), bytes(data))

    def put_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """Upload the local file at ``local_path`` to ``key``."""
        source = _existing_file(local_path)
        self.fs.put_file(str(source), self._path(key))

    def get_bytes(self, key: str) -> bytes:
        """The object's content; :class:`NotFoundError` if there is none."""
        try:
            return self.fs.cat_file(self._path(key))
        except (FileNotFoundError, IsADirectoryError):
            raise NotFoundError(f"storage object {key!r} not found", field="key") from None

    def get_file(self, key: str, local_path: str | os.PathLike[str]) -> Path:
        """Download the object to ``local_path`` (atomically: readers never see a partial file); return it."""
        remote = self._path(key)
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        if not self.fs.isfile(remote):
            raise NotFoundError(f"storage object {key!r} not found", field="key")
        return write_atomic(Path(local_path), lambda temp: self.fs.get_file(remote, str(temp)))

    def exists(self, key: str) -> bool:
        """True if an object is stored under ``key``."""
        return bool(self.fs.isfile(self._path(key)))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Objects under a folder prefix (``""`` for everything, ``"models"``, ``"outputs/2024"``), by key."""
        search_root = self.root if prefix == "" else self._path(prefix.rstrip("/"), allow_bucket_only=True)
        try:
            found = self.fs.find(search_root, detail=True)
        except FileNotFoundError:
            return []
        objects = []
        for path, info in found.items():
            if info.get("type") != "file":
                continue
            relative = path.strip("/")[len(self.root.strip("/")) :].strip("/")
            if relative and not _is_temporary(relative):
                objects.append(_object_info(relative, info))
        return sorted(objects, key=lambda item: item.key)

    def delete(self, key: str) -> None:
        """Remove the object; :class:`NotFoundError` if there is none."""
        path = self._path(key)
        if not self.fs.isfile(path):
            raise NotFoundError(f"storage object {key!r} not found", field="key")
        self.fs.rm_file(path)

    def create_buckets(self) -> None:
        """Nothing to do on S3: a bucket's prefix exists as soon as an object is stored under it."""

    def local_path(self, key: str) -> Path | None:
        """The object's path on this machine for the local backend (whether or not it exists); None for S3."""
        check_key(key)
        return None

    def url_for(self, key: str) -> str:
        """A URL naming the object (``file://...`` or ``s3://bucket/...``)."""
        return self.fs.unstrip_protocol(self._path(key))


class LocalStorage(Storage):
    """Objects as files in a local folder. Writes go through a temporary file and a rename."""

    def __init__(self, root: Path) -> None:
        self.root_path = root.resolve()
        super().__init__(LocalFileSystem(), self.root_path.as_posix())

    def _file(self, key: str) -> Path:
        candidate = (self.root_path / check_key(key)).resolve()
        # Resolving follows symlinks, so a link inside the root that points elsewhere is caught too.
        if not candidate.is_relative_to(self.root_path):
            raise UnsafeFileError(f"storage key {key!r} leads outside the storage folder", field="key")
        return candidate

    def _path(self, key: str, *, allow_bucket_only: bool = False) -> str:
        if allow_bucket_only and "/" not in key:
            return super()._path(key, allow_bucket_only=True)
        return self._file(key).as_posix()

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, replacing any previous file."""
        write_bytes_atomic(self._file(key), bytes(data))

    def put_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """Copy the local file at ``local_path`` to ``key`` atomically."""
        source = _existing_file(local_path)
        write_atomic(self._file(key), lambda temp: shutil.copyfile(source, temp))

    def create_buckets(self) -> None:
        """Make the bucket folders, so that a person looking at the data folder sees where to drop files."""
        for bucket in BUCKETS:
            (self.root_path / bucket).mkdir(parents=True, exist_ok=True)

    def local_path(self, key: str) -> Path | None:
        """The object's real path in the storage folder (whether or not it exists yet)."""
        return self._file(key)

    def url_for(self, key: str) -> str:
        """A ``file://`` URL of the object."""
        return self._file(key).as_uri()


def _existing_file(local_path: str | os.PathLike[str]) -> Path:
    source = Path(local_path)
    if not source.is_file():
        raise NotFoundError(f"file to upload {str(source)!r} does not exist", field="local_path")
    return source


def open_storage(url: str, *, endpoint_url: str | None = None, **options: Any) -> Storage:
    """Open storage at a local folder (``/abs/path`` or ``file:///abs/path``) or ``s3://bucket/prefix``.

    For S3, ``endpoint_url`` points at an S3-compatible server (MinIO, Ceph...). Credentials come from the
    usual AWS environment variables or config, or from ``options`` (passed to ``s3fs.S3FileSystem``, e.g.
    ``key=``, ``secret=``). The local folder is created if missing.
    """
    if not isinstance(url, str) or not url.strip():
        raise AtelierError(
            "storage URL is empty; expected a folder path, file:///path or s3://bucket", field="url"
        )
    url = url.strip()
    parts = urlsplit(url) if "://" in url else None
    scheme = parts.scheme if parts else ""
    if scheme in ("", "file"):
        if endpoint_url is not None or options:
            raise AtelierError("endpoint_url and options only apply to s3:// storage", field="url")
        if parts is None:
            folder = Path(url).expanduser().resolve()
        elif parts.netloc in ("", "localhost") and parts.path.startswith("/"):
            folder = Path(unquote(parts.path))
        else:
            raise AtelierError(
                f"storage URL {url!r} must be file:/// followed by an absolute path", field="url"
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AtelierError(
                f"cannot create storage folder {str(folder)!r}: {exc.strerror}", field="url"
            ) from None
        return LocalStorage(folder)
    if parts is not None and scheme == "s3":
        if not parts.netloc:
            raise AtelierError(
                f"storage URL {url!r} names no bucket; expected s3://bucket/prefix", field="url"
            )
        # Imported here because s3fs pulls in aiobotocore, which local-only installs never need.
        import s3fs

        # Listings are not cached: other processes (uploads, workers) change the bucket behind our back.
        # The filesystem object itself is: fsspec reuses one per set of arguments, and with it the client.
        fs = s3fs.S3FileSystem(endpoint_url=endpoint_url, use_listings_cache=False, **options)
        return Storage(fs, f"{parts.netloc}{parts.path}".rstrip("/"))
    raise AtelierError(
        f"storage URL scheme {scheme!r} is not supported; use a folder path, file:// or s3://", field="url"
    )
