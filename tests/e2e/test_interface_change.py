"""A provider changes its declared interface mid-build, and its dependent adapts before it merges.

Real Ray, Redis and local sandboxes, replayed from ``fixtures/shout-relay-cassette.yaml``: the word
module's first version is rejected by the gate; its fix renames ``shout`` to ``yell`` and publishes
the new interface (the decision ``interface.words``); the app, built and checked against the first
version, is told (``interface.changed``), gets a fix run whose check runs against the new code, and
the build completes with main holding the new interface on both sides.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from actors.build.actor import get_coordinator, stop_coordinator
from actors.control import stop_control
from actors.handles import NAMESPACE, gate_name
from actors.runtime import Runtime, start_runtime
from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.bus.redis_server import ManagedRedis
from coordinator.contracts import load_contract
from tests.conftest import E2E_POOLS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.asyncio(loop_scope="module")]

FIXTURES = Path(__file__).parent / "fixtures"
USER = "relay"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(ray_cluster, redis_server: ManagedRedis, kriptik_home: Path) -> AsyncIterator[Runtime]:  # noqa: F811
    llm = {"type": "replay", "cassettes": [str(FIXTURES / "shout-relay-cassette.yaml")]}
    rt = await start_runtime(
        kriptik_home,
        redis_url=redis_server.url,
        heartbeat_s=5.0,
        admit_poll_s=0.3,
        pools=E2E_POOLS,
        llm=llm,
        coordinator={"gate": {"swarm_must_pass": False}},
    )
    try:
        yield rt
    finally:
        await stop_control(rt.control)
        await rt.stop()


async def test_a_dependent_is_told_of_its_providers_new_interface_rechecks_and_the_build_completes_with_it(
    runtime: Runtime, redis_server: ManagedRedis
) -> None:
    contract = load_contract(FIXTURES / "shout-relay.yaml")
    build_id = await runtime.control.submit.remote(USER, {"contract": contract.model_dump(mode="json")})
    bus = ContextBus(redis_server.url, BusConfig(prefix="kriptik"), sender="test-interface")
    try:
        deadline = time.monotonic() + 200
        while (status := await runtime.control.status.remote(USER, build_id))["status"] not in (
            "completed",
            "failed",
            "cancelled",
            "paused",
        ):
            assert time.monotonic() < deadline, f"build {build_id} did not end"
            await asyncio.sleep(0.5)
        evs: list[tuple[str, dict[str, Any]]] = [
            (env.message.kind, env.message.data) for _, env in await bus.read_events(build_id, count=10_000)
        ]
        assert status["status"] == "completed", (status, [k for k, _ in evs])

        def first(kind: str, **match: Any) -> int:
            return next(i for i, (k, d) in enumerate(evs) if k == kind and all(d.get(f) == v for f, v in match.items()))

        # the app passed its check against the first words.py, before the interface changed
        app_checked = first("team.check", component="app", ok=True)
        changed = first("interface.changed", component="words")
        assert app_checked < changed
        assert evs[changed][1]["interface"] == {"http": [], "tables": {}, "modules": {"words.py": ["yell"]}}
        assert evs[changed][1]["dependents"] == ["app"] and evs[changed][1]["by"].endswith(":agent:words:0")
        # told: a fix run of the app with the new interface, whose check ran again against the new words.py
        refix = first("slot.building", slot="app", attempt=1)
        assert changed < refix
        task = first("task.started", task="interface-fix-1")
        assert refix < task < first("merge.accepted", component="app")
        assert any(k == "team.check" and d.get("component") == "app" for k, d in evs[task:])

        import ray

        main = await ray.get_actor(gate_name(build_id), namespace=NAMESPACE).tree.remote()
        assert b"def yell(" in main["words.py"] and b"def shout(" not in main["words.py"]
        assert b"from words import yell" in main["app.py"]
    finally:
        await bus.aclose()
        try:
            await stop_coordinator(get_coordinator(build_id))
        except ValueError:
            pass
