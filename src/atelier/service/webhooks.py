"""Webhooks: a URL per job, called once the job has finished, retried with exponential backoff.

When a job with a webhook is submitted, the job store writes a delivery row with it, in the same transaction. A
dispatcher (running in ``atelier serve``) picks deliveries whose job has finished, POSTs the job as JSON, and on failure (connection
error, timeout, 5xx, 408, 429) tries again after 1 s, 2 s, 4 s, ... until the attempts run out. Several
dispatchers may run against one database: each takes a delivery with a short lease before sending, so a
finished job is announced once (at least once if a dispatcher dies in the middle of a request).

The body is ``{"event": "job.finished", "job": {...}}`` with the job's id, kind, state, error and result;
headers ``X-Atelier-Event`` and ``X-Atelier-Job`` repeat the event and the job id.

**Signed**, as the Standard Webhooks specification says (https://www.standardwebhooks.com): headers
``webhook-id`` (the same on every retry of one delivery), ``webhook-timestamp`` and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` with the studio's secret, ``whsec_...``), so a receiver
verifies it with any Standard Webhooks library. The secret is made once per studio and shown to admins
(``GET /api/webhooks/secret``, ``atelier webhooks secret``).

**Safe targets.** A webhook URL is a request this server makes for a client, so it must not reach what only
the server can reach (SSRF): cloud metadata at 169.254.169.254, a database on 10.0.0.1, the studio's own
``/sdapi/v1/interrupt`` on 127.0.0.1. Only http(s) is accepted; the host's addresses are resolved when each
delivery is sent, every one must be a public address, and the request goes to the checked address itself
(the host name travels in the Host header and TLS SNI), so DNS cannot swap the address between check and
connection. Redirects are not followed. ``webhook_allow_private`` (``ATELIER_WEBHOOK_ALLOW_PRIVATE=1``) lifts
the address rule for studios whose receivers live on a private network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx

from atelier import __version__
from atelier.errors import AtelierError
from atelier.service.config import LOOPBACK_NAMES
from atelier.service.database import utc_now
from atelier.service.jobs import Delivery, Job, JobStore
from atelier.service.registry import StudioSettings

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 600.0
RETRIED_STATUSES = frozenset({408, 425, 429})

Sender = Callable[[str, bytes, dict[str, str], float], int]
SECRET_SETTING = "webhook_secret"
SECRET_PREFIX = "whsec_"


class UnsafeWebhookError(AtelierError):
    """A webhook URL that may not be called: not http(s), or an address only this server should reach."""


def _address_is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    # is_global leaves out private, loopback, link-local (cloud metadata), shared (CGNAT), reserved and
    # unspecified ranges; multicast is never a webhook receiver either.
    return address.is_global and not address.is_multicast


def check_webhook_url(url: object, *, allow_private: bool) -> tuple[str, str, int]:
    """Check a webhook URL's form (and its address when it is written as one); return (scheme, host, port).

    Host names are resolved and checked at delivery time, see :func:`resolve_webhook_host`.
    """
    if not isinstance(url, str) or len(url) > 2000:
        raise UnsafeWebhookError("webhook_url must be an http(s) URL", field="webhook_url")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise UnsafeWebhookError(f"webhook_url {url!r} is not a valid URL", field="webhook_url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UnsafeWebhookError(f"webhook_url must be an http(s) URL, got {url!r}", field="webhook_url")
    if parsed.userinfo:
        raise UnsafeWebhookError("webhook_url may not carry a user name or password", field="webhook_url")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host = parsed.host
    if not allow_private:
        literal = _ip_literal(host)
        if (literal is not None and not _address_is_public(literal)) or host.lower() in LOOPBACK_NAMES:
            raise UnsafeWebhookError(_private_message(host), field="webhook_url")
    return parsed.scheme, host, port


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an address when it is written as one, including the forms resolvers accept for IPv4
    ("2130706433", "127.1", "0x7f.0.0.1"); None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(part.isalnum() for part in host.split(".")) and host.replace(".", "").isalnum():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _private_message(host: str) -> str:
    return (
        f"webhook_url host {host} is a private, loopback or link-local address, which webhooks may not call "
        "(set ATELIER_WEBHOOK_ALLOW_PRIVATE=1 for receivers on a private network)"
    )


def resolve_webhook_host(host: str, port: int, *, allow_private: bool) -> str:
    """The address to connect to for ``host``: every address it resolves to must be public (or allowed)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpx.ConnectError(f"cannot resolve {host}: {exc}") from None
    # IPv4 and IPv6 socket addresses start with the address as text (str() only tells the type checker so).
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in found]
    if not addresses:
        raise httpx.ConnectError(f"{host} has no address")
    if not allow_private and not all(_address_is_public(address) for address in addresses):
        raise UnsafeWebhookError(_private_message(host), field="webhook_url")
    return str(addresses[0])


