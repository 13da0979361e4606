"""API keys, pixel limits and untrusted image decoding.

Request body sizes are limited by FastAPI's own ``max_body_size`` (set per route in :mod:`atelier.service.api`).

API keys are random tokens shown once at creation (``atelier keys create NAME``); the database keeps only their
SHA-256, so a leaked database does not leak working keys. A fast hash is enough here because the tokens carry
256 bits of randomness: there is nothing to brute-force, unlike passwords.

Keys are required as soon as one exists, and always when the server listens on a non-loopback address (it
refuses to start there without one). A key is a ``user`` (sees and stops only its own jobs and outputs; uses
the shared models) or an ``admin`` (everything, including overwriting and deleting models and changing studio
options). Without keys, the studio on loopback stays single-user and open: its one user is an admin. Clients send a key as ``Authorization: Bearer <key>``, as
``X-API-Key: <key>``, or as the password of HTTP basic auth, which is how A1111 clients such as ``webuiapi``
authenticate (``--api-auth``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from PIL import Image
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from atelier.errors import AtelierError, NotFoundError
from atelier.images import open_image
from atelier.service.database import UtcDateTime, json_row, metadata, migrate, utc_now

KEY_PREFIX = "atk_"
_KEY_NAME_MAX = 100
ROLES = ("user", "admin")
# Keys made elsewhere and installed (ApiKeyStore.install): as hard to guess as the ones Atelier makes.
MIN_INSTALLED_KEY_LENGTH = 32

api_keys_table = sa.Table(
    "api_keys",
    metadata,
    sa.Column("name", sa.String(_KEY_NAME_MAX), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    # The first characters of the key, to tell keys apart in listings without revealing them.
    sa.Column("hint", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime),
    # Keys made before roles existed could do everything: migration 0002 made them admins.
    sa.Column("role", sa.String(16), nullable=False, server_default="admin"),
)


@dataclass(frozen=True)
class ApiKey:
    """A stored API key: its name and metadata, never the key itself."""

    name: str
    key_hash: str
    hint: str
    created_at: datetime
    revoked_at: datetime | None
    role: str

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict[str, Any]:
        return json_row(self, leave_out=("key_hash",))


@dataclass(frozen=True)
class Caller:
    """Who makes a request: the API key's name (None without keys) and its role."""

    name: str | None
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_see(self, owner: str | None) -> bool:
        """Whether this caller may see or change what ``owner`` made (a job, its outputs)."""
        return self.is_admin or (owner is not None and owner == self.name)


# The single user of a studio without keys (on loopback): it may do everything.
OPEN_STUDIO = Caller(None, "admin")


