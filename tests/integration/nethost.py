"""Test hosts that live on this machine: a network namespace of the test's own behind a veth pair.

A test that a sandbox is refused an address (a private range, the cloud metadata address, a
public host) must never send a packet off the machine, even when the filter under test fails.
So the test makes the destination itself: a namespace owning those addresses, routed from the
host through a veth pair, with a TCP server that records every connection it accepts. A
refused destination then shows as an error in the sandbox AND no connection at the server.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SERVER = r"""
import socket, sys, threading
log = open(sys.argv[2], "a", buffering=1)
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(64)
print("ready", flush=True)
while True:
    conn, peer = srv.accept()
    log.write(f"{conn.getsockname()[0]}\n")
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhello\n"); conn.close()
"""


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    subprocess.run(argv, check=True, capture_output=True, text=True)


@dataclass
class NetHost:
    """A listening TCP server at ``addresses`` (port ``port``), reachable from the host only by route."""

    netns: str
    addresses: list[str]
    port: int
    log: Path

    def accepted(self) -> list[str]:
        """The local addresses of the connections the server accepted, in order."""
        return self.log.read_text().split() if self.log.exists() else []


@contextlib.contextmanager
def nethost(addresses: list[str], tmp: Path, port: int = 8080) -> Iterator[NetHost]:
    """A test host owning ``addresses``; the host routes each /32 to it. Everything is removed after."""
    tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
    netns, host_if, peer_if = f"kt-{tag}", f"kth{tag}"[:15], f"ktp{tag}"[:15]
    link = f"10.{200 + os.getpid() % 50}.{secrets.randbelow(250)}"
    log = tmp / f"{netns}.log"
    server = None
    _ip("netns", "add", netns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        _ip("link", "set", peer_if, "netns", netns)
        _ip("addr", "add", f"{link}.1/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("link", "set", "lo", "up", netns=netns)
        _ip("addr", "add", f"{link}.2/30", "dev", peer_if, netns=netns)
        for address in addresses:
            _ip("addr", "add", f"{address}/32", "dev", peer_if, netns=netns)
        _ip("link", "set", peer_if, "up", netns=netns)
        _ip("route", "add", "default", "via", f"{link}.1", netns=netns)
        for address in addresses:
            _ip("route", "add", f"{address}/32", "via", f"{link}.2", "dev", host_if)
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", _SERVER, str(port), str(log)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield NetHost(netns=netns, addresses=addresses, port=port, log=log)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_if)  # its routes go with it
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", netns)


def registry_reachable(host: str = "registry.npmjs.org") -> bool:
    """Whether this machine reaches a package registry (CI does; a test may skip the fetch only if not)."""
    import socket

    try:
        with socket.create_connection((host, 443), timeout=5):
            return True
    except OSError:
        return False
