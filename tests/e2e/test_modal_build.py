"""Whole builds over the Modal SDK fake in real Ray workers: a ``modal`` build and a ``hybrid`` one.

Control's default backend is local (its warm pools hold local proxies, each with a local standby
sandbox) and its ``modal_backend`` is ``{"type": "modal", "sdk_module": "tests.fakes.modal_sdk"}``:
every actor that creates a Modal sandbox (the slot proxies, the merge gate's main-test proxy, the
preview's) builds a ModalBackend from that dict in its own worker process and imports the fake SDK
there (the workers have fake credentials: tests/conftest.py). The fake keeps its sandboxes and a log
of every SDK call under ``KRIPTIK_HOME/fake-modal``, shared by all processes, so the test reads there
what the builds asked of "Modal"; the local backend's records (``default_root``) say what ran here.

Two builds run side by side, each sent elsewhere by its request's ``build_mode`` (placement.py):

* ``todo-fullstack`` with ``build_mode: modal``: three components, a tournament of two frontend
  candidates, a served page with Chromium criteria, and a preview. Everything runs on the fake; the
  gate's checks, the criteria and the preview reach the app through the fake's tunnels (each fake
  sandbox without egress has a network of its own, as a Modal container has).
* ``hello-calc`` with ``build_mode: hybrid``: its ``calc`` slot on the fake, its main-test sandbox
  local (the gate runs every merge, where latency matters), and nothing else.
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
from coordinator.resources import examples_dir
from sandbox_agents.backends.local.state import LocalState, default_root
from tests.conftest import E2E_POOLS
from tests.fakes.fake_modal import FakeModal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480), pytest.mark.asyncio(loop_scope="module")]

USER = "modal-user"
LOCAL = {"type": "local"}
MODAL = {"type": "modal", "sdk_module": "tests.fakes.modal_sdk", "app_name": "kriptik-e2e"}
TODO_ROLES = [
    "main-test",
    "preview",
    "slot:backend",
    "slot:database",
    "slot:frontend~minimal",
    "slot:frontend~polished",
]
"""Every sandbox of todo-fullstack: the gate's, the preview's, and one per slot (both tournament candidates)."""


def role(tags: dict[str, str]) -> str:
    """A build sandbox's role from its tags: ``main-test``, ``preview`` or ``slot:{id}``."""
    return tags.get("role") or f"slot:{tags['slot']}"


@dataclass
class Build:
    """One finished build: its id, final status and events (kind, data)."""

    id: str
    status: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]

    def sandboxes(self, fake: FakeModal) -> dict[str, str]:
        """The build's sandboxes on the fake, by id: their role."""
        return {i: role(s.tags) for i, s in fake.sandboxes.items() if s.tags.get("build") == self.id}

    def creates(self, fake: FakeModal) -> list[dict[str, Any]]:
        """The arguments of every ``Sandbox.create`` the build made on the fake."""
        return [c.arguments for c in fake.shared_calls("Sandbox.create") if c.arguments["tags"].get("build") == self.id]

    def local_sandboxes(self, home: Path) -> dict[str, str]:
        """The build's sandboxes on the local backend, by id: their role."""
        return {i: role(s.spec.tags) for i, s in local_states(home).items() if s.spec.tags.get("build") == self.id}

    def sandbox_ids_in_events(self) -> set[str]:
        return {d["sandbox_id"] for _, d in self.events if d.get("sandbox_id")}


def local_states(home: Path) -> dict[str, LocalState]:
    """Every local sandbox of ``home`` (ended ones too), by id, as its record says now."""
    states = {}
    for path in default_root(home).glob("sbx-*/state.json"):
        with contextlib.suppress(OSError, ValueError):  # a standby the warm pool is starting right now
            states[path.parent.name] = LocalState.load(path)
    return states


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(ray_cluster, redis_server: ManagedRedis, kriptik_home: Path) -> AsyncIterator[Runtime]:  # noqa: F811
    rt = await start_runtime(
        kriptik_home,
        redis_url=redis_server.url,
        heartbeat_s=5.0,
        admit_poll_s=0.3,
        pools=E2E_POOLS,
        backend=LOCAL,
        local_backend=LOCAL,
        modal_backend=MODAL,
    )
    try:
        yield rt
    finally:
        await stop_control(rt.control)
        await rt.stop()


