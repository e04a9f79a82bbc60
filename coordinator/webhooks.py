"""Where a ghost-mode webhook may point, and what a user may ask to hear about.

A webhook URL comes from a user, and our processes POST to it from inside the operator's
network: unchecked, a user could make the fleet reach its loopback services, the cloud metadata
address or the private network behind it (server-side request forgery). So a destination is
refused when an address it stands for is

* loopback (127/8, ``::1``), unspecified (``0.0.0.0``, ``::``), link-local (169.254/16 with the
  metadata address 169.254.169.254, ``fe80::/10``) or multicast (224/4, ``ff00::/8``);
* private: RFC 1918 (10/8, 172.16/12, 192.168/16), shared CGNAT (100.64/10), unique local
  (``fc00::/7``), and every other range that is not globally routable (documentation,
  benchmarking, reserved, broadcast);
* an IPv6 form that carries one of those IPv4 addresses (IPv4-mapped and -compatible, 6to4,
  the NAT64 prefix ``64:ff9b::/96``).

It is checked twice. At request time :func:`check_url` checks the URL's form (http or https, a
host) and, when the host is an IP literal or a ``localhost`` name, its address. At send time
:func:`resolve_checked` resolves the host, checks *every* address of the answer and returns one
of them for the connection, so the HTTP client never resolves the name again: a name that
answered a public address when the settings were saved and a private one now (DNS rebinding)
is refused before any packet is sent.

The operator may allow internal destinations (``KRIPTIK_WEBHOOK_ALLOW_PRIVATE``,
``ControlConfig.webhook_allow_private``: tests, on-prem receivers); the form check stays.
Floor 2 and light: the API's request models import it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, get_args
from urllib.parse import urlsplit

from sandbox_agents.errors import InvalidInputError

NotifyEvent = Literal["completed", "failed", "paused", "budget_warning", "blocked"]
"""What a user can ask to be told about a build:

* ``completed``, ``failed``: it ended;
* ``paused``: it stopped and waits for the user (its budget is spent: raise it to go on);
* ``budget_warning``: spending crossed the warning fraction of the budget (80 %);
* ``blocked``: a component's team ended a run with blocked tasks (the build retries, then fails).
"""

NOTIFY_EVENTS: tuple[NotifyEvent, ...] = get_args(NotifyEvent)
DEFAULT_EVENTS: tuple[NotifyEvent, ...] = ("completed", "failed", "paused", "budget_warning")
"""Every way a build ends or waits for its owner, and the budget warning; ``blocked`` is asked for."""

MAX_URL_LENGTH = 2048

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) → addresses``: how the sender resolves a webhook's host (a stub in tests)."""

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_ULA = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_METADATA = ipaddress.ip_address("169.254.169.254")


class WebhookTargetError(InvalidInputError):
    """A webhook destination we refuse to send to; a 422 when it comes with a request.

    Attributes:
        url: The webhook URL.
        address: The refused address (None when the URL's form is what is wrong).
        reason: Which class the address falls in (``loopback``, ``private`` …) or what is wrong with the URL.
    """

    def __init__(
        self, message: str, *, url: str, address: str | None = None, reason: str = "", field: str = "url"
    ) -> None:
        super().__init__(message, field=field)
        self.url = url
        self.address = address
        self.reason = reason


def refusal(address: Address) -> str | None:
    """Why ``address`` is no webhook destination (its class), or None when it is a public one."""
    embedded = _embedded_v4(address)
    if embedded is not None:
        inner = refusal(embedded)
        return None if inner is None else f"{inner} ({embedded} inside an IPv6 address)"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address == _METADATA:
        return "link-local (the cloud metadata address)"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address in _CGNAT:
        return "private (shared CGNAT range 100.64.0.0/10)"
    if address in _ULA:
        return "private (unique local fc00::/7)"
    if address.is_private or not address.is_global:
        return "private"
    return None


def _embedded_v4(address: Address) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _V4_COMPATIBLE and int(address) > 1):  # not :: or ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def check_url(url: str, *, allow_private: bool, field: str = "url") -> str:
    """Check a webhook URL as given: its form and, for an IP-literal or ``localhost`` host, its address.

    A host name is checked again when it is resolved to send (:func:`resolve_checked`).

    Args:
        url: The URL a user gave.
        allow_private: The operator's allowance of internal destinations.
        field: What the URL is in the caller's request (the error's ``field``).

    Returns:
        The URL, unchanged.

    Raises:
        WebhookTargetError: Not http(s), no host, a bad port, too long, or a refused address.
    """
    if len(url) > MAX_URL_LENGTH:
        raise WebhookTargetError(
            f"webhook url is longer than {MAX_URL_LENGTH} characters", url=url[:80], reason="length", field=field
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise WebhookTargetError(f"webhook url {url!r} is not a valid URL: {exc}", url=url, field=field) from None
    if parts.scheme not in ("http", "https"):
        raise WebhookTargetError(
            "webhook url must start with http:// or https://", url=url, reason="scheme", field=field
        )
    host = parts.hostname
    if not host:
        raise WebhookTargetError(f"webhook url {url!r} names no host", url=url, reason="host", field=field)
    if allow_private:
        return url
    name = host.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always the loopback
        raise _refused(url, host, "loopback", field=field)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return url  # a name: checked on what it resolves to, when sending
    reason = refusal(address)
    if reason is not None:
        raise _refused(url, str(address), reason, field=field)
    return url


async def resolve_checked(host: str, port: int, *, resolver: Resolver, allow_private: bool) -> str:
    """The address to connect to for ``host``: every address it resolves to is checked first.

    Args:
        host: The webhook's host name (or an IP literal, returned as it is once checked).
        port: Its port (some resolvers answer per service).
        resolver: How names are resolved.
        allow_private: The operator's allowance of internal destinations.

    Returns:
        The first address of the answer.

    Raises:
        WebhookTargetError: An address of the answer is refused.
        OSError: The name does not resolve (``socket.gaierror``), or resolves to nothing.
    """
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    answer = [str(literal)] if literal is not None else list(await resolver(host, port))
    if not answer:
        raise OSError(f"{host} resolves to no address")
    if not allow_private:
        for text in answer:
            reason = refusal(ipaddress.ip_address(text))
            if reason is not None:
                raise _refused(f"{host}:{port}", text, reason, resolved_from=None if literal is not None else host)
    return answer[0]


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's resolver (``getaddrinfo``, without blocking the loop): its addresses, in its order, once each."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _refused(
    url: str, address: str, reason: str, *, resolved_from: str | None = None, field: str = "url"
) -> WebhookTargetError:
    via = f" ({resolved_from} resolves to it)" if resolved_from else ""
    return WebhookTargetError(
        f"webhook destination {address}{via} is {reason}: webhooks may only reach public addresses "
        "(an operator can allow internal ones with KRIPTIK_WEBHOOK_ALLOW_PRIVATE=1)",
        url=url,
        address=address,
        reason=reason,
        field=field,
    )
