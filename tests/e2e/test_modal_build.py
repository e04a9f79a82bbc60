"""Whole builds on the Modal backend, over the Modal SDK fake, in real Ray workers.

Control runs with ``backend={"type": "modal", "sdk_module": "tests.fakes.modal_sdk"}``: every actor
that creates a sandbox (the slot proxies, the merge gate's main-test proxy, the preview's, the
warm pool's) builds a ModalBackend from that dict in its own worker process and imports the fake
SDK there (the workers have fake credentials: tests/conftest.py). The fake keeps its sandboxes and
a log of every SDK call under ``KRIPTIK_HOME/fake-modal``, shared by all processes, so the test
reads there what the builds asked of "Modal".

Two builds run side by side: ``hello-calc`` (the example; a library and CLI, so nothing serves)
and ``hello-page`` (``fixtures/hello-page.yaml``: one page on ``python3 -m http.server``), whose
gate checks, Chromium criteria and preview reach the page through the fake's tunnels — each fake
sandbox has a network of its own, as a Modal container has.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from actors.build.actor import get_coordinator, stop_coordinator
from actors.control import stop_control
from actors.handles import NAMESPACE, PREVIEW_SID, gate_name
from actors.pools.proxies import get_proxy
from actors.runtime import Runtime, start_runtime
from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.bus.redis_server import ManagedRedis
from coordinator.contracts import load_contract
from sandbox_agents.backends.local.state import default_root
from tests.fakes.fake_modal import FakeModal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.asyncio(loop_scope="module")]

FIXTURES = Path(__file__).parent / "fixtures"
USER = "modal-user"
MODAL = {"type": "modal", "sdk_module": "tests.fakes.modal_sdk", "app_name": "kriptik-e2e"}


@dataclass
class Build:
    """One finished build: its id, final status and events (kind, data)."""

    id: str
    status: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]

    def sandboxes(self, fake: FakeModal) -> dict[str, str]:
        """The build's sandboxes on the fake, by id: their role (``main-test``, ``preview``, ``slot:{id}``)."""
        mine = {i: s.tags for i, s in fake.sandboxes.items() if s.tags.get("build") == self.id}
        return {i: tags.get("role") or f"slot:{tags['slot']}" for i, tags in mine.items()}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(ray_cluster, redis_server: ManagedRedis, kriptik_home: Path) -> AsyncIterator[Runtime]:  # noqa: F811
    rt = await start_runtime(
        kriptik_home,
        redis_url=redis_server.url,
        heartbeat_s=5.0,
        admit_poll_s=0.3,
        backend=MODAL,
        llm={"type": "replay", "cassettes": [str(FIXTURES / "hello-page-cassette.yaml")]},
    )
    try:
        yield rt
    finally:
        await stop_control(rt.control)
        await rt.stop()


@dataclass
class Run:
    """The module's two builds, run once for all its tests."""

    builds: dict[str, Build]
    local_sandboxes_before: set[str]
    """The local backend's sandbox directories before the builds were submitted."""


def local_sandboxes(home: Path) -> set[str]:
    root = default_root(home)
    return {d.name for d in root.iterdir()} if root.exists() else set()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def run(runtime: Runtime, redis_server: ManagedRedis, kriptik_home: Path) -> AsyncIterator[Run]:
    """hello-calc and hello-page, submitted at once and awaited (bounded) to their ends; their
    coordinators are stopped afterwards (which ends their gates', previews' and slots' sandboxes)."""
    before = local_sandboxes(kriptik_home)
    bus = ContextBus(redis_server.url, BusConfig(prefix="kriptik"), sender="test-modal-build")
    page = load_contract(FIXTURES / "hello-page.yaml").model_dump(mode="json")
    requests = {"hello-calc": {"example": "hello-calc"}, "hello-page": {"contract": page}}
    ids = {name: await runtime.control.submit.remote(USER, request) for name, request in requests.items()}

    async def finished(build_id: str) -> Build:
        deadline = time.monotonic() + 200
        while (status := await runtime.control.status.remote(USER, build_id))["status"] not in (
            "completed",
            "failed",
            "cancelled",
            "paused",
        ):
            assert time.monotonic() < deadline, f"build {build_id} did not end"
            await asyncio.sleep(0.5)
        entries = await bus.read_events(build_id, count=10_000)
        return Build(build_id, status, [(env.message.kind, env.message.data) for _, env in entries])

    try:
        done = await asyncio.gather(*(finished(build_id) for build_id in ids.values()))
        yield Run(dict(zip(ids, done, strict=True)), before)
    finally:
        for build_id in ids.values():
            with contextlib.suppress(ValueError):  # no coordinator: nothing to stop
                await stop_coordinator(get_coordinator(build_id))


def assert_completed_with_every_criterion(build: Build) -> None:
    failures = [d for k, d in build.events if k.endswith(("error", "rejected"))]
    assert build.status["status"] == "completed", (build.status, failures)
    final = [d for k, d in build.events if k == "intent.satisfaction"][-1]
    assert final["done"] and all(r["passed"] for r in final["results"]), final


async def main_tree(build: Build) -> dict[str, bytes]:
    import ray

    return await ray.get_actor(gate_name(build.id), namespace=NAMESPACE).tree.remote()


