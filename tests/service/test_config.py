"""Studio settings: embedded defaults, ATELIER_* environment variables as deployments set them, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from atelier.errors import AtelierError
from atelier.service.config import StudioConfig


def test_embedded_defaults_live_in_the_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = StudioConfig.for_data_dir()
    root = tmp_path / "atelier-data"
    assert config.data_dir == root
    assert config.database_url == f"sqlite:///{root / 'atelier.db'}"
    assert config.storage_url == str(root)
    assert config.cache_dir == root / "cache"
    assert (config.host, config.port, config.max_workers) == ("127.0.0.1", 7860, 1)


def test_environment_variables_configure_a_deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ATELIER_DATABASE_URL", "postgresql+psycopg://atelier@db/atelier")
    monkeypatch.setenv("ATELIER_STORAGE_URL", "s3://studio/buckets")
    monkeypatch.setenv("ATELIER_MAX_WORKERS", "4")
    monkeypatch.setenv("ATELIER_WEBHOOK_ALLOW_PRIVATE", "yes")
    monkeypatch.setenv("ATELIER_ALLOWED_HOSTS", "studio.example.com, atelier.internal")
    monkeypatch.setenv("ATELIER_HOST", "")  # empty variables are ignored, as in a Kubernetes manifest
    config = StudioConfig.for_data_dir()
    assert config.data_dir == tmp_path / "data"
    assert config.cache_dir == tmp_path / "data" / "cache"
    assert config.database_url == "postgresql+psycopg://atelier@db/atelier"
    assert config.storage_url == "s3://studio/buckets"
    assert config.max_workers == 4
    assert config.webhook_allow_private is True
    assert config.allowed_hosts == ("studio.example.com", "atelier.internal")
    assert config.host == "127.0.0.1"
    # An explicit value (a CLI flag) wins over the environment.
    assert StudioConfig.for_data_dir(tmp_path / "other", max_workers=2).max_workers == 2
    assert StudioConfig.for_data_dir(tmp_path / "other").data_dir == tmp_path / "other"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "ATELIER_PORT",
            "seventy",
            r"^port in studio settings: input should be a valid integer.*got 'seventy'$",
        ),
        ("ATELIER_PORT", "70000", r"^port must be a whole number from 0 to 65535, got 70000$"),
        ("ATELIER_MIN_WORKERS", "3", r"^min_workers \(3\) is above max_workers \(1\)$"),
        ("ATELIER_LEASE_SECONDS", "0", r"^lease_seconds must be a number above 0, got 0.0$"),
    ],
)
def test_bad_settings_are_one_line_naming_the_setting(
    variable: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(AtelierError, match=message) as caught:
        StudioConfig.for_data_dir(tmp_path)
    assert caught.value.field == variable.removeprefix("ATELIER_").lower()


def test_a_misspelt_setting_gets_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(
        AtelierError, match=r"unknown key 'max_worker' in studio settings; did you mean 'max_workers'"
    ):
        StudioConfig.for_data_dir(tmp_path, max_worker=2)


def test_serve_reads_the_environment_when_no_flag_is_given(tmp_path: Path) -> None:
    """`atelier serve` with ATELIER_PORT set refuses a port in use: the variable reached the server's config."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "atelier", "serve", "--data", str(tmp_path), "--no-watch"],
            env={"ATELIER_PORT": str(port), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert str(port) in result.stderr
