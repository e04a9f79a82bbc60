"""Webhook notifications, so a user can leave a build (ghost mode) and hear when it completes, fails or pauses.

A notification is one JSON POST. Delivery retries with exponential backoff on the injected
clock; what counts as what:

* 2xx: delivered;
* 408, 429, 5xx, timeouts and connection errors: retried (``Retry-After`` in seconds is
  honoured, capped at ``backoff_max_s``), up to ``max_attempts`` attempts in all;
* any other status (other 4xx, a 3xx — redirects are not followed): given up at once,
  because sending the same request again cannot succeed.

A notification that could not be delivered is logged and reported in the returned
:class:`DeliveryResult`; it never raises, because a build must not fail for want of a
webhook. The destination is checked before each attempt (:mod:`coordinator.webhooks`): the
host is resolved by the injected resolver, every address of the answer must be public (unless
the operator allows internal ones), and the connection goes to a checked address — the URL's
host stays in the ``Host`` header and, for https, in the TLS server name, so certificates are
verified against it. A refused destination is given up at once, before any connection; a name
that does not resolve is retried like a refused connection. Environment proxies are ignored
(they would connect on our behalf, unchecked).

With a secret configured, each request is signed (``X-Kriptik-Signature``, an HMAC-SHA256 over
the timestamp and the body, as Stripe does), so the receiver can check it came from us and is
fresh. ``X-Kriptik-Delivery`` stays the same across retries so the
receiver can drop duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from coordinator.clock import Clock, SystemClock
from coordinator.store.schema import BuildSession, SessionStatus
from coordinator.webhooks import (
    DEFAULT_EVENTS,
    NotifyEvent,
    Resolver,
    WebhookTargetError,
    check_url,
    resolve_checked,
    system_resolver,
)

logger = logging.getLogger(__name__)

NotificationKind = Literal["build.completed", "build.failed", "build.paused", "build.budget_warning", "build.blocked"]
"""``build.{event}`` for each :data:`~coordinator.webhooks.NotifyEvent` a user can ask for."""

KIND_OF_STATUS: dict[SessionStatus, NotificationKind] = {
    SessionStatus.COMPLETED: "build.completed",
    SessionStatus.FAILED: "build.failed",
    SessionStatus.PAUSED: "build.paused",
}
"""Session statuses a user is told about, and the notification each sends."""


def kind_of(event: NotifyEvent) -> NotificationKind:
    """The notification kind a user's event name stands for (``completed`` → ``build.completed``)."""
    kinds: dict[str, NotificationKind] = {
        "completed": "build.completed",
        "failed": "build.failed",
        "paused": "build.paused",
        "budget_warning": "build.budget_warning",
        "blocked": "build.blocked",
    }
    return kinds[event]


SIGNATURE_HEADER = "X-Kriptik-Signature"
DELIVERY_HEADER = "X-Kriptik-Delivery"
EVENT_HEADER = "X-Kriptik-Event"
_RETRYABLE_STATUS = frozenset({408, 429})


class WebhookConfig(BaseModel):
    """Where notifications go and how hard delivery tries."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["webhook"] = "webhook"
    allow_private: bool = False
    """The operator's allowance of loopback, private and link-local destinations; never a user's to set.
    (Before ``url``: the check of ``url`` reads it.)"""
    url: str
    """Endpoint receiving the POSTs (http or https); its destination is checked (:mod:`coordinator.webhooks`)."""
    secret: SecretStr | None = None
    """Shared secret for the HMAC signature header; unsigned without it."""
    max_attempts: int = Field(default=5, ge=1, le=20)
    """Attempts in all (the first one included) before giving up."""
    backoff_base_s: float = Field(default=1.0, ge=0)
    """Wait after the first failed attempt; doubles after each further one."""
    backoff_max_s: float = Field(default=60.0, ge=0)
    """Ceiling of a wait, also of a server's ``Retry-After``."""
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    """Bound on one HTTP attempt; past it the attempt counts as failed and is retried."""
    kinds: frozenset[NotificationKind] = frozenset(kind_of(event) for event in DEFAULT_EVENTS)
    """Kinds to send; the others are skipped (reported as delivered=False, attempts=0)."""

    @field_validator("url")
    @classmethod
    def _allowed_url(cls, value: str, info: ValidationInfo) -> str:
        # A field validator, so a refusal quotes the URL only, never the input holding the secret.
        return check_url(value, allow_private=bool(info.data.get("allow_private")))  # a ValueError

    @classmethod
    def for_events(
        cls, url: str, secret: str | None, events: list[NotifyEvent], *, allow_private: bool
    ) -> WebhookConfig:
        """The config of a user's notification settings (``coordinator.api_models.NotifySettings``)."""
        return cls(
            url=url,
            secret=SecretStr(secret) if secret else None,
            allow_private=allow_private,
            kinds=frozenset(kind_of(event) for event in events),
        )


class Notification(BaseModel):
    """The JSON body of one webhook POST."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: NotificationKind
    build_id: str
    status: str
    """The build's status when the notification was made."""
    summary: str = ""
    """One human-readable paragraph: what was built, what failed, why it paused."""
    user_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    """Extra details (preview URL, error, budget figures)."""
    created_at: float
    delivery_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    """Same on every retry of this notification, so receivers can drop duplicates."""


