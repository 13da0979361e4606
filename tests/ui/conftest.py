"""A real studio on a loopback port (demo model, one in-process worker) and headless Chromium driving its page.

Chromium is Debian's package (``apt-get install -y chromium``), driven by the ``playwright`` package; no
browser is ever downloaded. Screenshots go to ``test-artifacts/ui/`` (git-ignored).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ui_helpers import RunningStudio

from polling import QUICK_TIMINGS

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"


@pytest.fixture(scope="session")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStudio]:
    """``atelier serve`` as the lead wires it (API + UI), with the demo model and one worker thread."""
    import torch

    from atelier.service.config import StudioConfig
    from atelier.service.server import StudioServer
    from atelier.service.worker import Worker
    from atelier.ui import mount_ui

    torch.set_num_threads(1)
    config = StudioConfig.for_data_dir(
        tmp_path_factory.mktemp("ui") / "data", port=0, max_workers=0, **QUICK_TIMINGS
    )
    server = StudioServer(config, log_level="warning")
    mount_ui(server.app)
    url = server.start()
    worker = Worker(server.studio)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    worker.ready.wait(timeout=120)  # the default model is loaded before any test loads one of its own
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield RunningStudio(url=url, server=server, client=client)
    finally:
        worker.stop(abandon_current=True)
        thread.join(timeout=60)
        server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is missing: install Debian's package with 'apt-get install -y chromium'")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser: Any, studio: RunningStudio) -> Iterator[Callable[..., Any]]:
    """open_page(tab="txt2img", width=1366, height=768) -> a loaded page; fails the test on any script error."""
    contexts = []
    errors: list[str] = []

    def _open(tab: str = "txt2img", width: int = 1366, height: int = 768, ready: str = "true") -> Any:
        context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{studio.url}/#{tab}")
        page.wait_for_selector(f"body[data-ready={ready}]")
        return page

    yield _open
    for context in contexts:
        context.close()
    assert not errors, f"the page raised: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
