"""Settings of one studio deployment, with the embedded defaults of ``atelier serve``.

One data folder holds everything on a single machine::

    atelier-data/
      atelier.db        the job queue, ledger, model registry, API keys (SQLite, WAL mode)
      training-data/    bucket: uploaded training zips (and their .toml hyper-parameters)
      models/           bucket: checkpoints and LoRAs, uploaded or trained
      outputs/          bucket: generated images with JSON sidecars
      cache/            per-machine worker cache (downloaded models, LoRA folder, training runs)

A multi-machine deployment points ``database_url`` at PostgreSQL and ``storage_url`` at an S3 bucket instead;
the data folder then only holds the local cache.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from atelier.errors import AtelierError

DEFAULT_DATA_DIR = Path("atelier-data")
DATABASE_FILENAME = "atelier.db"
CACHE_DIRNAME = "cache"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback_host(host: str) -> bool:
    """True when binding ``host`` only accepts connections from this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class StudioConfig:
    """Everything the API, the workers and the watchers of one studio need to agree on.

    Build it with :meth:`for_data_dir`, which fills in the embedded defaults (SQLite and local buckets inside
    the data folder); every field can be overridden there.
    """

    data_dir: Path
    database_url: str
    storage_url: str
    cache_dir: Path
    storage_endpoint_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    min_workers: int = 0
    max_workers: int = 1
    # Worker behaviour.
    device: str | None = None
    lease_seconds: float = 30.0
    poll_seconds: float = 0.01
    progress_seconds: float = 0.25
    max_attempts: int = 3
    # How long the supervisor keeps surplus idle workers before stopping them.
    scale_down_after_seconds: float = 30.0
    supervise_seconds: float = 0.5
    # Bucket watchers: scan period, and how long an object must stay unchanged before it is processed, so that
    # files still being copied into a local folder are not picked up half-written.
    watch: bool = True
    watch_seconds: float = 1.0
    settle_seconds: float = 2.0
    # Limits on what clients may send.
    max_request_bytes: int = 64 * 1024**2
    max_upload_bytes: int = 16 * 1024**3
    max_image_pixels: int = 4096 * 4096
    max_output_pixels: int = 64 * 1024**2
    max_controlnet_units: int = 3  # ControlNet units per request
    # Training started from the training-data bucket without its own .toml.
    train_preset: str = "sd15-lora"
    # Webhooks.
    webhook_attempts: int = 6
    webhook_backoff_seconds: float = 1.0
    webhook_timeout_seconds: float = 10.0
    # Webhooks to private, loopback and link-local addresses (ATELIER_WEBHOOK_ALLOW_PRIVATE=1): off, because a
    # webhook_url is a request this server makes on a client's behalf (SSRF).
    webhook_allow_private: bool = False
    # Host names the API answers to besides the loopback ones (ATELIER_ALLOWED_HOSTS, comma-separated; "*" for
    # any). Empty: loopback names when listening on loopback; any name when listening beyond it, where keys
    # are required anyway.
    allowed_hosts: tuple[str, ...] = ()
    # How long an A1111-style request waits for its job before answering 504 (the job goes on).
    request_timeout_seconds: float = 3600.0

    @classmethod
    def for_data_dir(
        cls, data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, **overrides: Any
    ) -> StudioConfig:
        """The embedded defaults for one data folder, with ``overrides`` applied (``None`` keeps a default)."""
        root = Path(data_dir).expanduser().resolve()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise AtelierError(f"unknown studio setting {unknown[0]!r}", field=unknown[0])
        values: dict[str, Any] = {
            "data_dir": root,
            "database_url": f"sqlite:///{root / DATABASE_FILENAME}",
            "storage_url": str(root),
            "cache_dir": root / CACHE_DIRNAME,
        }
        values.update(_from_environment())
        values.update({key: value for key, value in overrides.items() if value is not None})
        if "cache_dir" in overrides and overrides["cache_dir"] is not None:
            values["cache_dir"] = Path(overrides["cache_dir"]).expanduser().resolve()
        config = cls(**values)
        config.validate()
        return config

    def with_changes(self, **changes: Any) -> StudioConfig:
        """A copy with some fields changed, validated."""
        config = replace(self, **changes)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise :class:`AtelierError` naming the first setting that cannot work."""
        _whole("port", self.port, 0, 65535)
        _whole("min_workers", self.min_workers, 0, 256)
        _whole("max_workers", self.max_workers, 0, 256)
        if self.min_workers > self.max_workers:
            raise AtelierError(
                f"min_workers ({self.min_workers}) is above max_workers ({self.max_workers})",
                field="min_workers",
            )
        _whole("max_attempts", self.max_attempts, 1, 100)
        _whole("webhook_attempts", self.webhook_attempts, 1, 100)
        for name in (
            "lease_seconds",
            "poll_seconds",
            "progress_seconds",
            "scale_down_after_seconds",
            "supervise_seconds",
            "watch_seconds",
            "webhook_backoff_seconds",
            "webhook_timeout_seconds",
            "request_timeout_seconds",
        ):
            _positive(name, getattr(self, name))
        if self.settle_seconds < 0:
            raise AtelierError("settle_seconds must be 0 or more", field="settle_seconds")
        if self.progress_seconds >= self.lease_seconds:
            raise AtelierError(
                "progress_seconds must be shorter than lease_seconds, or leases expire between heartbeats",
                field="progress_seconds",
            )
        for name in ("max_request_bytes", "max_upload_bytes", "max_image_pixels", "max_output_pixels"):
            _whole(name, getattr(self, name), 1, 2**62)
        if not self.host:
            raise AtelierError("host is empty", field="host")
        if not isinstance(self.allowed_hosts, tuple) or not all(
            isinstance(name, str) and name.strip() for name in self.allowed_hosts
        ):
            raise AtelierError("allowed_hosts must be a list of host names", field="allowed_hosts")

    def trusted_hosts(self) -> frozenset[str] | None:
        """The Host names requests may carry (None: any). Loopback names always; see ``allowed_hosts``."""
        if "*" in self.allowed_hosts:
            return None
        if not self.allowed_hosts and not is_loopback_host(self.host):
            return None
        return LOOPBACK_HOSTS | {name.strip().lower() for name in self.allowed_hosts}


LOOPBACK_HOSTS = LOOPBACK_NAMES | {"127.0.0.1", "::1"}


def _from_environment() -> dict[str, Any]:
    """Settings a deployment gives as ``ATELIER_*`` environment variables."""
    values: dict[str, Any] = {}
    allow_private = os.environ.get("ATELIER_WEBHOOK_ALLOW_PRIVATE", "").strip().lower()
    if allow_private:
        values["webhook_allow_private"] = allow_private in ("1", "true", "yes", "on")
    hosts = os.environ.get("ATELIER_ALLOWED_HOSTS", "").strip()
    if hosts:
        values["allowed_hosts"] = tuple(name.strip() for name in hosts.split(",") if name.strip())
    return values


def _whole(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AtelierError(f"{name} must be a whole number from {low} to {high}, got {value!r}", field=name)


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise AtelierError(f"{name} must be a number above 0, got {value!r}", field=name)
