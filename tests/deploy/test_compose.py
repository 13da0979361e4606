"""deploy/compose.yaml: the services a studio needs, wired through environment variables only."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml
from deploy_helpers import DEPLOY

from atelier.service.config import StudioConfig

COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _example_env() -> dict[str, str]:
    pairs = [
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if "=" in line and not line.startswith("#")
    ]
    return dict(pairs)


def test_the_services_and_their_roles(compose):
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "minio",
        "minio-init",
        "api",
        "worker-gpu",
        "trainer-gpu",
        "worker-cpu",
    }
    assert services["api"]["command"] == ["serve", "--max-workers", "0"]
    assert services["worker-gpu"]["command"] == ["worker", "--kinds", "generate,caption,product"]
    assert services["trainer-gpu"]["command"] == ["worker", "--kinds", "train"]
    assert services["worker-cpu"]["command"] == ["worker"]
    assert services["worker-cpu"]["profiles"] == ["cpu"], "CPU workers are optional"
    for name in ("worker-gpu", "trainer-gpu"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    for name in ("api", "worker-gpu", "trainer-gpu", "worker-cpu"):
        service = services[name]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
        assert any(volume.endswith(":/cache") for volume in service["volumes"])
        if name != "api":
            # Above the worker's stop grace (20 s): a stopping worker finishes or hands back its job.
            assert service["stop_grace_period"] == "30s"
            assert service["healthcheck"] == {"disable": True}
    init = services["minio-init"]
    assert "mc mb --ignore-existing" in init["command"][0]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"


def test_atelier_is_configured_only_through_studio_settings_in_the_environment(compose):
    settings = {f"ATELIER_{name.upper()}" for name in StudioConfig.model_fields}
    # Read by the image's entry point (keys install) and by boto/s3fs, not by StudioConfig.
    others = {"ATELIER_ADMIN_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
    for name in ("api", "worker-gpu", "trainer-gpu", "worker-cpu"):
        environment = compose["services"][name]["environment"]
        assert set(environment) <= settings | others, name
        assert environment["ATELIER_DATABASE_URL"].startswith("postgresql://")
        assert environment["ATELIER_STORAGE_URL"].startswith("s3://")
        assert "command" in compose["services"][name] and "--db" not in compose["services"][name]["command"]


def test_the_example_env_names_every_variable_the_file_uses_and_holds_no_secret():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text(encoding="utf-8")))
    example = _example_env()
    assert used <= set(example), sorted(used - set(example))
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "ATELIER_ADMIN_KEY"):
        assert example[secret] == "", f"{secret} must be left for the deployer to fill in"
        assert f"${{{secret}:?" in COMPOSE.read_text(encoding="utf-8"), (
            f"Compose refuses to start without {secret}"
        )


def test_compose_itself_accepts_the_file(tmp_path):
    """Validated by Compose where a Compose CLI is installed (docker compose v2, or docker-compose)."""
    command = None
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        command = ["docker", "compose"] if probe.returncode == 0 else None
    if command is None and shutil.which("docker-compose"):
        command = ["docker-compose"]
    if command is None:
        pytest.skip(
            "no Compose CLI (docker compose or docker-compose): the file's structure is checked above"
        )
    filled = {
        **_example_env(),
        "POSTGRES_PASSWORD": "p",
        "MINIO_ROOT_PASSWORD": "m" * 12,
        "ATELIER_ADMIN_KEY": "k",
    }
    (tmp_path / ".env").write_text("".join(f"{key}={value}\n" for key, value in filled.items()))
    shutil.copy(COMPOSE, tmp_path / "compose.yaml")
    base = [*command, "-f", str(tmp_path / "compose.yaml"), "--project-directory", str(tmp_path)]
    done = subprocess.run([*base, "config", "-q"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    services = subprocess.run(
        [*base, "--profile", "cpu", "config", "--services"], capture_output=True, text=True, timeout=60
    )
    assert set(services.stdout.split()) >= {"api", "worker-cpu", "worker-gpu", "minio-init"}
    # Without a secret, Compose stops with the line that says which.
    (tmp_path / ".env").write_text(
        "".join(f"{k}={v}\n" for k, v in filled.items() if k != "ATELIER_ADMIN_KEY")
    )
    refused = subprocess.run([*base, "config", "-q"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "set ATELIER_ADMIN_KEY in .env" in refused.stderr
