"""Fixtures for the deployment tests: the rendered manifests, and the service tests' PostgreSQL database."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from deploy_helpers import K8S, OVERLAYS, ROOT

# The service tests' session database (tests/service/conftest.py), shared rather than written twice.
_spec = importlib.util.spec_from_file_location("atelier_service_fixtures", ROOT / "tests/service/conftest.py")
assert _spec is not None and _spec.loader is not None
_service_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_service_fixtures)
postgres_url = _service_fixtures.postgres_url


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Each overlay rendered by `kubectl kustomize`, as a list of resources."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlays cannot be rendered (kubectl kustomize)")
    out = {}
    for overlay in OVERLAYS:
        done = subprocess.run(
            [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"kubectl kustomize overlays/{overlay}: {done.stderr.strip()}"
        out[overlay] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return out
