"""The origin router: one port in a sandbox in front of the components' dev servers (``contract.origin``).

It runs inside the main-test and preview sandboxes, next to the dev servers, as a Python
standard-library script handed to ``python3 -c`` (a sandbox sees none of our packages). Each
connection's first request line picks the backend by the longest matching path prefix
(everything else goes to the primary page). The request's and the response's heads are
passed on unchanged but for ``Connection: close`` (one request per connection, so a later
request on a kept-alive connection cannot reach the wrong server); then bytes flow both ways
until either side closes, which carries streamed bodies, server-sent events and WebSocket
upgrades (Vite's HMR) alike. A backend that is down answers 502.
"""

from __future__ import annotations

import json

from coordinator.contracts import IntentContract, Origin, primary_component

SCRIPT = r"""
import asyncio, json, sys

PORT = int(sys.argv[1])
ROUTES = sorted(json.loads(sys.argv[2]).items(), key=lambda kv: -len(kv[0]))
DEFAULT = int(sys.argv[3])
HEAD_LIMIT = 64 * 1024


def backend_of(target):
    path = target.split("?", 1)[0]
    for prefix, port in ROUTES:
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return port
    return DEFAULT


def one_request(head):
    lines = head.split(b"\r\n")
    upgrade = any(l.lower().startswith(b"upgrade:") for l in lines[1:])
    if upgrade or b" 101 " in lines[0]:
        return head
    kept = [l for l in lines[1:] if l and not l.lower().startswith((b"connection:", b"keep-alive:"))]
    return b"\r\n".join([lines[0], *kept, b"Connection: close", b"", b""])


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def answer(up_reader, writer):
    # The response head says "Connection: close" too, so the client never sends a second request
    # on this connection (the router reads only the first).
    try:
        head = await up_reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.write_eof()
        return
    writer.write(one_request(head))
    await pipe(up_reader, writer)


async def handle(reader, writer):
    upstream = None
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
        try:
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", backend_of(target))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        upstream.write(one_request(head))
        await asyncio.gather(pipe(reader, upstream), answer(up_reader, writer))
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, IndexError, ValueError):
        pass
    finally:
        for w in (writer, upstream):
            if w is not None:
                w.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT, limit=HEAD_LIMIT)
    async with server:
        await server.serve_forever()


asyncio.run(main())
"""


def router_argv(contract: IntentContract, origin: Origin) -> list[str] | None:
    """The router's command line for ``contract`` (None when it has no page to send the rest to)."""
    page = primary_component(contract)
    if page is None or page.dev_server is None:
        return None
    ports = {c.name: c.dev_server.port for c in contract.components if c.dev_server is not None}
    routes = {prefix: ports[name] for prefix, name in origin.routes.items() if name in ports}
    return ["python3", "-c", SCRIPT, str(origin.port), json.dumps(routes), str(page.dev_server.port)]
