"""What both HTTP APIs share: error responses, authentication, body limits, and waiting for jobs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from atelier.errors import (
    AtelierError,
    ConflictError,
    ForbiddenError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    UnsafeFileError,
)
from atelier.service.database import utc_now
from atelier.service.failures import public_text, server_roots
from atelier.service.jobs import FINISHED_STATES, Job, JobStore
from atelier.service.security import OPEN_STUDIO, AccessPolicy, Caller, key_from_headers

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

# Paths anyone may read: the API documentation (its pages, and their scripts served from this package so
# that the docs work offline) and the health probes.
DOCS_ASSETS = "/docs-assets"
PUBLIC_PATHS = frozenset(
    {
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/api/health",
        "/api/health/ready",
        "/internal/ping",
    }
)


def is_public_path(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(DOCS_ASSETS + "/")


class ErrorBody(BaseModel):
    """Every error answer of both APIs (4xx and 5xx)."""

    error: str = Field(description="the kind of error, e.g. ValidationError, NotFoundError, ConflictError")
    detail: str = Field(description="one line saying what is wrong (A1111 clients read this)")
    field: str | None = Field(description="the request field at fault, when there is one")
    errors: str = Field(description="the same line, where other A1111 clients look for it")


_ERROR_MEANINGS = {
    400: "a refused file, path, Host name or header",
    401: "an API key is required",
    403: "the key may not do this (admin only), or a cross-site request",
    404: "no such job, model or file (or not the caller's)",
    409: "it would replace something that exists",
    413: "the body is larger than this server accepts",
    422: "a field has a value that cannot work",
    500: "the job failed for a reason that is not the request's, or a bug",
    504: "the job did not finish in time (it goes on)",
}
# Documented on every route, so that the schema describes what the API really answers.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": meaning} for status, meaning in _ERROR_MEANINGS.items()
}


def error_body(message: str, field: str | None, error: str) -> dict[str, Any]:
    """The JSON of every error answer. ``detail`` and ``errors`` are where A1111 clients look for the message."""
    return {"error": error, "detail": message, "field": field, "errors": message}


def status_for(problem: AtelierError) -> int:
    if isinstance(problem, NotFoundError):
        return 404
    if isinstance(problem, ForbiddenError):
        return 403
    if isinstance(problem, ConflictError):
        return 409
    if isinstance(problem, JobFailedError):
        return 500
    if isinstance(problem, JobTimeoutError):
        return 504
    if isinstance(problem, UnsafeFileError):
        return 400
    return 422


def atelier_error_response(problem: AtelierError, roots: Sequence[Path] = ()) -> JSONResponse:
    return JSONResponse(
        error_body(public_text(str(problem), roots), problem.field, type(problem).__name__),
        status_code=status_for(problem),
    )


def _validation_field(location: tuple[Any, ...]) -> str:
    parts = [str(part) for part in location if part not in ("body", "query", "path")]
    return ".".join(parts) if parts else "body"


def validation_error_response(problem: RequestValidationError) -> JSONResponse:
    errors = problem.errors()
    first: dict[str, Any] = (
        errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "value_error"}
    )
    field = _validation_field(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        message, field = (
            f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})",
            "body",
        )
    elif first.get("type") == "missing":
        message = f"{field} is required"
    else:
        message = f"{field}: {first.get('msg', 'invalid value')}"
    return JSONResponse(error_body(message, field, "ValidationError"), status_code=422)


def install_error_handlers(app: Any) -> None:
    """Map every failure to a JSON answer: user errors to 4xx naming the field, bugs to a logged 500."""

    @app.exception_handler(AtelierError)
    async def _atelier_error(request: Request, problem: AtelierError) -> JSONResponse:
        studio = getattr(request.app.state, "studio", None)
        return atelier_error_response(problem, server_roots(studio.config if studio else None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, problem: RequestValidationError) -> JSONResponse:
        return validation_error_response(problem)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, problem: StarletteHTTPException) -> JSONResponse:
        detail, field = str(problem.detail), None
        if problem.status_code == 413:
            detail, field = "the request body is larger than this server accepts", "body"
        return JSONResponse(
            error_body(detail, field, "HTTPError"),
            status_code=problem.status_code,
            headers=getattr(problem, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, problem: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(
            error_body("internal error; see the server log", None, type(problem).__name__), status_code=500
        )


def request_caller(request: Request) -> Caller:
    """Who made the request (set by :class:`StudioGate`)."""
    return getattr(request.state, "caller", None) or OPEN_STUDIO


def request_owner(request: Request) -> str | None:
    """The name of the API key the request came with (None without keys): recorded as the job's owner."""
    return request_caller(request).name