async def test_hello_calc_completes_with_every_sandbox_created_through_the_modal_sdk(
    run: Run, kriptik_home: Path
) -> None:
    build = run.builds["hello-calc"]
    assert_completed_with_every_criterion(build)
    tree = await main_tree(build)
    assert {"calc.py", "test_calc.py"} <= set(tree) and b"import sys" in tree["calc.py"]  # the recovered version

    fake = FakeModal(kriptik_home)
    sandboxes = build.sandboxes(fake)
    assert sorted(sandboxes.values()) == ["main-test", "slot:calc"]  # nothing serves: no preview sandbox
    creates = [c.arguments for c in fake.shared_calls("Sandbox.create") if c.arguments["tags"].get("build") == build.id]
    assert len(creates) == len(sandboxes) and {c["app"]["app"] for c in creates} == {"kriptik-e2e"}
    slot = next(c for c in creates if c["tags"].get("slot") == "calc")
    assert slot["block_network"] and slot["idle_timeout"] is not None  # a slot has no network, as specified
    # Commands ran in both sandboxes, each from its own proxy's worker process (never the test's).
    callers = {on: {c.pid for c in fake.shared_calls("Sandbox.exec") if c.on == on} for on in sandboxes}
    assert sorted(len(pids) for pids in callers.values()) == [1, 1]
    assert len(set().union(*callers.values()) - {os.getpid()}) == 2
    assert not [c for c in fake.shared_calls("Sandbox.tunnels") if c.on in sandboxes]
    assert all(d["url"] is None for k, d in build.events if k == "preview.refreshed")


async def test_hello_page_is_checked_and_previewed_through_modal_tunnels(run: Run, kriptik_home: Path) -> None:
    build = run.builds["hello-page"]
    assert_completed_with_every_criterion(build)
    assert b"<h1>Hello from KripTik</h1>" in (await main_tree(build))["index.html"]

    fake = FakeModal(kriptik_home)
    sandboxes = build.sandboxes(fake)
    assert sorted(sandboxes.values()) == ["main-test", "preview", "slot:page"]
    creates = [c.arguments for c in fake.shared_calls("Sandbox.create") if c.arguments["tags"].get("build") == build.id]
    assert all(c["encrypted_ports"] == [5173] for c in creates)
    # The gate's dev server and Chromium criteria and the preview reached the page through tunnels.
    tunneled = {sandboxes[c.on] for c in fake.shared_calls("Sandbox.tunnels") if c.on in sandboxes}
    assert {"main-test", "preview"} <= tunneled
    [preview_id] = [i for i, role in sandboxes.items() if role == "preview"]
    preview = fake.sandboxes[preview_id]
    assert preview.returncode is None and preview.namespaces is not None  # still serving the build's main
    url = f"http://127.0.0.1:{preview.namespaces.tunnels[5173]}"
    assert [d["preview_url"] for k, d in build.events if k == "build.done"] == [url]
    async with httpx.AsyncClient(timeout=10) as client:
        assert "Hello from KripTik" in (await client.get(url)).text


async def test_a_restarted_preview_proxy_reconnects_to_its_modal_sandbox_which_kept_serving(
    run: Run, kriptik_home: Path
) -> None:
    """Like a Modal sandbox, the fake's outlives the process that created it; the proxy's next
    incarnation, another process, finds it again by id (``Sandbox.from_id``)."""
    build = run.builds["hello-page"]
    proxy = get_proxy(build.id, PREVIEW_SID)
    sandbox_id = await proxy.sandbox_id.remote()
    url = await proxy.expose.remote(5173)
    pid = await proxy.pid.remote()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:  # one call may fail while Ray restarts the actor
        assert time.monotonic() < deadline, "the preview's proxy did not come back"
        with contextlib.suppress(Exception):
            if await proxy.pid.remote() != pid:
                break
        await asyncio.sleep(0.2)
    async with httpx.AsyncClient(timeout=10) as client:
        assert "Hello from KripTik" in (await client.get(url)).text  # served all along
    assert await proxy.expose.remote(5173) == url
    assert (await proxy.exec.remote(["cat", "index.html"])).stdout.count("Hello from KripTik") == 2
    [found] = [
        c for c in FakeModal(kriptik_home).shared_calls("Sandbox.from_id") if c.arguments["sandbox_id"] == sandbox_id
    ]
    assert found.pid not in (pid, os.getpid())


async def test_every_sandbox_of_both_builds_ran_on_modal_and_ended_with_its_build(run: Run, kriptik_home: Path) -> None:
    assert local_sandboxes(kriptik_home) == run.local_sandboxes_before  # no local sandbox, warm or cold
    fake = FakeModal(kriptik_home)
    ours = {i for build in run.builds.values() for i in build.sandboxes(fake)}
    used = {d["sandbox_id"] for b in run.builds.values() for k, d in b.events if d.get("sandbox_id")}
    assert used and used <= ours, used - ours  # every sandbox the builds' events name is a Modal one of theirs
    for build in run.builds.values():
        await stop_coordinator(get_coordinator(build.id))
    ended = FakeModal(kriptik_home).sandboxes
    assert {i: ended[i].returncode for i in ours if ended[i].returncode is None} == {}
