"""The browser's only way out: a SOCKS5 gate that connects to the origins it was granted.

Chromium runs in a network namespace of its own whose one listening socket is this gate's
(``--proxy-server=socks5://…``, loopback included). Every TCP connection the browser opens
is a SOCKS ``CONNECT host:port``; the gate opens it from the host only while that
``host:port`` is granted (the page being checked), and refuses everything else with reply
``0x02`` (not allowed by ruleset). So the netns is what makes the gate unavoidable, and the
gate is what decides, per connection, by origin: loopback services, other builds'
previews, private addresses and the internet are all "everything else".

A grant is counted: the origin stays reachable while any holder keeps it, and when the
last holder lets go, the connections still open to it are closed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from urllib.parse import urlsplit

from sandbox_agents.errors import InvalidInputError

logger = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
# SOCKS5 (RFC 1928) replies.
_SUCCEEDED, _NOT_ALLOWED, _HOST_UNREACHABLE, _REFUSED, _BAD_COMMAND, _BAD_ADDRESS = 0, 2, 4, 5, 7, 8

Origin = tuple[str, int]


def origin_of(url: str) -> Origin:
    """The ``(host, port)`` a URL's connections go to, as the gate compares them.

    Raises:
        InvalidInputError: the URL has no host, or a scheme without a known default port.
    """
    parts = urlsplit(url)
    host = parts.hostname
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    if not host or port is None:
        raise InvalidInputError(f"the browser cannot be granted {url!r}: no host or port", field="url")
    return normal_host(host), port


def normal_host(host: str) -> str:
    """One spelling per host: lower case, IP addresses in their canonical form."""
    host = host.strip("[]").lower()
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    return host


class SocksGate:
    """A SOCKS5 server on a given listening socket that connects only to granted origins.

    Args:
        listener: a bound, listening TCP socket (in the browser's network namespace).
        connect_timeout_s: bound on opening a granted connection from the host.
    """

    def __init__(self, listener: socket.socket, *, connect_timeout_s: float = 10.0) -> None:
        self._listener = listener
        self.connect_timeout_s = connect_timeout_s
        self._grants: dict[Origin, int] = {}
        self._open: dict[Origin, set[asyncio.StreamWriter]] = {}
        self._server: asyncio.Server | None = None
        self.refused: list[Origin] = []
        """Origins refused so far (the last 100), for logs and tests."""

    async def start(self) -> None:
        """Serve on the listener until :meth:`close`."""
        self._listener.setblocking(False)
        self._server = await asyncio.start_server(self._serve, sock=self._listener)

    def grant(self, origin: Origin) -> Callable[[], None]:
        """Let connections to ``origin`` through until the returned release is called (once)."""
        self._grants[origin] = self._grants.get(origin, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._grants.get(origin, 0) - 1
            if left > 0:
                self._grants[origin] = left
                return
            self._grants.pop(origin, None)
            for writer in self._open.pop(origin, set()):
                writer.close()

        return release

    def granted(self) -> set[Origin]:
        """The origins reachable now."""
        return set(self._grants)

    async def close(self) -> None:
        """Stop serving and close every connection."""
        self._grants.clear()
        for writers in self._open.values():
            for writer in writers:
                writer.close()
        self._open.clear()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):  # close() already dropped the clients
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    # --- one connection -------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        origin: Origin | None = None
        try:
            origin = await self._handshake(reader, writer)
            if origin is None:
                return
            if origin not in self._grants:
                self._refuse(origin)
                await _reply(writer, _NOT_ALLOWED)
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(origin[0], origin[1]), self.connect_timeout_s
                )
            except (OSError, TimeoutError) as exc:
                logger.debug("browser gate: %s:%d did not answer: %r", origin[0], origin[1], exc)
                await _reply(writer, _REFUSED if isinstance(exc, ConnectionRefusedError) else _HOST_UNREACHABLE)
                return
            upstream = up_writer
            if origin not in self._grants:  # revoked while connecting
                await _reply(writer, _NOT_ALLOWED)
                return
            await _reply(writer, _SUCCEEDED)
            self._open.setdefault(origin, set()).update((writer, up_writer))
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            logger.debug("browser gate: connection ended: %r", exc)
        finally:
            if origin is not None:
                self._open.get(origin, set()).difference_update({writer, upstream})
            for end in (writer, upstream):
                if end is not None:
                    end.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Origin | None:
        version, count = await reader.readexactly(2)
        if version != 5:
            raise ValueError(f"SOCKS version {version}")
        methods = await reader.readexactly(count)
        if 0 not in methods:  # "no authentication": the namespace holds nobody but the browser
            writer.write(b"\x05\xff")
            await writer.drain()
            return None
        writer.write(b"\x05\x00")
        await writer.drain()
        _, command, _, kind = await reader.readexactly(4)
        if kind == 1:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif kind == 4:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        elif kind == 3:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode("idna")
        else:
            await _reply(writer, _BAD_ADDRESS)
            return None
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        if command != 1:  # CONNECT only: no BIND, no UDP ASSOCIATE
            await _reply(writer, _BAD_COMMAND)
            return None
        return normal_host(host), port

    def _refuse(self, origin: Origin) -> None:
        # Chromium's own background requests (update checks) are refused too: only a page
        # reaching for this host or a private network is worth a line at INFO.
        level = logging.INFO if _is_local(origin[0]) else logging.DEBUG
        logger.log(level, "browser gate: refused %s:%d (not the page being checked)", *origin)
        self.refused = [*self.refused[-99:], origin]


def _is_local(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")
    return address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified


async def _reply(writer: asyncio.StreamWriter, code: int) -> None:
    writer.write(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))
    await writer.drain()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except OSError:
        sink.close()
