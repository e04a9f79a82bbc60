"""Ghost mode end to end: a webhook set through the API hears, signed, that a real build completed.

Real Ray, Redis, Control, a BuildCoordinator and local sandboxes build ``hello-calc`` from its
cassette; the API is the real app (``serve/app.py``) in this process over the real
``RayControlPort``. The webhook's receiver is an HTTP server on 127.0.0.1 in this process: an
internal address, so the operator's allowance (``ControlConfig.webhook_allow_private``) is on for
that build, and the same address is refused with a 422 when it is off. Nothing leaves the host.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors import handles
from actors.build.actor import get_coordinator, stop_coordinator
from actors.control import stop_control
from actors.handles import CONTROL_NAME
from actors.runtime import Runtime, start_runtime
from coordinator.build.notify import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER
from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.bus.redis_server import ManagedRedis
from coordinator.store.store import Store
from serve.app import ApiSettings, create_app
from serve.auth import create_token
from serve.control_port import RayControlPort
from tests.conftest import E2E_POOLS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

USER = "ghost"
SECRET = "whsec-ghost-mode-test"


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: records every POST and answers 204."""

    url: str
    deliveries: list[Delivery] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.deliveries) >= count:
                return list(self.deliveries)
            time.sleep(0.1)
        raise AssertionError(f"{count} webhook deliveries not received in {timeout}s: {self.deliveries}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    deliveries: list[Delivery] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            deliveries.append(Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}/hooks/kriptik", deliveries)
    finally:
        server.shutdown()
        server.server_close()


async def _runtime(home: Path, redis: ManagedRedis, *, allow_private: bool) -> Runtime:
    return await start_runtime(
        home,
        redis_url=redis.url,
        heartbeat_s=5.0,
        admit_poll_s=0.3,
        pools=E2E_POOLS,
        webhook_allow_private=allow_private,
    )


async def _stop_runtime(rt: Runtime) -> None:
    """Stop Control and wait until its name is free: the next test's Control must be a new one, with its config."""
    await stop_control(rt.control)
    await rt.stop()
    deadline = time.monotonic() + 30
    while handles.find(CONTROL_NAME) is not None:
        assert time.monotonic() < deadline, "the stopped Control actor still holds its name after 30s"
        await asyncio.sleep(0.2)


@asynccontextmanager
async def api_client(home: Path) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """The API app over the running Control actor (``control``), and a token of :data:`USER`."""
    with Store(home / "store.db") as store:
        headers = {"Authorization": f"Bearer {create_token(store, USER)}"}
        app = create_app(RayControlPort(timeout_s=60), _no_bus, store, ApiSettings(rate_per_s=1000, burst=1000))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=60) as c:
            yield c, headers


def _no_bus() -> Any:
    raise AssertionError("these tests do not stream")


def verified(delivery: Delivery, secret: str) -> bool:
    """Check ``X-Kriptik-Signature`` as a receiver would (``coordinator/build/notify.py``'s ``sign``)."""
    parts = dict(part.split("=", 1) for part in delivery.headers[SIGNATURE_HEADER.lower()].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + delivery.body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(parts["t"])) < 600
    return fresh and hmac.compare_digest(parts["v1"], expected)


async def _until_ended(client: httpx.AsyncClient, headers: dict[str, str], build_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        status = (await client.get(f"/api/build/status/{build_id}", headers=headers)).json()
        if status["status"] in ("completed", "failed", "cancelled", "paused"):
            return status
        await asyncio.sleep(0.5)
    raise AssertionError(f"build {build_id} did not end in 200s")


async def test_a_webhook_set_through_the_api_receives_a_signed_completed_event(
    ray_cluster: Any,
    redis_server: ManagedRedis,
    kriptik_home: Path,
    receiver: Receiver,
) -> None:
    rt = await _runtime(kriptik_home, redis_server, allow_private=True)
    build_id = None
    try:
        async with api_client(kriptik_home) as (client, headers):
            put = await client.put(
                "/api/notify", json={"url": receiver.url, "secret": SECRET, "events": ["completed"]}, headers=headers
            )
            assert put.status_code == 200 and put.json()["secret_set"] and SECRET not in put.text, put.text
            created = await client.post("/api/builds", json={"example": "hello-calc"}, headers=headers)
            assert created.status_code == 202, created.text
            build_id = created.json()["id"]
            status = await _until_ended(client, headers, build_id)
            assert status["status"] == "completed", status

            [delivery] = await asyncio.to_thread(receiver.wait_for, 1)
            body = json.loads(delivery.body)
            assert delivery.path == "/hooks/kriptik" and delivery.headers[EVENT_HEADER.lower()] == "build.completed"
            assert body["kind"] == "build.completed" and body["build_id"] == build_id and body["user_id"] == USER
            assert body["status"] == "completed" and body["data"]["tree_hash"]
            assert delivery.headers[DELIVERY_HEADER.lower()] == body["delivery_id"]
            assert verified(delivery, SECRET) and not verified(delivery, "another-secret")

            # The secret is never shown back: not by status, the defaults or the build's event log.
            assert SECRET not in (await client.get(f"/api/build/status/{build_id}", headers=headers)).text
            assert SECRET not in (await client.get("/api/notify", headers=headers)).text
            assert (await client.delete("/api/notify", headers=headers)).status_code == 200
        bus = ContextBus(redis_server.url, BusConfig(prefix="kriptik"), sender="test-ghost")
        try:
            log = [env.message.data for _, env in await bus.read_events(build_id, count=10_000)]
        finally:
            await bus.aclose(flush_timeout=1.0)
        assert log and SECRET not in json.dumps(log)
    finally:
        if build_id is not None:
            await _stop_build(build_id)
        await _stop_runtime(rt)


async def test_a_loopback_webhook_is_refused_with_a_clear_422_without_the_allowance(
    ray_cluster: Any,
    redis_server: ManagedRedis,
    kriptik_home: Path,
    receiver: Receiver,
) -> None:
    rt = await _runtime(kriptik_home, redis_server, allow_private=False)
    try:
        async with api_client(kriptik_home) as (client, headers):
            put = await client.put("/api/notify", json={"url": receiver.url}, headers=headers)
            assert put.status_code == 422, put.text
            assert put.json()["field"] == "url" and "127.0.0.1 is loopback" in put.json()["message"]
            before = (await client.get("/api/builds", headers=headers)).json()
            build = await client.post(
                "/api/builds", json={"example": "hello-calc", "notify": {"url": receiver.url}}, headers=headers
            )
            assert build.status_code == 422, build.text
            refused = build.json()
            assert refused["error"] == "invalid_input" and refused["field"] == "notify.url"
            assert "loopback" in refused["message"] and "KRIPTIK_WEBHOOK_ALLOW_PRIVATE" in refused["message"]
            assert (await client.get("/api/builds", headers=headers)).json() == before  # no build was made
        assert receiver.deliveries == []
    finally:
        await _stop_runtime(rt)


async def _stop_build(build_id: str) -> None:
    try:
        handle = get_coordinator(build_id)
    except ValueError:
        return
    await stop_coordinator(handle)  # closes gate, preview and judge: their sandboxes go
