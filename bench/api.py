"""API latency through Ray Serve: ``python -m bench.api --json``.

A private Ray, a managed redis-server, the API deployed on Serve and an in-memory Control
double in a real Ray actor (so a status read pays for the real path: proxy → replica →
auth in SQLite → Control actor call → validation). Reports:

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


def run(rounds: int, events: int) -> dict[str, Any]:
    from ray import serve

    from bench.common import private_ray
    from coordinator.redis_server import ManagedRedis, free_port
    from coordinator.store import Store
    from serve.app import ApiSettings
    from serve.auth import create_token
    from serve.control_port import MemoryControl, RayControlPort
    from serve.deployment import run_api

    work = Path(tempfile.mkdtemp(prefix="kriptik-bench-api-"))
    with private_ray(num_cpus=2) as ray, ManagedRedis(work / "redis") as redis:
        with Store(work / "store.db") as store:
            token = create_token(store, "bench")
        control = ray.remote(MemoryControl).options(name="bench-control", namespace="kriptik").remote()
        settings = ApiSettings(port=free_port(), rate_per_s=1e6, burst=10**9, heartbeat_s=5)
        url = run_api(redis.url, work / "store.db", settings, control=RayControlPort(name="bench-control"),
                      bus_prefix="bench")  # fmt: skip
        try:
            build = httpx.post(f"{url}/api/builds", json={"prompt": "bench"}, timeout=30,
                               headers={"Authorization": f"Bearer {token}"}).json()["id"]  # fmt: skip
            floor, status = _http_latencies(url, token, build, rounds)
            sse = asyncio.run(_sse_latencies(url, token, build, redis.url, events))
        finally:
            serve.shutdown()
            ray.kill(control)
    floor_p50, status_p50 = p50(floor), p50(status)
    return {
        "bench": "api",
        "rounds": rounds,
        "status_p50_ms": status_p50,
        "serve_floor_p50_ms": floor_p50,
        "api_overhead_ratio": round(status_p50 / floor_p50, 3),
        "status_p99_ms": pct(status, 0.99),
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
