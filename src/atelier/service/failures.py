"""Which job failures deserve another attempt, and how a failure reads in the UI, the API and the CLI.

A job is retried only when the infrastructure around it failed: the database or the storage was briefly
unreachable, a connection dropped, a disk was full or gave an I/O error. (A worker that died is recovered
separately, by its lease expiring.) Everything else fails the same way on every attempt, so it fails once:
bad input, a missing or corrupt model, an incompatible library (transformers refusing the installed peft), out
of memory at this size, or a bug. Retrying those only hides the message for three attempts.

The message is one line: the user's own mistake as Atelier words it, else the exception's type and first line.
"""

from __future__ import annotations

import errno
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import sqlalchemy as sa

from atelier.errors import AtelierError
from atelier.files import TEMP_PREFIX

MAX_ERROR_LENGTH = 500

_TRANSIENT_ERRNOS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EPIPE,
    errno.EAGAIN,
    errno.EIO,
    errno.ENOSPC,
}
_TRANSIENT_DATABASE_ERRORS = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.DisconnectionError,
    sa.exc.TimeoutError,
)
# Network errors of the S3 clients (botocore, aiohttp under s3fs), recognised by name so that neither has to be
# imported on a studio that stores locally.
_TRANSIENT_CLIENT_ERRORS = {
    ("botocore.exceptions", "ConnectionError"),
    ("botocore.exceptions", "HTTPClientError"),
    ("aiohttp.client_exceptions", "ClientConnectionError"),
    ("aiohttp.client_exceptions", "ServerTimeoutError"),
}


def _transient_itself(exc: BaseException) -> bool:
    if isinstance(exc, AtelierError):
        return False
    if isinstance(exc, (*_TRANSIENT_DATABASE_ERRORS, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    return any((cls.__module__, cls.__name__) in _TRANSIENT_CLIENT_ERRORS for cls in type(exc).__mro__)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it: libraries wrap network errors) is an infrastructure fault."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if _transient_itself(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def describe_failure(exc: BaseException, roots: Sequence[Path] = ()) -> str:
    """One line for people: Atelier's own message, or the exception's type and the first line of its text.

    Paths under ``roots`` (this machine's folders, :func:`server_roots`) are reduced to file names.
    """
    if isinstance(exc, AtelierError):
        text = str(exc)
    elif type(exc).__name__ == "OutOfMemoryError":
        text = "out of GPU memory: use a smaller size or batch, or free the GPU (another process may hold it)"
    else:
        lines = str(exc).strip().splitlines()
        text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    text = public_text(" ".join(text.split()), roots)
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 1] + "…"


def public_text(text: str, roots: Sequence[Path]) -> str:
    """``text`` without this server's own paths: a file under one of ``roots`` (the data folder, the cache,
    the temporary folder, home) is named by its file name only, and staging prefixes are dropped. Clients get
    the file they sent or named, never where the server keeps it."""
    for root in sorted({str(root) for root in roots if str(root) not in ("", "/")}, key=len, reverse=True):
        text = re.sub(
            re.escape(root) + r"/?([^\s'\"]*)", lambda found: PurePosixPath(found.group(1)).name, text
        )
    return _STAGING_NAME.sub("", text)


_STAGING_NAME = re.compile(re.escape(TEMP_PREFIX) + r"[0-9a-f]+-?")


def server_roots(config: Any) -> list[Path]:
    """The folders whose paths :func:`public_text` hides."""
    roots = [Path(tempfile.gettempdir()), Path.home()]
    if config is not None:
        roots[:0] = [Path(config.cache_dir), Path(config.data_dir)]
    resolved = [root.resolve() for root in roots]
    return [*roots, *resolved]
