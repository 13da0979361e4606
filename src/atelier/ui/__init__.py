"""Atelier's studio web UI: static HTML, CSS and JavaScript modules on top of the public HTTP API.

The page has no backend of its own: every button calls the same ``/api`` and ``/sdapi/v1`` routes a script
would, with the API key the user typed (kept in the browser's localStorage). There is no build step; the files
under ``static/`` are served as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
UI_PREFIX = "/ui"

Scope = dict[str, Any]


async def _index(_request: Request) -> FileResponse:
    # Revalidated on every load, so an upgraded studio never runs an old page against a new API.
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


class PublicUiFiles:
    """ASGI middleware answering GET/HEAD for ``/`` and ``/ui/...`` from the UI's files, before the API key check.

    The page must load before anyone has typed a key: it is what asks for one. The files hold no studio data,
    like ``/docs``; every API call the page makes still needs the key.
    """

    def __init__(self, app: Any, *, files: Any) -> None:
        self.app = app
        self.files = files

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") and _is_ui_path(scope["path"]):
            await self.files(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_ui_path(path: str) -> bool:
    return path == "/" or path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


def ui_files_app() -> Starlette:
    """The UI's own routes: the page at ``/`` and its assets under ``/ui/``."""
    return Starlette(
        routes=[
            Route("/", _index, methods=["GET", "HEAD"]),
            Mount(UI_PREFIX, app=StaticFiles(directory=STATIC_DIR), name="ui"),
        ]
    )


def mount_ui(app: FastAPI) -> None:
    """Serve the studio page at ``/`` and its assets under ``/ui/`` on ``app``.

    Call it after the API's middleware is added (the last step of building the app): it places itself
    outermost, so the page loads without an API key while the API behind it still requires one.
    """
    if getattr(app.state, "ui_mounted", False):
        return
    app.add_middleware(PublicUiFiles, files=ui_files_app())
    app.state.ui_mounted = True