def hash_key(key: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeyStore:
    """API keys in the studio database (shared by every API process)."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self._clock = clock
        migrate(engine)

    def create(self, name: str, *, role: str = "user") -> tuple[ApiKey, str]:
        """Create a key named ``name``; return it and the secret, which is not stored and cannot be shown again."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        return self._insert(name, secret, role), secret

    def install(self, name: str, secret: str, *, role: str = "user") -> bool:
        """Store a key made elsewhere (a Kubernetes Secret, a Compose ``.env``); False if it is already stored.

        Deployments start the API on a non-loopback address, which needs a key first; they cannot run
        ``keys create`` by hand and catch its output, so the key comes from their secret store instead. Running
        it again with the same key does nothing, so an init step may run on every start; the name holding
        another key is refused (revoke it first, then install the new one under a new name).
        """
        if not isinstance(secret, str) or len(secret) < MIN_INSTALLED_KEY_LENGTH or secret != secret.strip():
            raise AtelierError(
                f"the key must be at least {MIN_INSTALLED_KEY_LENGTH} characters without spaces around it "
                "(e.g. from 'openssl rand -hex 32')",
                field="key",
            )
        for attempt in range(2):
            existing = next((key for key in self.list() if key.name == name), None)
            if existing is not None:
                if existing.key_hash != hash_key(secret) or existing.role != role or not existing.active:
                    raise AtelierError(
                        f"an API key named {name!r} already exists with another key, role or state",
                        field="name",
                    )
                return False
            try:
                self._insert(name, secret, role)
                return True
            except AtelierError:
                # Two replicas starting together: the other one inserted it first; look again once.
                if attempt:
                    raise
        return False

    def _insert(self, name: str, secret: str, role: str) -> ApiKey:
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= _KEY_NAME_MAX or name != name.strip():
            raise AtelierError(f"key name must be 1 to {_KEY_NAME_MAX} characters of text", field="name")
        if role not in ROLES:
            raise AtelierError(f"role must be one of {', '.join(ROLES)}", field="role")
        values: dict[str, Any] = {
            "name": name,
            "key_hash": hash_key(secret),
            "hint": secret[: len(KEY_PREFIX) + 4],
            "created_at": self._clock(),
            "revoked_at": None,
            "role": role,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(api_keys_table.insert().values(**values))
        except IntegrityError:
            raise AtelierError(f"an API key named {name!r} already exists", field="name") from None
        return ApiKey(**values)

    def list(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(api_keys_table).order_by(api_keys_table.c.created_at)).all()
        return [ApiKey(**row._mapping) for row in rows]

    def revoke(self, name: str) -> ApiKey:
        """Stop a key from working; :class:`NotFoundError` for an unknown name."""
        with self.engine.begin() as conn:
            conn.execute(
                api_keys_table.update()
                .where(api_keys_table.c.name == name, api_keys_table.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
            row = conn.execute(sa.select(api_keys_table).where(api_keys_table.c.name == name)).one_or_none()
        if row is None:
            raise NotFoundError(f"no API key named {name!r}", field="name")
        return ApiKey(**row._mapping)

    def any_active(self) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(api_keys_table.c.name).where(api_keys_table.c.revoked_at.is_(None)).limit(1)
            ).first()
        return found is not None

    def verify(self, key: str) -> ApiKey | None:
        """The active key matching ``key``, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(api_keys_table).where(
                    api_keys_table.c.key_hash == hash_key(key), api_keys_table.c.revoked_at.is_(None)
                )
            ).one_or_none()
        return None if row is None else ApiKey(**row._mapping)


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The API key a request carries (bearer token, ``X-API-Key`` or basic-auth password), if any."""
    explicit = headers.get("x-api-key")
    if explicit:
        return explicit.strip()
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _user, separator, password = decoded.partition(":")
        return password if separator and password else None
    return None


class AccessPolicy:
    """Decides whether a request may pass. Answers are cached briefly so most requests cost no query.

    ``always_required`` is set when the server listens beyond loopback: then even a studio without keys refuses
    every request (``serve`` does not start in that state, but a key revoked later must not open the door).
    """

    def __init__(self, keys: ApiKeyStore, *, always_required: bool, cache_seconds: float = 1.0) -> None:
        self.keys = keys
        self.always_required = always_required
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._required_until = 0.0
        self._required = True
        self._verified: dict[str, tuple[float, Caller]] = {}

    def keys_required(self) -> bool:
        if self.always_required:
            return True
        now = time.monotonic()
        with self._lock:
            if now < self._required_until:
                return self._required
        required = self.keys.any_active()
        with self._lock:
            self._required, self._required_until = required, now + self.cache_seconds
        return required

    def allows(self, key: str | None) -> bool:
        """True if a request carrying ``key`` (None: no key) may proceed."""
        return self.identify(key) is not None

    def identify(self, key: str | None) -> Caller | None:
        """Who a request carrying ``key`` is (its name is recorded as job owner), or None if it may not pass."""
        if not key:
            return None if self.keys_required() else OPEN_STUDIO
        digest = hash_key(key)
        now = time.monotonic()
        with self._lock:
            cached = self._verified.get(digest)
            if cached is not None and cached[0] > now:
                return cached[1]
        found = self.keys.verify(key)
        if found is None:
            return None if self.keys_required() else OPEN_STUDIO
        caller = Caller(found.name, found.role)
        with self._lock:
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[digest] = (now + self.cache_seconds, caller)
        return caller


# ---------------------------------------------------------------------------------------------------------
# Request bodies and images.


def decode_image(text: object, *, field: str, max_pixels: int) -> Image.Image:
    """Decode a base64 image (optionally a ``data:image/...;base64,`` URL) sent by a client.

    The pixel count is checked from the header before any pixel data is decoded, so an image bomb costs
    nothing. Raises :class:`AtelierError` naming ``field`` for anything that is not a readable image.
    """
    return decode_upload(text, field=field, max_pixels=max_pixels)[1]


def decode_upload(text: object, *, field: str, max_pixels: int) -> tuple[bytes, Image.Image]:
    """:func:`decode_image`, with the file's own bytes: what a copy or a provenance record must keep."""
    if not isinstance(text, str) or not text.strip():
        raise AtelierError(f"{field} must be a base64-encoded image", field=field)
    encoded = text.strip()
    if encoded.startswith("data:"):
        header, _, encoded = encoded.partition(",")
        if not header.endswith(";base64"):
            raise AtelierError(f"{field} must be a base64 data URL", field=field)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise AtelierError(f"{field} is not valid base64", field=field) from None
    return data, open_image(data, field=field, max_pixels=max_pixels)
