"""API latency through Ray Serve: ``python -m bench.api --json``.

A private Ray, a managed redis-server, the API deployed on Serve, and both the real Control
actor over a real store (the headline figures) and an in-memory Control double in a real Ray
actor (``memory_double``, the old baseline: every status read is a replica → actor call).
``control_hop`` is the real Control with the store fast path off. Reports, per set-up:

- ``serve_floor_p50_ms``: ``GET /api/health`` (same app, no auth, no actor call) — the Serve floor;
- ``status_p50_ms``: ``GET /api/build/status/{id}`` with a bearer token;
- ``api_overhead_ratio``: status / floor (target <= 1.3);
- ``sse_p99_ms``: from ``XADD`` of an event to the SSE client having it, through the proxy (target <= 50).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import emit, p50, pct


def _http_latencies(url: str, token: str, build: str, rounds: int) -> tuple[list[float], list[float]]:
    floor, status = [], []
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(50):  # warm both paths and the keep-alive connection
            client.get("/api/health")
            client.get(f"/api/build/status/{build}", headers=headers)
        for _ in range(rounds):  # interleaved, so drift of the machine hits both alike
            t0 = time.perf_counter()
            assert client.get("/api/health").status_code == 200
            t1 = time.perf_counter()
            assert client.get(f"/api/build/status/{build}", headers=headers).status_code == 200
            t2 = time.perf_counter()
            floor.append((t1 - t0) * 1000)
            status.append((t2 - t1) * 1000)
    return floor, status


async def _sse_latencies(url: str, token: str, build: str, redis_url: str, events: int) -> list[float]:
    from coordinator.bus import BusConfig, ContextBus

    bus = ContextBus(redis_url, BusConfig(prefix="bench"), sender="bench")
    arrived: dict[int, float] = {}
    ready = asyncio.Event()

    async def reader() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async with client.stream("GET", f"/api/build/stream/{build}", headers=headers) as response:
                ready.set()
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        body = json.loads(line[5:])
                        if "n" in body.get("data", {}):
                            arrived[body["data"]["n"]] = time.perf_counter()
                            if len(arrived) == events:
                                return

    task = asyncio.create_task(reader())
    await ready.wait()
    await bus.publish_event(build, "progress.warmup", {})
    await asyncio.sleep(0.3)
    latencies = []
    try:
        for n in range(events):
            t0 = time.perf_counter()
            await bus.publish_event(build, "progress.tick", {"n": n})
            deadline = time.monotonic() + 10
            while n not in arrived:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"event {n} did not arrive in 10 s")
                await asyncio.sleep(0)
            latencies.append((arrived[n] - t0) * 1000)
    finally:
        task.cancel()
        await bus.delete_build(build)
        await bus.aclose()
    return latencies


def _wait_final(url: str, token: str, build: str, timeout: float = 120.0) -> dict[str, Any]:
    """Poll the status route until the build is final (a real build through the real Control)."""
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        body: dict[str, Any] = httpx.get(f"{url}/api/build/status/{build}", headers=headers, timeout=30).json()
        if body.get("status") in ("completed", "failed", "cancelled"):
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"build {build} not final after {timeout}s: {body}")
        time.sleep(0.2)


def _ratio(floor: list[float], status: list[float]) -> dict[str, float]:
    return {"status_p50_ms": p50(status), "serve_floor_p50_ms": p50(floor),
            "api_overhead_ratio": round(p50(status) / p50(floor), 3), "status_p99_ms": pct(status, 0.99)}  # fmt: skip


def run(rounds: int, events: int) -> dict[str, Any]:
    """Three set-ups, one Ray: the API over

    1. ``memory``: a ``MemoryControl`` double in a real actor (the baseline: every status read
       is a replica → actor call; its build is ``queued``, never in the store);
    2. ``control``: the real Control actor (``actors/control.py``) over a real store, with a
       real build that ran to a final status — the production path, where the replica answers
       the status of a final build from the store (``serve/store_status.py``);
    3. ``control_hop``: the same, with ``status_from_store=False``: every read is a Control call.
    """
    from actors import handles
    from actors.control import ControlConfig, start_control, stop_control
    from bench.common import private_ray
    from coordinator.bus.redis_server import ManagedRedis, free_port
    from coordinator.store.store import Store
    from serve.app import ApiSettings
    from serve.auth import create_token
    from serve.control_port import MemoryControl, RayControlPort
    from serve.deployment import run_api, shutdown_serve

    work = Path(tempfile.mkdtemp(prefix="kriptik-bench-api-"))
    store_path = work / "store.db"
    results: dict[str, dict[str, Any]] = {}
    with private_ray(num_cpus=2), ManagedRedis(work / "redis") as redis:
        with Store(store_path) as store:
            token = create_token(store, "bench")
        headers = {"Authorization": f"Bearer {token}"}
        port = free_port()
        settings = ApiSettings(port=port, rate_per_s=1e6, burst=10**9, heartbeat_s=5)
        double = handles.actor_class(MemoryControl, restartable=False, max_concurrency=1000)
        memory = handles.start(double, "bench-control", detached=False)
        control = start_control(ControlConfig(redis_url=redis.url, bus_prefix="bench", store_path=str(store_path),
                                              admit_poll_s=0.2))  # fmt: skip
        try:
            url = run_api(redis.url, store_path, settings, control=RayControlPort(name="bench-control"),
                          bus_prefix="bench")  # fmt: skip
            build = httpx.post(f"{url}/api/builds", json={"prompt": "bench"}, timeout=30, headers=headers).json()["id"]
            results["memory"] = _ratio(*_http_latencies(url, token, build, rounds))
            sse = asyncio.run(_sse_latencies(url, token, build, redis.url, events))

            url = run_api(redis.url, store_path, settings, bus_prefix="bench")  # the named `control` actor
            real = httpx.post(f"{url}/api/builds", json={"example": "hello-calc"}, timeout=30, headers=headers).json()[
                "id"
            ]  # a real build through the real Control, to completion
            final = _wait_final(url, token, real)
            results["control"] = _ratio(*_http_latencies(url, token, real, rounds))
            results["control"]["build_status"] = final["status"]

            hop = settings.model_copy(update={"status_from_store": False})
            url = run_api(redis.url, store_path, hop, bus_prefix="bench")
            results["control_hop"] = _ratio(*_http_latencies(url, token, real, rounds))
        finally:
            shutdown_serve()
            handles.kill(memory)
            asyncio.run(stop_control(control))
    return {
        "bench": "api",
        "rounds": rounds,
        **results["control"],  # the headline: the production path (real Control, real store)
        "memory_double": results["memory"],
        "control_hop": results["control_hop"],
        "sse_events": events,
        "sse_p50_ms": p50(sse),
        "sse_p99_ms": pct(sse, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="status and health requests each")
    parser.add_argument("--events", type=int, default=300, help="SSE events timed")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    emit(run(args.rounds, args.events), args.json)


if __name__ == "__main__":
    main()
