"""The origin router (``contract.origin``): one port in front of a page and its API, WebSockets included.

Real local sandboxes; the servers are small standard-library scripts started by
``SandboxDevServers`` exactly as the gate and the preview start a contract's dev servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from coordinator.contracts import parse_contract
from coordinator.merge.sandbox import SandboxDevServers
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.backends.config import LocalBackendConfig
from sandbox_agents.backends.local.backend import LocalBackend

# A server answering every GET with its name and the path; on `Upgrade:` it answers 101 and echoes bytes.
SERVER = r"""
import socketserver, sys
NAME, PORT = sys.argv[1], int(sys.argv[2])
class H(socketserver.StreamRequestHandler):
    def handle(self):
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            b = self.rfile.read(1)
            if not b: return
            head += b
        path = head.split(b" ")[1]
        if b"upgrade:" in head.lower():
            self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
            self.wfile.flush()
            while data := self.request.recv(1024):
                self.request.sendall(NAME.encode() + b":" + data)
            return
        body = NAME.encode() + b" " + path
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("127.0.0.1", PORT), H).serve_forever()
"""


def contract(routes: dict[str, str] | None) -> dict[str, object]:
    def comp(name: str, kind: str, port: int) -> dict[str, object]:
        return {
            "name": name,
            "kind": kind,
            "description": name,
            "tasks": [{"id": f"{name}-t", "title": "t"}],
            "dev_server": {"command": ["python3", "-c", SERVER, name, str(port)], "port": port},
        }

    data: dict[str, object] = {
        "name": "routed",
        "summary": "a page and its API on two ports",
        "components": [comp("page", "frontend", 5173), comp("api", "backend", 8000)],
        "success_criteria": [{"type": "route", "path": "/", "component": "page"}],
    }
    if routes is not None:
        data["origin"] = {"routes": routes, "port": 8080}
    return data


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[object]:
    backend = LocalBackend(LocalBackendConfig(root=tmp_path / "sbx"))
    box = await backend.create(SandboxSpec(ports=(5173, 8000, 8080)))
    yield box
    await box.terminate()


async def test_the_router_sends_each_prefix_to_its_server_and_the_rest_to_the_page(sandbox) -> None:  # type: ignore[no-untyped-def]
    built = parse_contract(contract({"/api": "api"}))
    servers = SandboxDevServers(sandbox, contract=built)
    urls, findings = await servers.restart(list(built.components))
    assert findings == []
    page_url = urls["page"]
    assert page_url == await sandbox.expose(8080)  # the page is seen through the router
    async with httpx.AsyncClient(timeout=5) as client:
        for path, answer in (
            ("/", "page /"),
            ("/api/cards?x=1", "api /api/cards?x=1"),
            ("/api", "api /api"),
            ("/apix", "page /apix"),
            ("/index.html", "page /index.html"),
        ):
            response = await client.get(page_url + path)
            assert response.text == answer, (path, response.text)
    host, port = urlsplit(page_url).hostname, urlsplit(page_url).port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /api/ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
    assert b"101" in await reader.readuntil(b"\r\n\r\n")
    for word in (b"one", b"two"):
        writer.write(word)
        assert await asyncio.wait_for(reader.read(100), 5) == b"api:" + word  # both ways, on one connection
    writer.close()

    await servers.stop(8000)  # a backend that is down: 502, and the router lives on
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(page_url + "/api/cards")).status_code == 502
        assert (await client.get(page_url + "/")).text == "page /"
    urls_again, _ = await servers.restart(list(built.components))
    assert urls_again["page"] == page_url  # started once, the same stable URL


async def test_without_an_origin_the_page_is_its_own_server(sandbox) -> None:  # type: ignore[no-untyped-def]
    built = parse_contract(contract(None))
    urls, findings = await SandboxDevServers(sandbox, contract=built).restart(list(built.components))
    assert findings == [] and urls["page"] == await sandbox.expose(5173)
    assert (await sandbox.exec("ls /tmp/kriptik-dev")).stdout.split() == [
        "5173.log",
        "5173.pid",
        "8000.log",
        "8000.pid",
    ]  # no router was started


def test_routes_must_name_served_components_and_a_free_port() -> None:
    from sandbox_agents.errors import ContractError

    for routes, why in (({"/api": "nope"}, "unknown component"), ({"api": "api"}, "starting with '/'")):
        with pytest.raises(ContractError, match=why):
            parse_contract(contract(routes))
    bad_port = contract({"/api": "api"})
    bad_port["origin"] = {"routes": {"/api": "api"}, "port": 8000}
    with pytest.raises(ContractError, match="also a dev server's port"):
        parse_contract(bad_port)
