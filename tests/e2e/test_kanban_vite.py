"""The kanban-vite example end to end: npm dependencies, a Vite + React + TypeScript page, an Express API.

Real Ray, Redis, local sandboxes, the install phase against the npm registry (CI reaches it;
without it the test skips and says why) and Chromium. The build completes with every criterion
passing against main; the preview serves the built app through one origin (Vite proxies /api);
and a one-line change merged through the gate after the preview is up reaches an already open
page through Vite's HMR, without a navigation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.handles import NAMESPACE, gate_name, preview_name, proxy_name
from actors.pools.proxies import release
from actors.runtime import Runtime
from actors.sandbox_proxy import start_proxy
from coordinator.bus.context_bus import ContextBus
from coordinator.merge.sandbox import request_from_sandbox
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.proxy_sandbox import ProxySandbox
from sandbox_agents.verifiers import Chromium
from tests.e2e.test_examples import (  # noqa: F401  (module fixtures, shared)
    assert_every_criterion_passed,
    build_to_the_end,
    bus,
    cleanup,
    events,
    main_tree,
    runtime,
)
from tests.integration.nethost import registry_reachable

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not registry_reachable(), reason="the npm registry is unreachable from this host"),
]

HEADING = b"<h1>Kanban</h1>"


async def merge_a_change(build_id: str, gate: Any, files: dict[str, bytes]) -> Any:
    """Submit ``files`` to the gate as component web from a sandbox of their own; the gate's verdict."""
    name = proxy_name(build_id, "web-hotfix")
    handle = start_proxy(name, {"type": "local"})
    try:
        spec = SandboxSpec(profile="node", tags={"build": build_id})
        sandbox = ProxySandbox(handle, await handle.create.remote(spec), spec)
        for path, data in files.items():
            await sandbox.write_file(path, data)
        request = await request_from_sandbox(sandbox, build_id=build_id, component="web", slot="web-hotfix")
        return await gate.admit.remote(request)
    finally:
        await release(handle, name)


async def test_kanban_vite_builds_serves_one_origin_and_hot_reloads_an_open_page(
    runtime: Runtime,  # noqa: F811  (the shared module fixtures)
    bus: ContextBus,  # noqa: F811
    kriptik_home: Path,
) -> None:
    import ray

    build_id, status = await build_to_the_end(runtime, "kanban-vite", timeout=360.0)
    try:
        evs = await events(bus, build_id)
        assert status["status"] == "completed", (status, [d for k, d in evs if k.endswith(("error", "rejected"))])
        assert_every_criterion_passed("kanban-vite", evs)
        escalated = {(d["component"], d["level"]) for k, d in evs if k == "task.escalated"}
        assert {c for c, _ in escalated} >= {"api"} and any(level >= 2 for _, level in escalated), escalated
        assert any(k == "tournament.decision" and d["component"] == "web" for k, d in evs)

        tree = await main_tree(build_id)
        assert {"web/package-lock.json", "api/package-lock.json", "db/package-lock.json"} <= set(tree)
        assert not [p for p in tree if "node_modules/" in p or p.startswith("web/dist/")]
        gate = ray.get_actor(gate_name(build_id), namespace=NAMESPACE)
        preview = ray.get_actor(preview_name(build_id), namespace=NAMESPACE)
        url = await preview.expose.remote()
        async with httpx.AsyncClient(timeout=10) as client:
            page = await client.get(url + "/")
            api = await client.get(url + "/api/cards")  # the API through the page's own origin
        assert page.status_code == 200 and b"/src/main.tsx" in page.content, page.text[:500]
        assert api.status_code == 200 and isinstance(api.json(), list), api.text[:500]

        [app] = [p for p, data in tree.items() if p.startswith("web/src/") and HEADING in data]
        async with Chromium() as chromium:
            context = await chromium.new_context(url)
            tab = await context.new_page()
            navigations: list[str] = []
            await tab.goto(url + "/", wait_until="networkidle")
            await tab.wait_for_selector("h1", timeout=30_000)
            tab.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == tab.main_frame else None)
            await tab.evaluate("window.__kept = 'yes'")
            # A one-line change merged through the gate like any slot's (its checks and criteria run
            # again), then the preview refreshed from main, as the coordinator does after a merge.
            fix = {**tree, app: tree[app].replace(HEADING, b"<h1>Kanban, hot</h1>")}
            accepted = await merge_a_change(build_id, gate, fix)
            assert accepted.accepted and accepted.changed == [app], [f.message for f in accepted.findings]
            await preview.refresh.remote()
            await tab.wait_for_function(
                "document.querySelector('h1')?.textContent === " + json.dumps("Kanban, hot"), timeout=15_000
            )
            assert await tab.evaluate("window.__kept") == "yes" and navigations == []  # updated in place
            await context.close()
    finally:
        await cleanup(build_id)