def pinned_post(allow_private: bool) -> Sender:
    """A sender that POSTs to the address it checked, never to what a second DNS lookup might return."""

    def send(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        scheme, host, port = check_webhook_url(url, allow_private=allow_private)
        address = resolve_webhook_host(host, port, allow_private=allow_private)
        target = httpx.URL(url).copy_with(host=address)
        request_headers = {**headers, "Host": httpx.URL(url).netloc.decode("ascii")}
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            response = client.post(
                target,
                content=body,
                headers=request_headers,
                # TLS checks the certificate against the name, not the address we connect to.
                extensions={"sni_hostname": host} if scheme == "https" else None,
            )
        return response.status_code

    return send


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value of ``body``."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


class WebhookDeliveries:
    """The delivery table and the logic that sends due deliveries."""

    def __init__(
        self,
        store: JobStore,
        settings: StudioSettings,
        *,
        attempts: int = 6,
        backoff_seconds: float = 1.0,
        timeout_seconds: float = 10.0,
        allow_private: bool = False,
        send: Sender | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.allow_private = allow_private
        self._send = send or pinned_post(allow_private)
        self._clock = clock
        self._settings = settings

    def check_url(self, url: object) -> str:
        """Refuse, at submission, a webhook URL that could never be delivered (see the module docstring)."""
        check_webhook_url(url, allow_private=self.allow_private)
        return str(url)

    def secret(self) -> str:
        """The studio's signing secret, made on first use and shared by every API process."""
        stored = self._settings.get(SECRET_SETTING)
        if isinstance(stored, str) and stored.startswith(SECRET_PREFIX):
            return stored
        self._settings.insert_if_missing(SECRET_SETTING, new_secret())
        return str(self._settings.get(SECRET_SETTING))

    def get(self, job_id: str) -> Delivery | None:
        """The delivery of ``job_id``'s webhook (written with the job by the store), if it has one."""
        return self.store.delivery(job_id)

    def deliver_due(self, limit: int = 20) -> int:
        """Send every due delivery (up to ``limit``); return how many were attempted."""
        # Held long enough for the request to finish before another dispatcher may take it.
        taken = self.store.take_due_deliveries(limit, hold_seconds=self.timeout_seconds * 2 + 5)
        for delivery, job in taken:
            self._deliver(delivery, job)
        return len(taken)

    def _deliver(self, delivery: Delivery, job: Job) -> None:
        announced = {
            "id": job.id,
            "kind": job.kind,
            "state": job.state,
            "error": job.error,
            "result": job.result,
            "attempts": job.attempts,
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
        }
        body = json.dumps({"event": "job.finished", "job": announced}, separators=(",", ":")).encode("utf-8")
        message_id = f"msg_{delivery.job_id}"
        timestamp = int(self._clock().timestamp())
        headers = {
            "User-Agent": f"atelier/{__version__}",
            "Content-Type": "application/json",
            "X-Atelier-Event": "job.finished",
            "X-Atelier-Job": delivery.job_id,
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.secret(), message_id, timestamp, body),
        }
        status: int | None = None
        refused = False
        try:
            status = self._send(delivery.url, body, headers, self.timeout_seconds)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except UnsafeWebhookError as exc:
            error, refused = str(exc), True
        now = self._clock()
        if error is None:
            values: dict[str, Any] = {"state": "delivered", "delivered_at": now, "last_status": status}
            logger.info("webhook for job %s delivered to %s", delivery.job_id, delivery.url)
        else:
            # A refused address stays refused: retrying cannot help.
            retry = not refused and (status is None or status >= 500 or status in RETRIED_STATUSES)
            if retry and delivery.attempts < self.attempts:
                wait = min(self.backoff_seconds * 2 ** (delivery.attempts - 1), MAX_BACKOFF_SECONDS)
                values = {"next_attempt_at": now + timedelta(seconds=wait)}
                logger.info(
                    "webhook for job %s failed (%s); retry %d in %.1fs",
                    delivery.job_id,
                    error,
                    delivery.attempts,
                    wait,
                )
            else:
                values = {"state": "failed"}
                logger.warning(
                    "webhook for job %s gave up after %d attempts: %s",
                    delivery.job_id,
                    delivery.attempts,
                    error,
                )
            values.update(last_status=status, last_error=error)
        self.store.record_delivery(delivery.job_id, **values)

    def run(self, stop: threading.Event, interval: float) -> None:
        """Deliver until ``stop`` is set (for a background thread)."""
        while not stop.is_set():
            try:
                sent = self.deliver_due()
            except Exception:
                logger.exception("webhook dispatcher failed; continuing")
                sent = 0
            if not sent:
                stop.wait(interval)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
