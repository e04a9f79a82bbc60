"""Chaos suite: whole hello-calc builds through the full stack, one random fault per run.

``python -m bench.chaos --json [--runs N --seed S]``

The stack is the production one on a private Ray: a managed redis-server, the Control actor,
the API on Ray Serve, builds submitted with ``POST /api/builds`` and an SSE client that reads
``/api/build/stream/{id}`` and reconnects with ``Last-Event-ID`` whenever its connection drops.
An undisturbed run first gives the reference main tree hash (``build.done``'s ``tree_hash``);
then each of ``runs`` builds gets ONE fault at a random moment:

* ``coordinator`` — SIGKILL of the BuildCoordinator's process (Ray re-creates it; it resumes);
* ``merge_pending`` — the same, the moment a merge request lands on the bus's ``merge`` channel
  (its consumer, the coordinator, has not acknowledged it: the next incarnation must merge it once);
* ``sandbox`` — SIGKILL of the slot sandbox's launcher (the whole sandbox dies; respawn from a checkpoint);
* ``agent`` — ``ray.kill`` of an Agent actor of the slot's team (the team escalates);
* ``redis`` — ``ManagedRedis.restart()`` (SIGTERM, AOF fsynced, same port);
* ``serve_proxy`` — SIGKILL of Serve's HTTP proxy while the SSE client is connected.

The moment is drawn uniformly in the window of the undisturbed run where the fault's target
exists (the whole build for coordinator, redis and proxy; the team's work for agent and
sandbox); if the target is not there yet at that moment, the fault waits for it (``at_s`` is
when it actually struck). Last line (``--json``): ``runs``, ``completed``, ``same_result``,
``lost_events`` (event-log ids the SSE client never received, against the log read from Redis
at the end), ``duplicate_events``, ``reconnects`` and per-run details.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import emit, private_ray

logger = logging.getLogger("bench.chaos")

FAULTS = ("coordinator", "merge_pending", "sandbox", "agent", "redis", "serve_proxy")
USER = "chaos"
FINAL = ("completed", "failed", "cancelled", "paused")
RUN_TIMEOUT_S = 240.0
TARGET_WAIT_S = 60.0
DETAIL_KEYS = (
    *("fault", "at_s", "status", "error", "wall_s", "events"),
    *("lost_events", "duplicate_events", "reconnects", "struck"),
)


# --- the SSE client ---------------------------------------------------------------------------------


@dataclass
class SseClient:
    """Reads a build's stream to its ``end`` event, reconnecting with ``Last-Event-ID``."""

    url: str
    token: str
    build_id: str
    ids: list[str] = field(default_factory=list)
    reconnects: int = 0
    end: dict[str, Any] | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, deadline: float) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        path = f"/api/build/stream/{self.build_id}"
        async with httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(30.0, read=60.0)) as client:
            while self.end is None and time.monotonic() < deadline:
                if self.ids:
                    headers["Last-Event-ID"] = self.ids[-1]
                try:
                    async with client.stream("GET", path, headers=headers) as response:
                        if response.status_code != 200:
                            raise httpx.HTTPStatusError("stream refused", request=response.request, response=response)
                        self.connected.set()
                        await self._read(response)
                except (httpx.HTTPError, OSError) as exc:
                    logger.info("sse %s: %s; reconnecting", self.build_id, type(exc).__name__)
                if self.end is None:
                    self.connected.clear()
                    self.reconnects += 1
                    await asyncio.sleep(0.3)

    async def _read(self, response: httpx.Response) -> None:
        event: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if event.get("event") == "end":
                    self.end = json.loads(event.get("data", "{}"))
                    return
                if "id" in event:
                    self.ids.append(event["id"])
                event = {}
            elif not line.startswith(":") and ":" in line:
                key, _, value = line.partition(":")
                event[key] = value[1:] if value.startswith(" ") else value


# --- the stack --------------------------------------------------------------------------------------


@dataclass
class Stack:
    home: Path
    redis: Any
    runtime: Any
    bus: Any
    url: str
    token: str


