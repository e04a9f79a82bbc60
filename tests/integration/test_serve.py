"""The API on a real Ray Serve, talking to a Control double inside a real Ray actor.

The Control double (``MemoryControl`` as a named async actor, reached through the real
``RayControlPort``) is acceptable here only for the HTTP path; SSE reads a real bus on a real
redis-server through the Serve proxy.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from coordinator.bus.context_bus import ContextBus
from coordinator.bus.redis_server import ManagedRedis, free_port
from coordinator.store.store import Store
from serve.auth import create_token
from serve.control_port import ControlPort, MemoryControl, RayControlPort
from tests.integration.conftest_bus import fast_config

pytestmark = pytest.mark.slow
CONTROL = "test-api-control"


@dataclass
class Api:
    url: str
    alice: dict[str, str]
    bob: dict[str, str]
    control: Any  # the actor handle of the MemoryControl
    redis_url: str


def wait_until(predicate: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout}s")


@pytest.fixture(scope="module")
def api(ray_cluster: Any, redis_server: ManagedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:  # noqa: F811
    from ray import serve

    from serve.app import ApiSettings
    from serve.deployment import run_api

    store_path = tmp_path_factory.mktemp("api") / "store.db"
    with Store(store_path) as store:
        alice, bob = create_token(store, "alice"), create_token(store, "bob")
    control = ray_cluster.remote(MemoryControl).options(name=CONTROL, namespace="kriptik").remote()
    settings = ApiSettings(port=free_port(), heartbeat_s=1.0, sse_block_ms=200, rate_per_s=1000, burst=1000)
    url = run_api(
        redis_server.url, store_path, settings, control=RayControlPort(name=CONTROL, timeout_s=30), bus_prefix="test"
    )
    wait_until(lambda: httpx.get(f"{url}/api/health", timeout=5).status_code == 200, what="API up")
    try:
        yield Api(url, {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}, control,
                  redis_server.url)  # fmt: skip
    finally:
        serve.shutdown()
        ray_cluster.kill(control)


@pytest.fixture
async def client(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as c:
        yield c


@pytest.fixture
async def bus(api: Api) -> AsyncIterator[ContextBus]:
    b = ContextBus(api.redis_url, fast_config(), sender="test")
    yield b
    await b.aclose(flush_timeout=1.0)


async def new_build(client: httpx.AsyncClient, api: Api) -> str:
    r = await client.post("/api/builds", json={"prompt": "a todo app"}, headers=api.alice)
    assert r.status_code == 202, r.text
    return r.json()["id"]


async def sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse an SSE body into {event, id, data} dicts (comments are skipped)."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in event:
                yield event
            event = {}
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            event[key] = value[1:] if value.startswith(" ") else value


# --- the HTTP path ---------------------------------------------------------------------------


async def test_routes_through_serve_and_the_ray_control_port(client: httpx.AsyncClient, api: Api) -> None:
    assert (await client.get("/api/health")).json()["status"] == "ok"
    assert (await client.get("/api/builds")).status_code == 401
    build = await new_build(client, api)
    status = await client.get(f"/api/build/status/{build}", headers=api.alice)
    assert status.status_code == 200 and status.json()["status"] == "queued"
    # BuildNotFoundError raised in the actor crosses Ray and becomes a 404, not a 500
    assert (await client.get(f"/api/build/status/{build}", headers=api.bob)).status_code == 404
    assert (await client.get("/api/build/status/nope", headers=api.alice)).status_code == 404
    await asyncio.wrap_future(
        api.control.set_status.remote(
            build, status="paused", budget={"limit_usd": 1.0, "spent_usd": 1.0, "status": "exhausted"}
        ).future()
    )
    assert (await client.post(f"/api/build/resume/{build}", headers=api.alice)).status_code == 409
    raised = await client.post(f"/api/build/budget/{build}", json={"usd": 4}, headers=api.alice)
    assert raised.json()["limit_usd"] == 5.0
    assert (await client.post(f"/api/build/resume/{build}", headers=api.alice)).json()["status"] == "running"
    bad = await client.post("/api/builds", json={"prompt": "x", "nope": 1}, headers=api.alice)
    assert bad.status_code == 422 and bad.json()["field"] == "body.nope"
    assert (await client.get("/ui/")).status_code == 200


async def test_a_missing_control_actor_is_503_not_500(ray_cluster: Any) -> None:
    port: ControlPort = RayControlPort(name="no-such-control", timeout_s=5)
    from serve.control_port import ControlUnavailableError

    with pytest.raises(ControlUnavailableError):
        await port.status("alice", "b1")


# --- SSE through the Serve proxy --------------------------------------------------------------


async def publish(bus: ContextBus, build: str, n: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        kind = ["phase.started", "progress.task", "merge.merged", "error.reported"][i % 4]
        rid = await bus.publish_event(build, kind, {"n": i})
        assert rid is not None
        ids.append(rid)
    return ids


async def test_sse_in_order_and_resumes_with_no_gap_or_duplicate(
    client: httpx.AsyncClient, api: Api, bus: ContextBus
) -> None:
    build = await new_build(client, api)
    try:
        first = await publish(bus, build, 5)
        seen: list[dict[str, Any]] = []
        url = f"/api/build/stream/{build}"
        async with client.stream("GET", url, headers=api.alice) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse(response)
            async for event in events:  # the backlog, then live events as they are published
                seen.append(event)
                if len(seen) == 5:
                    live = await publish(bus, build, 5, start=5)
                if len(seen) == 8:
                    break  # drop the connection mid-stream
        assert [e["id"] for e in seen] == (first + live)[:8]
        assert [json.loads(e["data"])["data"]["n"] for e in seen] == list(range(8))
        assert [e["event"] for e in seen[:4]] == ["phase", "progress", "merge", "error"]

        more = await publish(bus, build, 3, start=10)
        await bus.publish_event(build, "build.completed", {})
        headers = {**api.alice, "Last-Event-ID": seen[-1]["id"]}
        resumed: list[dict[str, Any]] = []
        async with client.stream("GET", url, headers=headers) as response:
            async for event in sse(response):
                resumed.append(event)
        ids = [e.get("id") for e in resumed]
        assert ids[:-2] == (first + live + more)[8:]  # no gap, no duplicate
        assert resumed[-2]["event"] == "build" and resumed[-1]["event"] == "end"
        assert json.loads(resumed[-1]["data"])["status"] == "completed"
    finally:
        await bus.delete_build(build)


async def test_sse_ends_when_the_build_is_final_and_sends_heartbeats(
    client: httpx.AsyncClient, api: Api, bus: ContextBus
) -> None:
    build = await new_build(client, api)
    try:
        await publish(bus, build, 2)
        got: list[dict[str, Any]] = []
        pinged = False
        async with client.stream("GET", f"/api/build/stream/{build}", headers=api.alice) as response:
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    pinged = True
                    await asyncio.wrap_future(api.control.set_status.remote(build, status="failed").future())
                if line.startswith("event:"):
                    got.append({"event": line.split(":", 1)[1].strip()})
        assert pinged, "no heartbeat comment before the end"
        assert [e["event"] for e in got] == ["phase", "progress", "end"]
        r = await client.get(f"/api/build/stream/{build}", headers=api.bob)
        assert r.status_code == 404
    finally:
        await bus.delete_build(build)
