"""Serving the page: the UI's files load without an API key, everything else keeps asking for one."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from atelier.service.api import create_app
from atelier.service.config import StudioConfig
from atelier.service.studio import Studio
from atelier.ui import STATIC_DIR, mount_ui

IMPORT = re.compile(r"""^import\s.*?from\s+"(\./[^"]+)";""", re.MULTILINE | re.DOTALL)


@pytest.fixture
def studio(tmp_path) -> Iterator[Studio]:
    studio = Studio.open(StudioConfig.for_data_dir(tmp_path / "data", watch=False))
    yield studio
    studio.close()


@pytest.fixture
def client(studio: Studio) -> Iterator[TestClient]:
    app = create_app(studio)
    mount_ui(app)
    mount_ui(app)  # a second call (the app factory and a test both mounting) changes nothing
    # The Host a browser on this machine sends; the studio answers to loopback names only.
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        yield client


def test_the_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    assert '<script type="module" src="/ui/js/app.js">' in page.text
    styles = client.get("/ui/styles.css")
    assert styles.status_code == 200 and styles.headers["content-type"].startswith("text/css")
    assert client.get("/ui/no-such-file.js").status_code == 404


def test_every_module_the_page_imports_is_served_as_javascript(client):
    seen: set[str] = set()
    waiting = ["js/app.js"]
    while waiting:
        path = waiting.pop()
        if path in seen:
            continue
        seen.add(path)
        response = client.get(f"/ui/{path}")
        assert response.status_code == 200, path
        assert "javascript" in response.headers["content-type"], path
        folder = path.rsplit("/", 1)[0]
        waiting += [f"{folder}/{target[2:]}" for target in IMPORT.findall(response.text)]
    on_disk = {str(path.relative_to(STATIC_DIR)) for path in (STATIC_DIR / "js").glob("*.js")}
    assert seen == on_disk


def test_with_a_key_required_the_page_loads_but_the_api_still_refuses(client, studio):
    studio.keys.create("someone")
    assert client.get("/").status_code == 200
    assert client.get("/ui/js/api.js").status_code == 200
    refused = client.get("/api/models")
    assert refused.status_code == 401 and refused.json()["field"] == "authorization"
    # Only reading the page's files is public: other methods on those paths still need the key.
    assert client.post("/", json={}).status_code == 401
    assert client.get("/uix/anything").status_code == 401
