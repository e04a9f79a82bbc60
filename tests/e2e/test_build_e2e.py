"""Whole builds of examples/intents/hello-calc.yaml: real Ray, real Redis, real local sandboxes, replay cassette.

Through Control.submit to ``completed``; a SIGKILLed coordinator resumes and ends with the
same main tree as an undisturbed run, also when it dies with a merge request on the bus not yet
acknowledged (merged once, after the restart); a slot whose sandbox processes are killed is respawned
from its checkpoint; a cancel stored while the coordinator is down is honoured.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from actors.build.actor import get_coordinator, stop_coordinator
from actors.control import stop_control
from actors.runtime import Runtime, start_runtime
from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.bus.redis_server import ManagedRedis
from sandbox_agents.backends.local.state import LocalState, default_root
from tests.conftest import E2E_POOLS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.asyncio(loop_scope="module")]

USER = "alice"
PHASES = ["intent", "fleet", "build", "verify", "merge", "preview", "satisfy", "done"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(ray_cluster, redis_server: ManagedRedis, kriptik_home: Path) -> AsyncIterator[Runtime]:  # noqa: F811
    rt = await start_runtime(
        kriptik_home,
        redis_url=redis_server.url,
        heartbeat_s=1.0,
        heartbeat_timeout_s=5.0,
        admit_poll_s=0.3,
        pools=E2E_POOLS,
        coordinator={"checkpoint_interval_s": 30.0, "gate": {"swarm_must_pass": False}},
    )
    try:
        yield rt
    finally:
        await stop_control(rt.control)
        await rt.stop()


@pytest.fixture(scope="module")
def bus(redis_server: ManagedRedis) -> ContextBus:  # noqa: F811
    return ContextBus(redis_server.url, BusConfig(prefix="kriptik"), sender="test")


async def events(bus: ContextBus, build_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    entries = await bus.read_events(build_id, count=10_000)
    return [(eid, env.message.kind, env.message.data) for eid, env in entries]


async def wait_for(predicate: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def final_status(rt: Runtime, build_id: str, timeout: float = 150.0) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        status = await rt.control.status.remote(USER, build_id)
        return status if status["status"] in ("completed", "failed", "cancelled", "paused") else None

    return await wait_for(done, timeout, f"build {build_id} to end", every=0.5)


async def cleanup(build_id: str) -> None:
    try:
        handle = get_coordinator(build_id)
    except ValueError:
        return
    await stop_coordinator(handle)


def done_hash(evs: list[tuple[str, str, dict[str, Any]]]) -> str:
    return next(d["tree_hash"] for _, k, d in evs if k == "build.done")


async def seen(bus: ContextBus, build_id: str, kind: str) -> bool:
    return any(k == kind for _, k, _ in await events(bus, build_id))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def undisturbed(runtime: Runtime, bus: ContextBus) -> str:
    build_id = await runtime.control.submit.remote(USER, {"example": "hello-calc"})
    try:
        status = await final_status(runtime, build_id)
        assert status["status"] == "completed", status
        return done_hash(await events(bus, build_id))
    finally:
        await cleanup(build_id)


async def test_hello_calc_builds_to_completed_through_control(
    runtime: Runtime, bus: ContextBus, undisturbed: str
) -> None:
    builds = await runtime.control.list_builds.remote(USER)
    build_id = next(b["id"] for b in builds if b["status"] == "completed")
    status = await runtime.control.status.remote(USER, build_id)
    assert status["phase"] == "done" and status["budget"]["limit_usd"] == 1.0
    # the ledger charged every agent turn's tokens (the cassette's usage lines: 9 turns, 18 680 tokens)
    assert status["budget"]["llm_tokens"] == 18_680 and status["budget"]["compute_seconds"] > 0
    assert [c["status"] for c in status["components"]] == ["merged"]
    evs = await events(bus, build_id)
    ids = [tuple(int(p) for p in eid.split("-")) for eid, _, _ in evs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # ordered, no duplicates
    kinds = [k for _, k, _ in evs]
    assert [d["phase"] for _, k, d in evs if k == "build.phase"] == PHASES  # every phase, in order, none skipped
    for kind in (
        "intent.locked",
        "fleet.ready",
        "slot.built",
        "slot.verified",
        "merge.accepted",
        "intent.satisfaction",
    ):
        assert kind in kinds, kind
    assert "task.escalated" in kinds and "task.recovered" in kinds  # the cassette's failing first attempt
    assert kinds.index("merge.accepted") < kinds.index("build.done")
    assert done_hash(evs) == undisturbed
    with pytest.raises(Exception, match="no build"):
        await runtime.control.status.remote("mallory", build_id)


async def test_a_sigkilled_coordinator_resumes_once_to_the_same_main_tree(
    runtime: Runtime, bus: ContextBus, undisturbed: str
) -> None:
    build_id = await runtime.control.submit.remote(USER, {"example": "hello-calc"})
    try:
        await wait_for(lambda: seen(bus, build_id, "slot.building"), 60, "the team to start")
        handle = get_coordinator(build_id)
        pid = await handle.pid.remote()
        os.kill(pid, signal.SIGKILL)
        status = await final_status(runtime, build_id)
        assert status["status"] == "completed", status
        evs = await events(bus, build_id)
        assert done_hash(evs) == undisturbed
        # One new incarnation took over from the store: Control's heartbeat left the restart to Ray
        # instead of killing the coordinator again while it came back.
        assert [k for _, k, _ in evs].count("coordinator.resumed") == 1
        assert build_id not in await runtime.control.restarts.remote()
    finally:
        await cleanup(build_id)


async def test_a_coordinator_killed_with_a_merge_request_pending_merges_it_once_after_restart(
    runtime: Runtime, bus: ContextBus, undisturbed: str
) -> None:
    build_id = await runtime.control.submit.remote(USER, {"example": "hello-calc"})
    stream = bus.keys(build_id).stream("merge")
    try:
        await wait_for(lambda: seen(bus, build_id, "slot.building"), 60, "the team to start")
        pid = await get_coordinator(build_id).pid.remote()
        entries = await bus.redis.xread({stream: "0"}, block=120_000, count=1)
        os.kill(pid, signal.SIGKILL)  # the gate's admission takes seconds: the request is not acknowledged yet
        assert entries, "no merge request was sent"
        request_id = entries[0][1][0][0]
        group = next(g for g in await bus.redis.xinfo_groups(stream) if g["name"] in (b"merge-gate", "merge-gate"))
        pending = await bus.redis.xpending_range(stream, "merge-gate", min="-", max="+", count=10)
        assert request_id in [p["message_id"] for p in pending] or group["last-delivered-id"] < request_id

        status = await final_status(runtime, build_id)
        assert status["status"] == "completed", status
        evs = await events(bus, build_id)
        assert done_hash(evs) == undisturbed
        kinds = [k for _, k, _ in evs]
        assert "coordinator.resumed" in kinds
        commits = {d["commit"] for _, k, d in evs if k == "merge.accepted" and d.get("commit")}
        assert len(commits) == 1, commits  # merged once: one commit in main, whatever was re-sent
        assert kinds.count("merge.accepted") == 1  # announced by the gate alone, whoever admitted it
        assert [m["status"] for m in status["merges"]] == ["merged"]  # the request was resolved, once
        assert await bus.redis.xpending(stream, "merge-gate") == {
            "pending": 0,
            "min": None,
            "max": None,
            "consumers": [],
        }
    finally:
        await cleanup(build_id)


async def test_a_killed_sandbox_is_respawned_from_its_checkpoint(
    runtime: Runtime, bus: ContextBus, kriptik_home: Path, undisturbed: str
) -> None:
    build_id = await runtime.control.submit.remote(USER, {"example": "hello-calc"})
    try:
        await wait_for(lambda: seen(bus, build_id, "checkpoint.taken"), 60, "a checkpoint")

        async def sandbox_id() -> str | None:
            slots = (await runtime.control.status.remote(USER, build_id))["components"]
            return slots[0]["sandbox_id"] if slots and slots[0]["status"] in ("ready", "building") else None

        sid = await wait_for(sandbox_id, 30, "the slot's sandbox")
        state = LocalState.load(default_root(kriptik_home) / sid / "state.json")
        os.kill(state.launcher_pid, signal.SIGKILL)  # the launcher's death ends the whole sandbox
        status = await final_status(runtime, build_id)
        assert status["status"] == "completed", status
        evs = await events(bus, build_id)
        respawns = [d for _, k, d in evs if k == "slot.respawned"]
        assert respawns and respawns[0]["slot"] == "calc" and respawns[0]["checkpoint"]
        assert done_hash(evs) == undisturbed
    finally:
        await cleanup(build_id)


async def test_a_cancel_sent_while_the_coordinator_is_down_is_honoured(runtime: Runtime, bus: ContextBus) -> None:
    import ray

    build_id = await runtime.control.submit.remote(USER, {"example": "hello-calc"})
    try:
        await wait_for(lambda: seen(bus, build_id, "fleet.ready"), 60, "the fleet")
        ray.kill(get_coordinator(build_id), no_restart=True)  # down, and Ray will not bring it back

        async def gone() -> bool:
            try:
                get_coordinator(build_id)
            except ValueError:
                return True
            return False

        await wait_for(gone, 20, "the coordinator to be gone")
        answer = await runtime.control.cancel.remote(USER, build_id)
        assert answer["status"] == "cancelling"
        status = await final_status(runtime, build_id, timeout=60)  # Control's heartbeat revives it; it cancels
        assert status["status"] == "cancelled", status
        assert all(c["sandbox_id"] is None for c in status["components"])
        assert (await events(bus, build_id))[-1][1] == "build.cancelled"
        assert build_id in await runtime.control.restarts.remote()
    finally:
        await cleanup(build_id)


def _alive(pid: int) -> bool:
    """The process runs (a zombie does not: one reparented to a container's pid 1 may never be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def held_sandboxes(kriptik_home: Path, build_id: str) -> dict[str, LocalState]:
    """The running local sandboxes of the build's proxies (pooled ones too: found through their aliases), by id."""
    from actors import handles
    from actors.build.remove import actors_of
    from actors.pools.warm import resolve

    held = {}
    for kind, name in actors_of(build_id):
        handle = handles.find(resolve(kind, name)) if kind == "proxy" else None
        if handle is not None and (sid := await handle.sandbox_id.remote()):
            state = LocalState.load(default_root(kriptik_home) / sid / "state.json")
            if _alive(state.launcher_pid):
                held[name.rsplit(":", 1)[1]] = state
    return held


async def test_deleting_an_ended_build_leaves_nothing_of_it_running_stored_or_on_disk(
    runtime: Runtime, bus: ContextBus, kriptik_home: Path
) -> None:
    import ray

    build_id = await runtime.control.submit.remote(USER, {"example": "hello-calc"})
    try:
        assert (await final_status(runtime, build_id))["status"] == "completed"
        with pytest.raises(Exception, match="no build"):
            await runtime.control.delete.remote("mallory", build_id)  # not theirs: nothing happens
        live = await held_sandboxes(kriptik_home, build_id)
        assert "main-test" in live, live  # an ended build holds its gate's sandbox (hello-calc has no preview)

        await runtime.control.delete.remote(USER, build_id)

        named = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
        assert not [n for n in named if build_id in n]
        assert not [k async for k in bus.redis.scan_iter(match=f"*{build_id}*")]
        assert not [p for p in kriptik_home.rglob(f"*{build_id}*")]
        assert not [sid for sid, s in live.items() if _alive(s.launcher_pid)]  # each one's launcher ended
        with pytest.raises(Exception, match="no build"):
            await runtime.control.status.remote(USER, build_id)
        assert build_id not in [b["id"] for b in await runtime.control.list_builds.remote(USER)]
    finally:
        await cleanup(build_id)
