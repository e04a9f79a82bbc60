"""A stand-in for the API the CLI talks to: an HTTP server on 127.0.0.1 whose handler answers JSON.

CLI tests subclass :class:`JsonApi` with the routes they need and run it with :func:`serving`,
which points the CLI at it (``KRIPTIK_API_URL``, ``KRIPTIK_TOKEN``) for the test's duration.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest

H = TypeVar("H", bound=type[BaseHTTPRequestHandler])


class JsonApi(BaseHTTPRequestHandler):
    """A request handler that answers JSON and logs nothing."""

    def answer(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving(handler: H, monkeypatch: pytest.MonkeyPatch) -> Iterator[H]:
    """Serve ``handler`` on a free loopback port, the CLI's API for the block (with a token)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("KRIPTIK_API_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("KRIPTIK_TOKEN", "test-token")
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()
