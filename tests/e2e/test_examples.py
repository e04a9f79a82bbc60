"""The two example builds, end to end: real Ray, Redis, local sandboxes and Chromium, replayed cassettes.

``hello-calc`` and ``todo-fullstack`` go through Control to ``completed`` with the merge gate's
swarm required to pass and every success criterion of the contract passing against main.
``todo-fullstack`` also shows the tournament at work: the judge names the polished candidate,
the minimal one is snapshotted and then terminated, and main holds all three components.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from actors.build.actor import get_coordinator, stop_coordinator
from actors.control import stop_control
from actors.handles import NAMESPACE, gate_name
from actors.runtime import Runtime, start_runtime
from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.bus.redis_server import ManagedRedis, free_port
from coordinator.contracts import load_contract
from coordinator.resources import examples_dir
from coordinator.store.store import Store
from sandbox_agents.backends.local.state import LocalState, default_root
from serve.auth import create_token
from tests.conftest import E2E_POOLS

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.asyncio(loop_scope="module")]

USER = "examples"
TREES: dict[str, str] = {}
"""main's tree hash of todo-fullstack built in parallel, for the sequential build to match."""
EXAMPLES = examples_dir()
KEPT: dict[str, str] = {}
"""Example → a completed build left running (gate, preview) for the builder view's test; cleaned up by it or
at the module's end."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(ray_cluster, redis_server: ManagedRedis, kriptik_home: Path) -> AsyncIterator[Runtime]:  # noqa: F811
    rt = await start_runtime(
        kriptik_home, redis_url=redis_server.url, heartbeat_s=5.0, admit_poll_s=0.3, pools=E2E_POOLS
    )
    try:
        yield rt
    finally:
        for build_id in KEPT.values():  # kept for a later test of this module that did not run
            await cleanup(build_id)
        await stop_control(rt.control)
        await rt.stop()


@pytest.fixture(scope="module")
def bus(redis_server: ManagedRedis) -> ContextBus:  # noqa: F811
    return ContextBus(redis_server.url, BusConfig(prefix="kriptik"), sender="test-examples")


async def events(bus: ContextBus, build_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(env.message.kind, env.message.data) for _, env in await bus.read_events(build_id, count=10_000)]


async def build_to_the_end(
    rt: Runtime, example: str, timeout: float = 200.0, **request: Any
) -> tuple[str, dict[str, Any]]:
    """Submit an example and poll (bounded) until the build ends; returns its id and final status."""
    build_id = await rt.control.submit.remote(USER, {"example": example, **request})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await rt.control.status.remote(USER, build_id)
        if status["status"] in ("completed", "failed", "cancelled", "paused"):
            return build_id, status
        await asyncio.sleep(0.5)
    raise AssertionError(f"{example}: build {build_id} did not end within {timeout}s")


async def main_tree(build_id: str) -> dict[str, bytes]:
    import ray

    return await ray.get_actor(gate_name(build_id), namespace=NAMESPACE).tree.remote()


async def cleanup(build_id: str) -> None:
    try:
        handle = get_coordinator(build_id)
    except ValueError:
        return
    await stop_coordinator(handle)  # closes gate, preview and judge: their sandboxes go


def assert_every_criterion_passed(example: str, evs: list[tuple[str, dict[str, Any]]]) -> None:
    wanted = {c.id for c in load_contract(EXAMPLES / "intents" / f"{example}.yaml").success_criteria}
    final = [d for k, d in evs if k == "intent.satisfaction"][-1]
    assert final["done"] and {r["id"] for r in final["results"] if r["passed"]} == wanted, final
    assert not [d for k, d in evs if k == "merge.rejected"]  # the gate admitted every component at once


async def test_hello_calc_completes_with_every_criterion(runtime: Runtime, bus: ContextBus) -> None:
    build_id, status = await build_to_the_end(runtime, "hello-calc")
    try:
        assert status["status"] == "completed", status
        evs = await events(bus, build_id)
        assert_every_criterion_passed("hello-calc", evs)
        assert {"calc.py", "test_calc.py"} <= set(await main_tree(build_id))
    finally:
        await cleanup(build_id)


async def test_todo_fullstack_completes_and_the_polished_candidate_wins(
    runtime: Runtime, bus: ContextBus, kriptik_home: Path
) -> None:
    build_id, status = await build_to_the_end(runtime, "todo-fullstack")
    try:
        evs = await events(bus, build_id)
        kinds = [k for k, _ in evs]
        assert status["status"] == "completed", (status, [d for k, d in evs if k.endswith(("error", "rejected"))])
        assert_every_criterion_passed("todo-fullstack", evs)

        # The cassette's failing first attempts really failed their checks and recovered at level 1.
        escalated = {(d["component"], d["task"]) for k, d in evs if k == "task.escalated"}
        assert {("database", "db-migrate"), ("backend", "api-tests")} <= escalated, escalated
        assert sum(k == "task.recovered" for k in kinds) >= 2

        # Parallel: the frontend's team works before the backend merges; each dependent was fed once.
        first_frontend = next(
            i for i, (k, d) in enumerate(evs) if k == "task.started" and d["component"].startswith("frontend")
        )
        backend_merged = next(
            i for i, (k, d) in enumerate(evs) if k == "merge.accepted" and d["component"] == "backend"
        )
        assert first_frontend < backend_merged
        fed = sorted((d["provider"], d["component"]) for k, d in evs if k == "component.fed")
        assert fed == [("backend", "frontend"), ("database", "backend")], fed
        TREES["parallel"] = [d for k, d in evs if k == "build.done"][-1]["tree_hash"]

        # The tournament: the judge names polished; minimal is snapshotted, then terminated.
        [decision] = [d for k, d in evs if k == "tournament.decision"]
        assert decision["component"] == "frontend" and decision["winner"] == "frontend~polished", decision
        [eliminated] = [d for k, d in evs if k == "tournament.eliminated"]
        assert eliminated["slot"] == "frontend~minimal"
        assert kinds.index("tournament.decision") < kinds.index("tournament.eliminated")
        with Store(str(kriptik_home / "store.db")) as store:
            checkpoint = store.latest_checkpoint(build_id, "frontend~minimal")
            slots = {s.slot: s for s in store.list_slots(build_id)}
        assert checkpoint is not None and checkpoint.phase == "tournament", checkpoint
        assert slots["frontend~minimal"].status == "lost" and slots["frontend~minimal"].sandbox_id is None
        assert slots["frontend~polished"].status == "merged"
        state = default_root(kriptik_home) / checkpoint.sandbox_id / "state.json"
        assert not state.exists() or LocalState.load(state).terminated, "the loser's sandbox still runs"

        # main holds the three components, the polished page among them, in dependency order.
        import ray

        gate = ray.get_actor(gate_name(build_id), namespace=NAMESPACE)
        assert await gate.merged.remote() == ["database", "backend", "frontend"]
        tree = await main_tree(build_id)
        assert {"db/migrate.py", "db/migrations/001_todos.sql", "api/server.py", "api/test_server.py"} <= set(tree)
        assert {"web/serve.py", "web/index.html", "web/app.js"} <= set(tree)
        assert b"<h1>Todos</h1>" in tree["web/index.html"] and b"innerHTML" not in tree["web/index.html"]
        done = [d for k, d in evs if k == "build.done"][-1]
        assert done["preview_url"], done

        # Where the time went: the commands of every slot's sandbox, of the gate for every merge, and
        # the model calls of every team (kriptik demo subtracts them from each component's pipeline).
        busy = {(d["source"], d["component"]) for k, d in evs if k == "busy.report"}
        slots = {"database", "backend", "frontend~minimal", "frontend~polished"}
        assert {("sandbox", s) for s in slots} <= busy, busy
        assert {("gate", c) for c in ("database", "backend", "frontend")} <= busy, busy
        assert {("model", s.replace("~", ".")) for s in slots} <= busy, busy
        KEPT["todo-fullstack"] = build_id
    finally:
        if "todo-fullstack" not in KEPT:
            await cleanup(build_id)


@asynccontextmanager
async def served_api(rt: Runtime, kriptik_home: Path, redis_url: str) -> AsyncIterator[tuple[str, str]]:
    """The HTTP API and web UI in this process (uvicorn) over the runtime's Control; yields its URL and a token."""
    import uvicorn

    from serve.app import ApiSettings, create_app
    from serve.control_port import RayControlPort
    from serve.store_status import StoreFirstControl

    store = Store(str(kriptik_home / "store.db")).start()
    token = create_token(store, USER)
    control = StoreFirstControl(RayControlPort(rt.control), store)
    settings = ApiSettings(rate_per_s=1000, burst=1000, heartbeat_s=1.0, sse_block_ms=200)
    app = create_app(control, lambda: ContextBus(redis_url, BusConfig(prefix="kriptik"), sender="api"), store, settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert not task.done() and time.monotonic() < deadline, "the API did not start in 30 s"
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        await task
        store.close()


async def test_the_builder_view_shows_every_panel_of_the_todo_fullstack_build(
    runtime: Runtime,
    bus: ContextBus,
    redis_server: ManagedRedis,
    kriptik_home: Path,
    tmp_path: Path,
) -> None:
    """The web UI in Chromium over the completed parallel build above: every panel filled, and a screenshot."""
    import httpx
    from playwright.async_api import async_playwright, expect

    build_id = KEPT.get("todo-fullstack")
    if build_id is None:
        pytest.skip("needs the completed parallel todo-fullstack build of this module first")
    try:
        async with served_api(runtime, kriptik_home, redis_server.url) as (url, token), async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1440, "height": 1000})
                await page.goto(f"{url}/ui/")
                await page.evaluate("token => localStorage.setItem('kriptik.token', token)", token)
                await page.goto(f"{url}/ui/#/build/{build_id}")
                await expect(page.locator("#build-status")).to_have_text("completed", timeout=20_000)
                await expect(page.locator("#stream-state")).to_have_text("ended", timeout=30_000)  # the whole log

                # The timeline: one human line per event, its raw JSON on demand.
                log = await events(bus, build_id)
                assert await page.locator("#log li.log-line").count() == len(log)
                assert any(kind == "agent.step" and data["tool"] for kind, data in log)
                decided = page.locator("#log li[data-kind='tournament.decision'] .text")
                await expect(decided).to_have_text("frontend~polished wins the frontend tournament")
                merged = page.locator("#log li[data-kind='merge.accepted']").first
                await merged.locator("summary").click()
                await expect(merged.locator(".raw")).to_contain_text('"commit"')

                # The fleet: each slot's sandbox and backend, its agents and what they did, its swarm verdict.
                await expect(page.locator("#fleet tbody tr")).to_have_count(4)
                for slot in ("database", "backend", "frontend~minimal", "frontend~polished"):
                    row = page.locator(f"#fleet tr[data-slot='{slot}']")
                    await expect(row.locator(".sandbox-id")).not_to_have_text("—")
                    await expect(row).to_contain_text("local backend")
                    await expect(row.locator(".agent.done").first).to_contain_text("done: ")
                    await expect(row.locator(".agent.done .step").first).to_have_text(
                        re.compile(r"\S")
                    )  # its last step
                    await expect(row.locator(".swarm-score")).to_have_text(re.compile(r"^[01]\.\d\d$"))
                    await expect(row.locator(".chip")).to_have_count(6)  # the six verifiers, each passed or not

                # The tournament: both candidates side by side with scores, the winner, the judge's reasons.
                tournament = page.locator("#tournaments .tournament[data-component='frontend']")
                await expect(tournament.locator(".candidate")).to_have_count(2)
                await expect(tournament.locator(".candidate.winner")).to_have_attribute(
                    "data-slot", "frontend~polished"
                )
                await expect(tournament.locator(".candidate.eliminated")).to_have_attribute(
                    "data-slot", "frontend~minimal"
                )
                for score in await tournament.locator(".big-score").all_inner_texts():
                    assert re.fullmatch(r"0\.\d{3}", score), score
                await expect(tournament.locator(".reasons li").first).to_contain_text("frontend~polished")

                # Merges: each with its commit; a merge's diff per file.
                await expect(page.locator("#merges .merge")).to_have_count(3)
                await page.locator("#merges .merge[data-component='backend'] .merge-pick").click()
                await expect(page.locator("#diff .diff-file")).to_have_count(2)
                await page.locator("#diff .diff-file[data-path='api/server.py']").click()
                await expect(page.locator("#diff .dl.add").first).to_be_visible()
                await page.locator("#merges .merge[data-component='frontend'] .merge-pick").click()
                await expect(page.locator("#diff .diff-file[data-path='web/index.html']")).to_be_visible()

                # Main's file tree and one file in the code viewer.
                await expect(page.locator("#files .tree-file")).to_have_count(len(await main_tree(build_id)))
                await page.locator("#files .tree-file[data-path='web/index.html']").click()
                await expect(page.locator("#code .code-text")).to_contain_text("<h1>Todos</h1>")

                # The preview frame shows the app, its screenshots under it; the budget meter its spend and thresholds.
                await expect(page.frame_locator("#preview").locator("h1")).to_have_text("Todos", timeout=20_000)
                await expect(page.locator("#shots .shot").first).to_be_visible(timeout=20_000)
                await expect(page.locator("#shot-latest img")).to_be_visible()
                await expect(page.locator("#budget-text")).to_contain_text(re.compile(r"^\$\d+\.\d\d of \$5\.00"))
                await expect(page.locator("#budget-stats dd")).to_have_count(3)
                await expect(page.locator("#budget-warn-label")).to_have_text("warns at $4.00")
                await expect(page.locator("#budget-limit-label")).to_have_text("pauses at $5.00")

                # Chromium stops painting a cross-origin frame scrolled out of view: back to the top, two frames.
                await page.evaluate("() => window.scrollTo(0, 0)")
                await page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
                shot = tmp_path / "builder-view.png"
                await page.screenshot(path=str(shot), full_page=True)
                print(f"builder view screenshot: {shot}")
            finally:
                await browser.close()
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:  # the same reads, someone else's token
                with Store(str(kriptik_home / "store.db")) as store:
                    other = {"Authorization": f"Bearer {create_token(store, 'someone-else')}"}
                for path in (f"/api/build/tree/{build_id}", f"/api/build/file/{build_id}?path=web/index.html"):
                    assert (await client.get(path, headers=other)).status_code == 404
    finally:
        await cleanup(KEPT.pop("todo-fullstack"))


async def test_todo_fullstack_built_sequentially_gives_the_same_main(runtime: Runtime, bus: ContextBus) -> None:
    if "parallel" not in TREES:
        pytest.skip("needs the parallel todo-fullstack build of this module first")
    build_id, status = await build_to_the_end(runtime, "todo-fullstack", parallel=False)
    try:
        assert status["status"] == "completed", status
        evs = await events(bus, build_id)
        assert not [d for k, d in evs if k == "component.fed"]
        backend_merged = next(
            i for i, (k, d) in enumerate(evs) if k == "merge.accepted" and d["component"] == "backend"
        )
        assert all(
            i > backend_merged
            for i, (k, d) in enumerate(evs)
            if k == "task.started" and d["component"].startswith("frontend")
        )
        assert [d for k, d in evs if k == "build.done"][-1]["tree_hash"] == TREES["parallel"]
    finally:
        await cleanup(build_id)
