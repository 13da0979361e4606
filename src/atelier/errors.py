"""Errors that are the user's to fix.

Every layer raises :class:`AtelierError` (or a subclass) for bad input. The CLI prints its message as one
line and exits non-zero; the service maps it to an HTTP 4xx. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AtelierError(Exception):
    """A problem with the user's input or environment, described in one line."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFoundError(AtelierError):
    """A named thing (model, LoRA, job, file) does not exist."""


class UnsafeFileError(AtelierError):
    """A file that could execute code or escape its folder, refused on purpose."""


class ConflictError(AtelierError):
    """The request would replace something that exists (a model of the same name): HTTP 409."""


class ForbiddenError(AtelierError):
    """The caller's key may not do this (only an admin key may): HTTP 403."""


class JobFailedError(AtelierError):
    """A job a request waited for failed for a reason that is not the request's (HTTP 500, with the reason)."""


class JobTimeoutError(AtelierError):
    """A job a request waited for did not finish in time; it goes on (HTTP 504)."""