def require_admin(request: Request, action: str) -> None:
    """Refuse ``action`` (403) unless the caller's key is an admin key."""
    if not request_caller(request).is_admin:
        raise ForbiddenError(
            f"{action} needs an admin key (atelier keys create NAME --admin)", field="authorization"
        )


def visible_job(store: JobStore, caller: Caller, job_id: str) -> Job:
    """The job, if the caller may see it (its own, or any for an admin); 404 as for a job that does not exist,
    so that ids of other people's jobs cannot be probed."""
    job = store.get(job_id)
    if not caller.may_see(job.owner):
        raise NotFoundError(f"job {job_id!r} not found", field="job_id")
    return job


def output_owner(studio: Any, key: str) -> str | None:
    """Who made an object of the outputs bucket: ``outputs/<job id>/...`` the job's owner, ``outputs/ads/<id>/``
    the owner recorded in the ad's ``ad.json``. :class:`NotFoundError` for anything else."""
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != "outputs":
        raise NotFoundError(f"storage object {key!r} not found", field="key")
    if parts[1] == "ads":
        try:
            record = json.loads(studio.storage.get_bytes(f"outputs/ads/{parts[2]}/ad.json"))
        except (AtelierError, ValueError):
            raise NotFoundError(f"storage object {key!r} not found", field="key") from None
        return record.get("owner") if isinstance(record, dict) else None
    return studio.store.get(parts[1]).owner


def check_output_access(studio: Any, caller: Caller, key: str) -> None:
    """404 unless the caller may read ``key`` of the outputs bucket (its own outputs, or any for an admin)."""
    if caller.is_admin:
        return
    try:
        owner = output_owner(studio, key)
    except NotFoundError:
        raise NotFoundError(f"storage object {key!r} not found", field="key") from None
    if not caller.may_see(owner):
        raise NotFoundError(f"storage object {key!r} not found", field="key")


