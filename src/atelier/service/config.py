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
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from atelier.config_models import ConfigModel, config_error, unknown_key_error
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


class StudioConfig(ConfigModel, BaseSettings):
    """Everything the API, the workers and the watchers of one studio need to agree on.

    Build it with :meth:`for_data_dir`, which fills in the embedded defaults (SQLite and local buckets inside
    the data folder). Every field can also come from an ``ATELIER_<FIELD>`` environment variable
    (``ATELIER_DATABASE_URL``, ``ATELIER_STORAGE_URL``, ``ATELIER_MAX_WORKERS``, ...), as container deployments
    configure their programs; explicit values (CLI flags) win over the environment, which wins over the defaults.
    """

    # Not strict: environment variables are text ("4" is meant as 4).
    model_config = SettingsConfigDict(
        env_prefix="ATELIER_", env_ignore_empty=True, extra="forbid", frozen=True, strict=False
    )
    config_name: ClassVar[str] = "studio settings"

    data_dir: Path = DEFAULT_DATA_DIR
    # Derived from data_dir when not given (see _embedded_defaults).
    database_url: str = ""
    storage_url: str = ""
    cache_dir: Path = Path()
    storage_endpoint_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    # Local generation workers: one stays warm (model loaded) when idle; 0 workers at most runs none here.
    min_workers: int = 1
    max_workers: int = 1
    # Local training workers, a lane of their own so generation keeps running while a LoRA trains.
    max_train_workers: int = 1
    # Worker behaviour.
    device: str | None = None
    lease_seconds: float = 30.0
    poll_seconds: float = 0.01
    progress_seconds: float = 0.25
    max_attempts: int = 3
    # How long a worker beyond the minimum may sit without a job (counted from its last job) before it stops.
    scale_down_after_seconds: float = 30.0
    # On SIGTERM (scale-down, deploys) a worker finishes its job within this many seconds, else hands it back
    # to the queue at the next step; the supervisor kills a worker still running this long after asking.
    stop_grace_seconds: float = 20.0
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
    # Memory that loaded checkpoints may take in RAM (GB): models switched away from stay there, ready in a
    # second, while they fit. Empty: half of the machine's memory.
    model_memory_gb: float | None = None
    # How generation workers run models (README "Speed on a GPU"): auto = fp16 on CUDA, fp32 on the CPU; compile
    # = torch.compile the UNet and VAE decoder, its graphs cached in cache_dir/compile; a compiled UNet switches
    # LoRAs by hot-swapping them into compiled_lora_slots slots of rank up to lora_max_rank, without recompiling.
    precision: str = "auto"
    compile: bool = False
    compile_mode: str | None = None
    fuse_qkv: bool = False
    compiled_lora_slots: int = 1
    lora_max_rank: int = 64
    # A live preview of a generation every this many steps (0: none), sent with its progress.
    preview_every_steps: int = 5
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
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    # How long an A1111-style request waits for its job before answering 504 (the job goes on).
    request_timeout_seconds: float = 3600.0
    # Content Credentials (C2PA, README "Provenance"): outputs are signed when a certificate chain (PEM,
    # end-entity first) is set with its private key (PEM) or with a signing function "package.module:function"
    # (a KMS or HSM keeps the key). c2pa_algorithm is the callback's (es256 by default); a key file says its own.
    c2pa_cert: Path | None = None
    c2pa_key: Path | None = None
    c2pa_sign_callback: str | None = None
    c2pa_algorithm: str | None = None
    c2pa_tsa_url: str | None = None  # an RFC 3161 time-stamp authority: signatures outlive the certificate
    # CAs (PEM) whose signatures count as trusted when this studio reads credentials back (the C2PA trust list).
    c2pa_trust_anchors: Path | None = None
    # Commercial work (README "Provenance"): refuse, when a request arrives, every model (checkpoint, refiner, VAE,
    # LoRA, embedding, ControlNet, training base) whose licence does not allow commercial use, or is unknown.
    commercial_use: bool = False
    # Refuse training uploads that carry no rights record (owner, people shown, consent): rights.toml in the zip,
    # [rights] in the .toml beside it, or `rights` in POST /api/train. Off: such a LoRA is trained, without one.
    require_training_rights: bool = False

    def speed_settings(self) -> Any:
        """The engine's :class:`~atelier.engine.SpeedSettings` for these settings (torch-free to build)."""
        from atelier.engine import SpeedSettings

        return SpeedSettings(
            compile=self.compile,
            compile_mode=self.compile_mode,
            compile_cache_dir=self.cache_dir / "compile",
            fuse_qkv=self.fuse_qkv,
            lora_slots=self.compiled_lora_slots,
            lora_max_rank=self.lora_max_rank,
        )

    @classmethod
    def for_data_dir(cls, data_dir: str | os.PathLike[str] | None = None, **overrides: Any) -> StudioConfig:
        """The embedded defaults for one data folder, with ``overrides`` applied (``None`` keeps a default).

        With no ``data_dir``, ``ATELIER_DATA_DIR`` or ``./atelier-data``.
        """
        unknown = sorted(set(overrides) - set(cls.model_fields))
        if unknown:
            raise unknown_key_error(unknown[0], cls.model_fields, where=cls.config_name)
        values = {key: value for key, value in overrides.items() if value is not None}
        if data_dir is not None:
            values["data_dir"] = data_dir
        try:
            return cls(**values)
        except ValidationError as exc:
            raise config_error(exc, cls, cls.config_name) from None

    @model_validator(mode="before")
    @classmethod
    def _embedded_defaults(cls, data: Any) -> Any:
        """SQLite, the buckets and the cache inside the data folder, for whatever was not given."""
        if not isinstance(data, dict):
            return data
        values = dict(data)
        root = Path(values.get("data_dir") or DEFAULT_DATA_DIR).expanduser().resolve()
        values["data_dir"] = root
        values.setdefault("database_url", f"sqlite:///{root / DATABASE_FILENAME}")
        values.setdefault("storage_url", str(root))
        values["cache_dir"] = Path(values.get("cache_dir") or root / CACHE_DIRNAME).expanduser().resolve()
        return values

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_host_list(cls, value: Any) -> Any:
        # ATELIER_ALLOWED_HOSTS=studio.example.com,atelier.internal, the way such variables are usually written.
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @model_validator(mode="after")
    def _check(self) -> StudioConfig:
        """Raise :class:`AtelierError` naming the first setting that cannot work."""
        _whole("port", self.port, 0, 65535)
        _whole("min_workers", self.min_workers, 0, 256)
        _whole("max_workers", self.max_workers, 0, 256)
        _whole("max_train_workers", self.max_train_workers, 0, 256)
        # With max_workers 0 this server runs no workers at all, so the minimum does not apply.
        if self.max_workers and self.min_workers > self.max_workers:
            raise AtelierError(
                f"min_workers ({self.min_workers}) is above max_workers ({self.max_workers})",
                field="min_workers",
            )
        _whole("max_attempts", self.max_attempts, 1, 100)
        _whole("preview_every_steps", self.preview_every_steps, 0, 1000)
        if self.model_memory_gb is not None:
            _positive("model_memory_gb", self.model_memory_gb)
        self.speed_settings().validate()
        from atelier.engine import check_precision

        check_precision(self.precision)
        _whole("webhook_attempts", self.webhook_attempts, 1, 100)
        for name in (
            "lease_seconds",
            "poll_seconds",
            "progress_seconds",
            "scale_down_after_seconds",
            "stop_grace_seconds",
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
        if not all(name.strip() for name in self.allowed_hosts):
            raise AtelierError("allowed_hosts must be a list of host names", field="allowed_hosts")
        return self

    def trusted_hosts(self) -> frozenset[str] | None:
        """The Host names requests may carry (None: any). Loopback names always; see ``allowed_hosts``."""
        if "*" in self.allowed_hosts:
            return None
        if not self.allowed_hosts and not is_loopback_host(self.host):
            return None
        return LOOPBACK_HOSTS | {name.strip().lower() for name in self.allowed_hosts}


LOOPBACK_HOSTS = LOOPBACK_NAMES | {"127.0.0.1", "::1"}


def _whole(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AtelierError(f"{name} must be a whole number from {low} to {high}, got {value!r}", field=name)


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise AtelierError(f"{name} must be a number above 0, got {value!r}", field=name)