@dataclass
class Run:
    """The module's two builds, run once for all its tests."""

    todo: Build
    """todo-fullstack, ``build_mode: modal``."""
    calc: Build
    """hello-calc, ``build_mode: hybrid``."""
    local_before: set[str]
    """The local backend's sandboxes before the builds were submitted."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def run(runtime: Runtime, redis_server: ManagedRedis, kriptik_home: Path) -> AsyncIterator[Run]:
    """Both builds, submitted at once and awaited (bounded) to their ends; their coordinators are
    stopped afterwards (which ends their gates', previews' and slots' sandboxes)."""
    before = set(local_states(kriptik_home))
    bus = ContextBus(redis_server.url, BusConfig(prefix="kriptik"), sender="test-modal-build")
    requests = [
        {"example": "todo-fullstack", "build_mode": "modal"},
        {"example": "hello-calc", "build_mode": "hybrid"},
    ]
    ids = [await runtime.control.submit.remote(USER, request) for request in requests]

    async def finished(build_id: str) -> Build:
        deadline = time.monotonic() + 400
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
        todo, calc = await asyncio.gather(*(finished(build_id) for build_id in ids))
        yield Run(todo, calc, before)
    finally:
        for build_id in ids:
            with contextlib.suppress(ValueError):  # no coordinator: nothing to stop
                await stop_coordinator(get_coordinator(build_id))


def assert_completed_with_every_criterion(build: Build, example: str) -> None:
    failures = [d for k, d in build.events if k.endswith(("error", "rejected"))]
    assert build.status["status"] == "completed", (build.status, failures)
    wanted = {c.id for c in load_contract(examples_dir() / "intents" / f"{example}.yaml").success_criteria}
    final = [d for k, d in build.events if k == "intent.satisfaction"][-1]
    assert final["done"] and {r["id"] for r in final["results"] if r["passed"]} == wanted, final


async def main_tree(build: Build) -> dict[str, bytes]:
    import ray

    return await ray.get_actor(gate_name(build.id), namespace=NAMESPACE).tree.remote()


async def test_todo_fullstack_on_modal_completes_with_every_sandbox_created_through_the_modal_sdk(
    run: Run, kriptik_home: Path
) -> None:
    """``build_mode: modal`` on a server whose default is local: every sandbox of the build, both
    tournament candidates among them, comes from ``Sandbox.create`` on the fake, none from the local
    backend (nor from its warm pool), and the loser is snapshotted on Modal before it ends."""
    build = run.todo
    assert_completed_with_every_criterion(build, "todo-fullstack")
    tree = await main_tree(build)
    assert {"db/migrate.py", "api/server.py", "web/serve.py", "web/app.js"} <= set(tree)
    assert b"<h1>Todos</h1>" in tree["web/index.html"]
    [decision] = [d for k, d in build.events if k == "tournament.decision"]
    assert decision["winner"] == "frontend~polished", decision

    fake = FakeModal(kriptik_home)
    sandboxes = build.sandboxes(fake)
    assert sorted(sandboxes.values()) == TODO_ROLES
    creates = build.creates(fake)
    assert len(creates) == len(sandboxes) and {c["app"]["app"] for c in creates} == {"kriptik-e2e"}
    assert build.local_sandboxes(kriptik_home) == {}
    [loser] = [i for i, r in sandboxes.items() if r == "slot:frontend~minimal"]
    assert loser in {c.on for c in fake.shared_calls("Sandbox.snapshot_filesystem")}
    assert fake.sandboxes[loser].returncode is not None


async def test_todo_fullstack_is_checked_and_previewed_through_modal_tunnels(run: Run, kriptik_home: Path) -> None:
    """A Modal sandbox is reached only through its tunnels: the gate's dev servers and the Chromium
    criteria on main, the swarm's checks of both candidates and the preview all went through
    ``tunnels()``, and the preview URL the build reports is the preview sandbox's tunnel, serving the app."""
    build = run.todo
    fake = FakeModal(kriptik_home)
    sandboxes = build.sandboxes(fake)
    tunneled = {sandboxes[c.on] for c in fake.shared_calls("Sandbox.tunnels") if c.on in sandboxes}
    assert {"main-test", "preview", "slot:frontend~minimal", "slot:frontend~polished"} <= tunneled, tunneled
    assert all(c["outbound_cidr_allowlist"] == [] for c in build.creates(fake) if c["encrypted_ports"])
    [preview_id] = [i for i, r in sandboxes.items() if r == "preview"]
    preview = fake.sandboxes[preview_id]
    assert preview.returncode is None and preview.namespaces is not None  # still serving the build's main
    url = f"http://127.0.0.1:{preview.namespaces.tunnels[5173]}"
    assert [d["preview_url"] for k, d in build.events if k == "build.done"] == [url]
    async with httpx.AsyncClient(timeout=10) as client:
        assert "<h1>Todos</h1>" in (await client.get(url)).text
        todos = await client.get(f"{url}/api/todos")  # the page's server forwards to the API in the same sandbox
    assert todos.status_code == 200 and isinstance(todos.json(), list)


async def test_a_restarted_preview_proxy_reconnects_to_its_modal_sandbox_which_kept_serving(
    run: Run, kriptik_home: Path
) -> None:
    """Like a Modal sandbox, the fake's outlives the process that created it; the proxy's next
    incarnation, another process, finds it again by id (``Sandbox.from_id``)."""
    build = run.todo
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
        assert "<h1>Todos</h1>" in (await client.get(url)).text  # served all along
    assert await proxy.expose.remote(5173) == url
    assert "<h1>Todos</h1>" in (await proxy.exec.remote(["cat", "web/index.html"])).stdout
    [found] = [
        c for c in FakeModal(kriptik_home).shared_calls("Sandbox.from_id") if c.arguments["sandbox_id"] == sandbox_id
    ]
    assert found.pid not in (pid, os.getpid())


async def test_hybrid_hello_calc_runs_its_slot_on_modal_and_its_main_test_sandbox_locally(
    run: Run, kriptik_home: Path
) -> None:
    """``hybrid`` puts a component's sandboxes on Modal and the merge gate's main-test sandbox on the
    cluster: the fake's call record holds exactly the ``calc`` slot's create, the local backend's
    records exactly the main-test sandbox, and the build's events name no other sandbox."""
    build = run.calc
    assert_completed_with_every_criterion(build, "hello-calc")
    tree = await main_tree(build)
    assert {"calc.py", "test_calc.py"} <= set(tree) and b"import sys" in tree["calc.py"]  # the recovered version

    fake = FakeModal(kriptik_home)
    on_modal = build.sandboxes(fake)
    assert list(on_modal.values()) == ["slot:calc"]
    [create] = build.creates(fake)
    assert create["tags"]["slot"] == "calc" and create["app"]["app"] == "kriptik-e2e"
    assert create["block_network"] and create["idle_timeout"] is not None  # a slot has no network, as specified
    local = build.local_sandboxes(kriptik_home)
    assert list(local.values()) == ["main-test"]
    assert build.sandbox_ids_in_events() <= set(on_modal) | set(local)
    # The slot's commands ran on the fake from its proxy's worker process (never the test's).
    [slot_id] = on_modal
    callers = {c.pid for c in fake.shared_calls("Sandbox.exec") if c.on == slot_id}
    assert len(callers) == 1 and os.getpid() not in callers
    assert not [c for c in fake.shared_calls("Sandbox.tunnels") if c.on == slot_id]  # nothing serves


async def test_no_build_mixes_backends_beyond_what_hybrid_places_locally_and_every_sandbox_ends_with_its_build(
    run: Run, kriptik_home: Path
) -> None:
    """The local backend saw one sandbox of these builds, the hybrid one's main-test; every other
    local sandbox made meanwhile is a warm-pool standby no build took (a Modal build never takes a
    local proxy). Every sandbox the builds' events name is one of their own on the backend placement
    chose, and stopping the builds ends them all, on both backends."""
    builds = (run.todo.id, run.calc.id)
    states = local_states(kriptik_home)
    # A standby started before the builds (Control fills its pools at start) becomes theirs when taken.
    by_builds = {i: s.spec.tags for i, s in states.items() if s.spec.tags.get("build") in builds}
    assert [(t["build"], t["role"]) for t in by_builds.values()] == [(run.calc.id, "main-test")], by_builds
    others = [s.spec.tags for i, s in states.items() if i not in run.local_before and i not in by_builds]
    assert all(tags.get("kriptik.standby") == "1" for tags in others), others
    fake = FakeModal(kriptik_home)
    on_modal = {i for build in (run.todo, run.calc) for i in build.sandboxes(fake)}
    assert run.todo.sandbox_ids_in_events() <= set(run.todo.sandboxes(fake))
    assert run.calc.sandbox_ids_in_events() <= set(run.calc.sandboxes(fake)) | set(by_builds)

    for build in (run.todo, run.calc):
        await stop_coordinator(get_coordinator(build.id))
    ended = FakeModal(kriptik_home).sandboxes
    assert {i: ended[i].returncode for i in on_modal if ended[i].returncode is None} == {}
    states = local_states(kriptik_home)
    assert all(i not in states or states[i].terminated for i in by_builds), by_builds
