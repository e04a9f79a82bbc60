"""The browser's gate (SOCKS5, granted origins only) and the launcher's refusals, without Chromium."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from sandbox_agents.browser import BrowserConfig, Chromium
from sandbox_agents.browser import chromium as chromium_module
from sandbox_agents.browser.socks import SocksGate, origin_of
from sandbox_agents.errors import BackendUnavailableError, InvalidInputError


class Echo:
    """A host service on 127.0.0.1 that echoes and counts its connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(echo, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


@pytest_asyncio.fixture
async def echo() -> AsyncIterator[tuple[Echo, int]]:
    echo = Echo()
    port = await echo.start()
    yield echo, port
    assert echo.server is not None
    echo.server.close()


@pytest_asyncio.fixture
async def gate() -> AsyncIterator[tuple[SocksGate, int]]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    gate = SocksGate(listener, connect_timeout_s=2.0)
    await gate.start()
    yield gate, port
    await gate.close()


async def socks_connect(gate_port: int, host: str, port: int) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
    """A SOCKS5 CONNECT as Chromium sends it; returns the reply code and the stream."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gate_port)
    writer.write(b"\x05\x01\x00")
    assert await reader.readexactly(2) == b"\x05\x00"
    try:
        address = b"\x01" + socket.inet_aton(host)
    except OSError:
        address = b"\x03" + bytes([len(host)]) + host.encode()
    writer.write(b"\x05\x01\x00" + address + struct.pack("!H", port))
    reply = await reader.readexactly(10)
    return reply[1], reader, writer


def test_an_origin_is_host_and_port_with_one_spelling_per_host() -> None:
    assert origin_of("http://127.0.0.1:5173/app?x=1") == ("127.0.0.1", 5173)
    assert origin_of("http://LocalHost/") == ("localhost", 80)
    assert origin_of("https://[0:0::1]/") == ("::1", 443)
    assert origin_of("wss://example.modal.run/ws") == ("example.modal.run", 443)
    with pytest.raises(InvalidInputError):
        origin_of("about:blank")


async def test_a_granted_origin_is_relayed(gate: tuple[SocksGate, int], echo: tuple[Echo, int]) -> None:
    service, port = echo
    gate_obj, gate_port = gate
    gate_obj.grant(("127.0.0.1", port))
    code, reader, writer = await socks_connect(gate_port, "127.0.0.1", port)
    assert code == 0
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    writer.close()


async def test_an_origin_not_granted_is_refused_before_any_connection(
    gate: tuple[SocksGate, int], echo: tuple[Echo, int]
) -> None:
    service, port = echo
    gate_obj, gate_port = gate
    gate_obj.grant(("127.0.0.1", port + 1 if port < 65535 else port - 1))  # a neighbour, not it
    code, _, writer = await socks_connect(gate_port, "127.0.0.1", port)
    writer.close()
    assert code == 2  # not allowed by ruleset
    assert service.connections == 0
    assert gate_obj.refused == [("127.0.0.1", port)]
    code, _, writer = await socks_connect(gate_port, "localhost", port)  # another spelling is another origin
    writer.close()
    assert code == 2


async def test_the_last_release_closes_open_connections_and_refuses_new_ones(
    gate: tuple[SocksGate, int], echo: tuple[Echo, int]
) -> None:
    _, port = echo
    gate_obj, gate_port = gate
    first = gate_obj.grant(("127.0.0.1", port))
    second = gate_obj.grant(("127.0.0.1", port))
    code, reader, writer = await socks_connect(gate_port, "127.0.0.1", port)
    assert code == 0
    first()
    first()  # a release counts once
    writer.write(b"still")
    assert await reader.readexactly(5) == b"still"  # the other holder keeps it open
    second()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the gate
    writer.close()
    assert gate_obj.granted() == set()
    code, _, writer = await socks_connect(gate_port, "127.0.0.1", port)
    writer.close()
    assert code == 2


async def test_only_connect_is_served(gate: tuple[SocksGate, int]) -> None:
    _, gate_port = gate
    reader, writer = await asyncio.open_connection("127.0.0.1", gate_port)
    writer.write(b"\x05\x01\x00")
    await reader.readexactly(2)
    writer.write(b"\x05\x03\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", 53))  # UDP ASSOCIATE
    reply = await reader.readexactly(10)
    writer.close()
    assert reply[1] == 7


def test_chromiums_own_sandbox_cannot_be_turned_off() -> None:
    with pytest.raises(ValueError, match="sandbox"):
        Chromium(BrowserConfig(args=("--headless", "--no-sandbox")))


async def test_not_root_the_browser_refuses_to_start_unisolated_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chromium_module.os, "geteuid", lambda: 1000)
    monkeypatch.delenv(chromium_module.ALLOW_UNISOLATED_ENV, raising=False)
    with pytest.raises(BackendUnavailableError, match=chromium_module.ALLOW_UNISOLATED_ENV):
        await chromium_module._Session.launch(BrowserConfig(), playwright=None)  # type: ignore[arg-type]


def test_the_wrapper_drops_to_the_browsers_uid_inside_its_namespace_with_a_clean_environment() -> None:
    script = chromium_module._wrapper_script("/usr/bin/chromium", 60123, "/tmp/h", "/proc/1/fd/9", "/tmp/pid")  # type: ignore[arg-type]
    command = script[script.index("exec nsenter") :]
    assert "--net=/proc/1/fd/9" in command
    assert "--reuid=60123 --regid=60123 --clear-groups" in command
    assert "--bounding-set=-all" in command and "--no-new-privs" in command
    assert "env -i" in command and "--no-sandbox" not in script
    assert command.rstrip().endswith('/usr/bin/chromium "$@"')