# Requests that change state, refused when a browser says they come from another site.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class StudioGate:
    """Pure ASGI middleware, the one door every request passes: Host names, cross-site requests, API keys.

    - **Host.** A studio on loopback answers only to loopback names, so a web page whose DNS name is rebound to
      127.0.0.1 cannot read it. More names: ``allowed_hosts``.
    - **Cross-site requests.** A browser tells the server where a request comes from (``Sec-Fetch-Site``,
      ``Origin``). A state-changing request from another site (a page's form or fetch) is refused; A1111
      clients and scripts send neither header and are unaffected, and the studio's own page is same-origin.
    - **API keys** (when the policy asks for one) on every non-public path; the caller's name and role are
      handed to the routes as ``request.state.caller``.

    Written at the ASGI level so it covers streaming responses and uploads before any body is read.
    """

    def __init__(self, app: ASGIApp, *, policy: AccessPolicy, trusted_hosts: frozenset[str] | None) -> None:
        self.app = app
        self.policy = policy
        self.trusted_hosts = trusted_hosts

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])
        }
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if is_public_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        caller = await run_in_threadpool(self.policy.identify, key_from_headers(headers))
        if caller is not None:
            scope.setdefault("state", {})["caller"] = caller
            await self.app(scope, receive, _with_json_413(send))
            return
        body = error_body(
            "an API key is required: send 'Authorization: Bearer <key>' (create one with 'atelier keys create NAME')",
            "authorization",
            "Unauthorized",
        )
        response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": 'Basic realm="atelier"'})
        await response(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> JSONResponse | None:
        host = _host_name(headers.get("host", ""))
        if self.trusted_hosts is not None and host not in self.trusted_hosts:
            return JSONResponse(
                error_body(
                    "this studio does not answer to that host name; add it with --allowed-host (or "
                    "ATELIER_ALLOWED_HOSTS)",
                    "host",
                    "UntrustedHost",
                ),
                status_code=400,
            )
        if scope.get("method", "GET") in _SAFE_METHODS:
            return None
        fetch_site = headers.get("sec-fetch-site", "").lower()
        origin = headers.get("origin")
        cross_site = fetch_site in ("cross-site", "same-site")
        if origin is not None and not cross_site:
            cross_site = origin == "null" or _origin_host(origin) != headers.get("host", "").lower()
        if cross_site:
            return JSONResponse(
                error_body(
                    "cross-site requests may not change anything in this studio", "origin", "CrossSiteRequest"
                ),
                status_code=403,
            )
        return None


def _host_name(host_header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower-cased."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _origin_host(origin: str) -> str:
    """``host[:port]`` of an Origin header (``scheme://host[:port]``)."""
    return origin.strip().lower().partition("://")[2].rstrip("/")


def _with_json_413(send: Any) -> Any:
    """Wrap ``send`` so the plain-text 413 of Starlette's body limit becomes the API's JSON error."""
    replacing = False

    async def wrapped(message: Message) -> None:
        nonlocal replacing
        if message["type"] == "http.response.start" and message["status"] == 413:
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            if content_type.startswith(b"text/plain"):
                replacing = True
                response = JSONResponse(
                    error_body("the request body is larger than this server accepts", "body", "HTTPError"),
                    status_code=413,
                )
                await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
                await send({"type": "http.response.body", "body": response.body})
                return
        if replacing:
            return
        await send(message)

    return wrapped


class JobWaiter:
    """Lets request handlers wait for jobs to finish, with one polling query for all of them.

    A1111-style requests hold the connection until their job is done; hundreds of them waiting at once cost
    one small query per poll instead of one each. Polls are spaced by how soon the nearest job should finish
    (from its step rate), between ``poll_seconds`` and ``max_poll_seconds``: a finished job is noticed within
    ``poll_seconds`` without a query every few milliseconds stealing CPU from a worker on the same machine.
    """

    def __init__(
        self, store: JobStore, *, poll_seconds: float = 0.01, max_poll_seconds: float = 0.25
    ) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self.max_poll_seconds = max_poll_seconds
        self._waiting: dict[str, list[asyncio.Future[Job]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._new_waiter: asyncio.Event | None = None

    async def wait(self, job_id: str) -> Job:
        """Return the job once it is finished (succeeded, failed or canceled)."""
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job_id, []).append(future)
        if self._new_waiter is None:
            self._new_waiter = asyncio.Event()
        # A poller sleeping until a long job's expected end must look at the new job now.
        self._new_waiter.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        try:
            return await future
        finally:
            waiters = self._waiting.get(job_id)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiting[job_id]

    def _check(self, job_ids: list[str]) -> tuple[list[Job], float]:
        """The finished jobs among ``job_ids``, and how long to wait before looking again."""
        rows = self.store.statuses(job_ids)
        finished = [self.store.get(row.id) for row in rows if row.state in FINISHED_STATES]
        now = utc_now()
        wait = self.max_poll_seconds
        for row in rows:
            if row.state in FINISHED_STATES:
                continue
            if row.state == "running" and row.started_at and row.progress_step and row.progress_total:
                elapsed = (now - row.started_at).total_seconds()
                remaining = (row.progress_total - row.progress_step) * elapsed / row.progress_step
                wait = min(wait, remaining / 2)
            else:
                # Queued, or no progress reported yet: small jobs can finish at any moment.
                wait = self.poll_seconds
        return finished, max(self.poll_seconds, wait)

    async def _poll(self) -> None:
        assert self._new_waiter is not None
        while self._waiting:
            self._new_waiter.clear()
            try:
                finished, wait = await run_in_threadpool(self._check, list(self._waiting))
            except Exception as problem:
                logger.warning("waiting for jobs: %s; retrying", problem)
                finished, wait = [], 0.5
            for job in finished:
                for future in self._waiting.pop(job.id, []):
                    if not future.done():
                        future.set_result(job)
            if not self._waiting:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_waiter.wait(), timeout=wait)