class DeliveryResult(BaseModel):
    """How one notification's delivery ended."""

    model_config = ConfigDict(extra="forbid")

    delivered: bool
    attempts: int
    status_code: int | None = None
    """HTTP status of the last attempt that got an answer."""
    error: str | None = None
    """Why it was not delivered."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value: ``t={timestamp},v1={hex HMAC-SHA256 of "{timestamp}." + body}``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class WebhookNotifier:
    """Delivers notifications to one webhook.

    Args:
        config: The endpoint and retry policy.
        clock: Timestamps and backoff waits (a FakeClock in tests).
        transport: HTTP transport for the client (``httpx.MockTransport`` in unit tests).
        resolver: How the webhook's host is resolved before each attempt (a stub in unit tests).

    The constructor does no I/O; the HTTP client is created on first delivery.
    """

    def __init__(
        self,
        config: WebhookConfig,
        *,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._transport = transport
        self._resolver: Resolver = resolver or system_resolver
        self._client: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> WebhookNotifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- what the coordinator calls ----------------------------------------------------

    async def notify_session(
        self, session: BuildSession, summary: str = "", data: dict[str, Any] | None = None
    ) -> DeliveryResult | None:
        """Tell the build's owner about its status, if it is one users hear about.

        Returns:
            The delivery result, or ``None`` when the status sends nothing (queued, running, cancelled).
        """
        kind = KIND_OF_STATUS.get(session.status)
        if kind is None:
            return None
        details = dict(data or {})
        if session.error and "error" not in details:
            details["error"] = session.error
        notification = Notification(
            kind=kind,
            build_id=session.id,
            status=session.status.value,
            summary=summary,
            user_id=session.user_id,
            data=details,
            created_at=self.clock.now(),
        )
        return await self.deliver(notification)

    async def deliver(self, notification: Notification) -> DeliveryResult:
        """POST one notification, retrying as the module docstring says; never raises for delivery failures.

        Returns:
            Whether it was delivered, after how many attempts, and the last status or error.
        """
        if notification.kind not in self.config.kinds:
            return DeliveryResult(delivered=False, attempts=0, error=f"{notification.kind} is not configured")
        body = notification.model_dump_json().encode()
        status_code: int | None = None
        error = ""
        for attempt in range(1, self.config.max_attempts + 1):
            retry_after: float | None = None
            try:
                response = await self._post(body, self._headers(notification, body))
            except WebhookTargetError as exc:
                logger.warning(
                    "notification %s of build %s not sent: %s", notification.kind, notification.build_id, exc
                )
                return DeliveryResult(delivered=False, attempts=attempt, error=str(exc))
            except (httpx.TransportError, OSError) as exc:  # timeouts, refused connections, names that do not resolve
                error = f"{type(exc).__name__}: {exc}"
            else:
                status_code = response.status_code
                if response.is_success:
                    logger.info("notification %s of build %s delivered", notification.kind, notification.build_id)
                    return DeliveryResult(delivered=True, attempts=attempt, status_code=status_code)
                error = f"HTTP {status_code}"
                if not (status_code in _RETRYABLE_STATUS or status_code >= 500):
                    logger.warning(
                        "notification %s of build %s refused with HTTP %d; not retrying",
                        notification.kind,
                        notification.build_id,
                        status_code,
                    )
                    return DeliveryResult(delivered=False, attempts=attempt, status_code=status_code, error=error)
                retry_after = _retry_after(response)
            if attempt < self.config.max_attempts:
                await self.clock.sleep(self._backoff(attempt, retry_after))
        logger.warning(
            "notification %s of build %s not delivered after %d attempts: %s",
            notification.kind,
            notification.build_id,
            self.config.max_attempts,
            error,
        )
        return DeliveryResult(delivered=False, attempts=self.config.max_attempts, status_code=status_code, error=error)

    # --- helpers -----------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=self.config.timeout_s, follow_redirects=False, trust_env=False
            )
        return self._client

    async def _post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """One POST to a checked address of the webhook's host (the module docstring says why)."""
        url = httpx.URL(self.config.url)
        host = url.raw_host.decode("ascii")  # IDNA-encoded, as the resolver and TLS want it
        port = url.port or (443 if url.scheme == "https" else 80)
        address = await resolve_checked(host, port, resolver=self._resolver, allow_private=self.config.allow_private)
        extensions: dict[str, Any] = {}
        if address != host:  # a name: connect to the address checked, present the name
            headers = {**headers, "Host": url.netloc.decode("ascii")}
            if url.scheme == "https":
                extensions["sni_hostname"] = host
            url = url.copy_with(host=address)
        return await self._http().post(url, content=body, headers=headers, extensions=extensions)

    def _headers(self, notification: Notification, body: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "kriptik-fleet-webhook/1",
            EVENT_HEADER: notification.kind,
            DELIVERY_HEADER: notification.delivery_id,
        }
        if self.config.secret is not None:
            # Signed at each attempt with the time of sending, so a receiver may reject stale replays.
            headers[SIGNATURE_HEADER] = sign(self.config.secret.get_secret_value(), int(self.clock.now()), body)
        return headers

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.config.backoff_max_s)
        return min(self.config.backoff_base_s * 2.0 ** (attempt - 1), self.config.backoff_max_s)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # absent, or an HTTP date: use our own backoff