async def start_stack(home: Path) -> Stack:
    from actors.runtime import start_runtime
    from coordinator.bus import BusConfig, ContextBus
    from coordinator.bus.redis_server import ManagedRedis, free_port
    from coordinator.store.store import Store
    from serve.app import ApiSettings
    from serve.auth import create_token
    from serve.deployment import run_api

    redis = ManagedRedis(home / "redis-chaos")
    await redis.astart()
    runtime = await start_runtime(
        home,
        redis_url=redis.url,
        heartbeat_s=1.0,
        heartbeat_timeout_s=5.0,
        admit_poll_s=0.3,
        coordinator={"checkpoint_interval_s": 30.0, "gate": {"swarm_must_pass": False}},
    )
    with Store(home / "store.db") as store:
        token = create_token(store, USER)
    settings = ApiSettings(port=free_port(), rate_per_s=1000, burst=10_000, heartbeat_s=2.0)
    url = await asyncio.to_thread(run_api, redis.url, home / "store.db", settings, bus_prefix="kriptik")
    bus = ContextBus(redis.url, BusConfig(prefix="kriptik"), sender="chaos")
    return Stack(home=home, redis=redis, runtime=runtime, bus=bus, url=url, token=token)


async def stop_stack(stack: Stack) -> None:
    from actors.control import stop_control
    from serve.deployment import shutdown_serve, stop_api

    await _best_effort("closing the bus", lambda: stack.bus.aclose(flush_timeout=1.0))
    await _best_effort("stopping the API", lambda: asyncio.to_thread(stop_api))
    await _best_effort("shutting Serve down", lambda: asyncio.to_thread(shutdown_serve))
    await _best_effort("stopping Control", lambda: stop_control(stack.runtime.control))
    stack.redis.stop()


async def _best_effort(what: str, step: Callable[[], Awaitable[Any]]) -> None:
    """Run one teardown step; a failure is logged with what was being done, and the teardown goes on."""
    try:
        await step()
    except Exception as exc:  # noqa: BLE001 - every later step must still run
        logger.warning("chaos: %s failed: %s: %s", what, type(exc).__name__, exc)


# --- the faults -------------------------------------------------------------------------------------


async def _slot_sandbox(stack: Stack, build_id: str) -> str | None:
    """The id of the sandbox the slot's proxy owns right now (None before the fleet or after release)."""
    from ray.exceptions import RayError

    from actors.pools.proxies import get_proxy

    try:
        return await asyncio.wait_for(get_proxy(build_id, "calc").sandbox_id.remote(), 5)
    except (ValueError, TimeoutError, RayError):  # no proxy (yet, or any more), or it is restarting
        return None


async def _kill_coordinator(stack: Stack, build_id: str, rng: random.Random) -> dict[str, Any] | None:
    from ray.exceptions import RayError

    from actors.build.actor import get_coordinator

    try:
        pid = await asyncio.wait_for(get_coordinator(build_id).pid.remote(), 5)
    except (ValueError, TimeoutError, RayError):  # not there (yet), or restarting: try again
        return None
    os.kill(pid, signal.SIGKILL)
    return {"pid": pid}


async def _kill_coordinator_at_merge(stack: Stack, build_id: str, rng: random.Random) -> dict[str, Any] | None:
    from ray.exceptions import RayError

    from actors.build.actor import get_coordinator

    try:
        pid = await asyncio.wait_for(get_coordinator(build_id).pid.remote(), 5)
    except (ValueError, TimeoutError, RayError):
        return None
    stream = stack.bus.keys(build_id).stream("merge")
    entries = await stack.bus.redis.xread({stream: "0"}, block=1000, count=1)
    if not entries:
        return None  # no request yet: look again
    os.kill(pid, signal.SIGKILL)
    request = entries[0][1][0][0]
    return {"pid": pid, "request": request.decode() if isinstance(request, bytes) else request}


async def _kill_sandbox(stack: Stack, build_id: str, rng: random.Random) -> dict[str, Any] | None:
    from sandbox_agents.backends.local.state import LocalState, default_root

    sid = await _slot_sandbox(stack, build_id)
    if sid is None:
        return None
    try:
        state = LocalState.load(default_root(stack.home) / sid / "state.json")
        os.kill(state.launcher_pid, signal.SIGKILL)  # the launcher's death ends the whole sandbox
    except (OSError, ValueError):
        return None
    return {"sandbox_id": sid, "launcher_pid": state.launcher_pid}


async def _kill_agent(stack: Stack, build_id: str, rng: random.Random) -> dict[str, Any] | None:
    from actors import handles
    from actors.agent import get_agent

    alive = []
    for n in range(5):
        with contextlib.suppress(ValueError):
            alive.append((n, get_agent(build_id, "calc", n)))
    if not alive:
        return None
    n, handle = rng.choice(alive)
    handles.kill(handle)
    return {"agent": handles.agent_name(build_id, "calc", n)}


