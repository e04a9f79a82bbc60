"""Abuse limits of the API: per-token rate limits, a request body cap, and opt-in CORS.

Rate limits are token buckets kept in the replica's memory, keyed by token id: each API
replica enforces them on its own, so with N replicas a token gets up to N times the rate.
That is the right trade for one head node (no Redis round trip in front of every request);
a cluster-wide limit would move the buckets into Redis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox_agents.errors import KriptikError


class RateLimitedError(KriptikError):
    """A token made more requests than its rate allows; a 429 with ``Retry-After``."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets per key: ``rate_per_s`` refill, up to ``burst`` requests at once.

    Args:
        rate_per_s: sustained requests per second per key.
        burst: bucket size (requests allowed back to back).
        clock: monotonic seconds (injected in tests).
        max_keys: buckets kept; the least recently used are forgotten past it (they were full).
    """

    def __init__(
        self, rate_per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str) -> None:
        """Take one request from ``key``'s bucket.

        Raises:
            RateLimitedError: the bucket is empty; ``retry_after_s`` says when one request is allowed again.
        """
        now = self.clock()
        bucket = self._buckets.pop(key, None)  # re-inserted below: dict order is LRU order
        if bucket is None:
            bucket = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[key] = bucket
        if len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / self.rate
            raise RateLimitedError(f"rate limit of {self.rate:g}/s exceeded", retry_after_s=wait)
        bucket.tokens -= 1.0


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` takes whole seconds; round up so a client that obeys it is let in."""
    return str(max(1, math.ceil(seconds)))


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413 before the app reads it all.

    A declared ``Content-Length`` over the limit is refused at once (the server enforces the
    length it declared); a chunked body is read up to the limit here and refused past it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        chunked = not any(name == b"content-length" for name, _ in scope.get("headers", ()))
        if chunked and scope.get("method") in ("POST", "PUT", "PATCH"):
            buffered = await self._buffered(receive)  # chunked: count it all before the app sees it
            if buffered is None:
                await self._refuse(send)
                return
            receive = buffered
        await self.app(scope, receive, send)

    async def _buffered(self, receive: Receive) -> Receive | None:
        """Read a body of unknown length up to the limit; ``None`` when it is over."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return None
            if not message.get("more_body", False):
                break
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        return replay

    async def _refuse(self, send: Send) -> None:
        body = (
            b'{"error":"payload_too_large","message":"request body over '
            + str(self.max_bytes).encode()
            + b' bytes","field":null,"retry_after_s":null}'
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def add_cors(app: Any, origins: list[str]) -> None:
    """Allow cross-origin calls from ``origins`` only; with none configured, CORS stays off."""
    if not origins:
        return
    from starlette.middleware.cors import CORSMiddleware

    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        expose_headers=["Retry-After"],
        max_age=600,
    )
