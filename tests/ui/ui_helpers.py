"""Helpers for the UI tests: the running studio as the tests see it, waiting, and PNG files."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import httpx

from polling import wait_for as wait_for  # re-exported: the UI tests import it from here


@dataclass
class RunningStudio:
    url: str
    server: Any
    client: httpx.Client

    def latest_job(self, kind: str = "generate") -> dict[str, Any]:
        return self.client.get("/api/jobs", params={"kind": kind, "limit": 1}).json()["jobs"][0]

    def download(self, key: str) -> bytes:
        response = self.client.get(f"/api/files/{key}")
        response.raise_for_status()
        return response.content


def png_bytes(image: Any, parameters: str | None = None) -> bytes:
    from PIL import PngImagePlugin

    info = None
    if parameters is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