async def _restart_redis(stack: Stack, build_id: str, rng: random.Random) -> dict[str, Any] | None:
    started = time.perf_counter()
    await asyncio.to_thread(stack.redis.restart)
    return {"down_s": round(time.perf_counter() - started, 3)}


async def _kill_serve_proxy(stack: Stack, build_id: str, rng: random.Random) -> dict[str, Any] | None:
    from serve.deployment import serve_proxy_pid

    pid = await serve_proxy_pid()
    if pid is None:  # being re-created: try again
        return None
    os.kill(pid, signal.SIGKILL)
    return {"pid": pid}


STRIKE = {
    "coordinator": _kill_coordinator,
    "merge_pending": _kill_coordinator_at_merge,
    "sandbox": _kill_sandbox,
    "agent": _kill_agent,
    "redis": _restart_redis,
    "serve_proxy": _kill_serve_proxy,
}


# --- one build --------------------------------------------------------------------------------------


async def _log(stack: Stack, build_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    rows = await stack.bus.read_events(build_id, count=100_000)
    return [(rid, env.message.kind, env.message.data) for rid, env in rows]


async def _status(stack: Stack, build_id: str) -> dict[str, Any]:
    return await asyncio.wait_for(stack.runtime.control.status.remote(USER, build_id), 30)


async def _wait_for_kind(stack: Stack, build_id: str, kind: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if any(k == kind for _, k, _ in await _log(stack, build_id)):
            return
        if (await _status(stack, build_id))["status"] in FINAL:
            return
        await asyncio.sleep(0.1)


async def run_build(
    stack: Stack,
    fault: str | None = None,
    at_s: float = 0.0,
    rng: random.Random | None = None,
    anchor: str | None = None,
) -> dict[str, Any]:
    """Submit hello-calc over HTTP, stream it, strike ``fault``; wait for the build's end.

    The fault strikes ``at_s`` seconds after submit, or after the first ``anchor`` event when given.
    """
    from actors.build.actor import get_coordinator, stop_coordinator

    rng = rng or random.Random(0)
    started = time.monotonic()
    deadline = started + RUN_TIMEOUT_S
    headers = {"Authorization": f"Bearer {stack.token}"}
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        response = await client.post("/api/builds", json={"example": "hello-calc"}, headers=headers)
        response.raise_for_status()
        build_id = response.json()["id"]
    sse = SseClient(stack.url, stack.token, build_id)
    reader = asyncio.create_task(sse.run(deadline))
    struck: dict[str, Any] | None = None
    status: dict[str, Any] = {"status": "timeout"}
    try:
        if fault is not None:
            origin = started
            if anchor is not None:
                await _wait_for_kind(stack, build_id, anchor, started + TARGET_WAIT_S)
                origin = time.monotonic()
            await asyncio.sleep(max(0.0, origin + at_s - time.monotonic()))
            give_up = time.monotonic() + TARGET_WAIT_S
            while struck is None and time.monotonic() < give_up:
                if (await _status(stack, build_id))["status"] in FINAL:
                    break
                if fault == "serve_proxy":  # "while the SSE client is connected"
                    await asyncio.wait_for(sse.connected.wait(), TARGET_WAIT_S)
                struck = await STRIKE[fault](stack, build_id, rng)
                if struck is None:
                    await asyncio.sleep(0.1)
            if struck is not None:
                struck["at_s"] = round(time.monotonic() - started, 2)
        while time.monotonic() < deadline:
            try:
                status = await _status(stack, build_id)
            except Exception as exc:  # noqa: BLE001 - Control may be briefly busy during a fault
                logger.info("chaos: status of %s unavailable (%s: %s); asking again", build_id, type(exc).__name__, exc)
            else:
                if status["status"] in FINAL:
                    break
            await asyncio.sleep(0.5)
        wall = time.monotonic() - started
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), max(5.0, deadline - time.monotonic()))
    finally:
        reader.cancel()
        try:
            await reader
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - the run is reported with the events it did get
            logger.warning("chaos: the SSE reader of %s failed: %s: %s", build_id, type(exc).__name__, exc)
    log = await _log(stack, build_id)
    logged = [rid for rid, _, _ in log]
    received = set(sse.ids)
    tree = next((d.get("tree_hash") for _, k, d in log if k == "build.done"), None)
    await _best_effort(f"stopping the coordinator of {build_id}", lambda: stop_coordinator(get_coordinator(build_id)))
    if status["status"] not in FINAL:  # a hung build must not hold sandboxes past its run
        await _best_effort(f"cancelling {build_id}", lambda: stack.runtime.control.cancel.remote(USER, build_id))
    return {
        "build_id": build_id,
        "fault": fault,
        "at_s": struck["at_s"] if struck else None,
        "struck": struck,
        "status": status["status"],
        "error": status.get("error"),
        "wall_s": round(wall, 2),
        "kinds": [k for _, k, _ in log] if status["status"] != "completed" else None,
        "tree_hash": tree,
        "events": len(logged),
        "sse_received": len(sse.ids),
        "lost_events": sum(1 for rid in logged if rid not in received),
        "duplicate_events": len(sse.ids) - len(received),
        "reconnects": sse.reconnects,
        "sse_end": sse.end,
        "timeline": _timeline(log) if fault is None else None,
    }


def _timeline(log: list[tuple[str, str, dict[str, Any]]]) -> dict[str, float]:
    """Seconds from the first event to the first of some kinds (the fault windows come from it)."""
    t0 = int(log[0][0].split("-")[0]) if log else 0
    out: dict[str, float] = {}
    for rid, kind, _ in log:
        out.setdefault(kind, (int(rid.split("-")[0]) - t0) / 1000)
    return out


def fault_window(fault: str, reference: dict[str, Any]) -> tuple[str | None, float, float]:
    """Where ``fault``'s target exists in an undisturbed run: (anchor event or None for submit, from s, to s).

    Agents and the slot's sandbox live while the team works: from ``slot.building`` for as long as
    the reference team took to ``slot.built``. The coordinator, Redis and Serve's proxy live all along;
    ``merge_pending`` is watched for from the start and strikes when the merge request appears.
    """
    timeline, wall = reference["timeline"] or {}, reference["wall_s"]
    if fault in ("agent", "sandbox"):
        span = timeline.get("slot.built", 0.0) - timeline.get("slot.building", 0.0)
        return "slot.building", 0.0, max(0.2, span)
    if fault == "merge_pending":  # strikes when the request lands, watched from the start
        return None, 0.5, 0.5
    return None, 0.5, 0.9 * wall


# --- the suite --------------------------------------------------------------------------------------


async def _suite(runs: int, seed: int, only: str | None = None, at_s: float | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    home = Path(os.environ["KRIPTIK_HOME"])
    stack = await start_stack(home)
    details: list[dict[str, Any]] = []
    try:
        reference = await run_build(stack)
        logger.warning("reference: %s in %ss", reference["status"], reference["wall_s"])
        faults = [FAULTS[i % len(FAULTS)] for i in range(runs)]
        rng.shuffle(faults)
        if only is not None:
            faults = [only] * runs
        for fault in faults:
            anchor, lo, hi = fault_window(fault, reference)
            if at_s is not None:
                anchor, moment = None, at_s
            else:
                moment = rng.uniform(lo, hi)
            detail = await run_build(stack, fault, moment, rng, anchor)
            if detail["kinds"]:
                logger.warning("%s: %s; events %s", detail["status"], detail["error"], detail["kinds"])
            logger.warning("%s at %ss: %s in %ss", fault, detail["at_s"], detail["status"], detail["wall_s"])
            details.append(detail)
    finally:
        await stop_stack(stack)
    ref_hash = reference["tree_hash"]
    return {
        "bench": "chaos",
        "seed": seed,
        "runs": runs,
        "struck": sum(d["struck"] is not None for d in details),
        "completed": sum(d["status"] == "completed" for d in details),
        "same_result": sum(d["tree_hash"] is not None and d["tree_hash"] == ref_hash for d in details),
        "lost_events": sum(d["lost_events"] for d in details),
        "duplicate_events": sum(d["duplicate_events"] for d in details),
        "reconnects": sum(d["reconnects"] for d in details),
        "reference": {k: reference[k] for k in ("status", "wall_s", "tree_hash", "events", "lost_events")},
        "details": [{k: d[k] for k in DETAIL_KEYS} | {"same_result": d["tree_hash"] == ref_hash} for d in details],
        "targets": {"completed": runs, "same_result": runs, "lost_events": 0},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="faulted builds after the undisturbed one")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time-based)")
    parser.add_argument("--fault", choices=FAULTS, default=None, help="only this fault (reproduce one)")
    parser.add_argument("--at", type=float, default=None, help="strike at this many seconds after submit")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    seed = args.seed if args.seed is not None else int(time.time())
    os.environ.setdefault("RAY_TMPDIR", tempfile.gettempdir())
    with private_ray(num_cpus=4):
        result = asyncio.run(_suite(args.runs, seed, args.fault, args.at))
    emit(result, args.json)


if __name__ == "__main__":
    main()
