"""MergeGate and Preview on a real Ray, real local sandboxes, real git on the gate's host, real Chromium.

A tiny two-component app (a stdlib JSON API and a static page that depends on it) is written into
two slot sandboxes. The page is submitted first and waits; a failing criterion rejects the API
and leaves ``main`` as it was; the fixed API merges, then the page; the preview serves the merged
page and a take-over sandbox is a copy whose changes never reach the preview. A hostile candidate
(git hooks, ``* export-ignore``, a write to ``refs/heads/main``, a daemon) cannot alter ``main``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from actors.handles import MAIN_TEST_SID, NAMESPACE, proxy_name
from actors.merge_gate import GateConfig, repo_dir, start_gate, stop_gate
from actors.pools.proxies import get_proxy, release
from actors.preview import PreviewConfig, start_preview, stop_preview
from actors.sandbox_proxy import start_proxy
from coordinator.bus.context_bus import ContextBus
from coordinator.merge import MergeRequest, MergeResult, request_from_sandbox, sha256_of
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.proxy_sandbox import ProxySandbox
from sandbox_agents.verifiers import Chromium

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

LOCAL = {"type": "local"}

API = '''"""A tiny JSON API."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = self.path == "/api/hello"
        body = json.dumps({"message": "hello"} if found else {"error": "not found"}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 8000
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''
PAGE = """<!doctype html>
<html lang="en">
  <head><meta charset="utf-8"><title>Todos</title><link rel="icon" href="data:,"></head>
  <body><h1>Todos</h1><p>Nothing left to do today.</p></body>
</html>
"""

CONTRACT: dict[str, Any] = {
    "name": "hello-todos",
    "summary": "A JSON API and a page.",
    "components": [
        {
            "name": "api",
            "kind": "backend",
            "description": "JSON API",
            "tasks": [{"id": "api", "title": "API"}],
            "dev_server": {"command": "python3 api/server.py --port 8000", "port": 8000, "ready_path": "/api/hello"},
        },
        {
            "name": "web",
            "kind": "frontend",
            "description": "The page",
            "depends_on": ["api"],
            "tasks": [{"id": "page", "title": "Page"}],
            "dev_server": {"command": "python3 -m http.server 5173 --directory web", "port": 5173},
        },
    ],
    "success_criteria": [
        {"id": "api-check", "type": "command", "command": "python3 api/check.py", "component": "api"},
        {"id": "hello", "type": "http", "path": "/api/hello", "body_contains": "hello", "component": "api"},
        {"id": "heading", "type": "ui", "selector": "h1", "text": "Todos", "component": "web"},
        {"id": "page-file", "type": "file", "path": "web/index.html"},
    ],
}


PAGE_ONLY: dict[str, Any] = {
    **CONTRACT,
    "components": [{**CONTRACT["components"][1], "depends_on": []}],
    "success_criteria": [CONTRACT["success_criteria"][2]],
}
"""Just the page (no API): what the preview tests serve."""


async def wait_until(check, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached")


async def page_text(chromium: Chromium, url: str) -> str:
    context = await chromium.new_context(url)
    try:
        page = await context.new_page()
        await page.goto(url, wait_until="load", timeout=20_000)
        return await page.locator("h1").first.inner_text(timeout=10_000)
    finally:
        await context.close()


class Slots:
    """Slot sandboxes (proxies named ``build:{id}:sbx:{slot}``) with files written in them."""

    def __init__(self, build: str) -> None:
        self.build = build
        self.proxies: dict[str, Any] = {}

    async def open(self, slot: str, files: dict[str, str]) -> ProxySandbox:
        if slot not in self.proxies:
            self.proxies[slot] = start_proxy(proxy_name(self.build, slot), LOCAL)
            await self.proxies[slot].create.remote(SandboxSpec(tags={"build": self.build}), self.build, slot)
        for path, text in files.items():
            await self.proxies[slot].write_file.remote(path, text)
        return await ProxySandbox.connect(self.proxies[slot])

    async def request(self, slot: str, component: str):  # type: ignore[no-untyped-def]
        sandbox = await ProxySandbox.connect(self.proxies[slot])
        return await request_from_sandbox(sandbox, build_id=self.build, component=component, slot=slot)

    async def close(self) -> None:
        for slot, handle in self.proxies.items():
            await release(handle, proxy_name(self.build, slot))


async def test_gate_rejects_a_failing_criterion_and_merges_in_dependency_order(  # noqa: F811
    ray_cluster,
    bus: ContextBus,  # noqa: F811
    build_id: str,  # noqa: F811
) -> None:
    slots = Slots(build_id)
    gate = start_gate(GateConfig(build_id=build_id, redis_url=bus.url, bus_prefix=bus.config.prefix))
    try:
        await gate.start.remote(json.dumps(CONTRACT))
        empty_tree, first_head = await gate.tree_hash.remote(), await gate.head.remote()
        await slots.open("web", {"web/index.html": PAGE})
        await slots.open("api", {"api/server.py": API, "api/check.py": "raise SystemExit(3)\n"})
        await slots.proxies["api"].exec.remote("mkdir -p node_modules/x && echo junk > node_modules/x/i.js")

        web = gate.admit.remote(await slots.request("web", "web"))  # submitted first: must wait for api
        await wait_until(lambda: _held(gate, {"web": ["api"]}))

        bad: MergeResult = await asyncio.wait_for(gate.admit.remote(await slots.request("api", "api")), 120)
        assert not bad.accepted and bad.commit is None
        assert [r.id for r in bad.criteria if not r.passed] == ["api-check"], bad.reason
        assert any(f.rule == "criterion.command" for f in bad.findings)
        assert await gate.tree_hash.remote() == empty_tree == bad.tree_hash
        assert await gate.head.remote() == first_head and await gate.merged.remote() == []
        assert await gate.held.remote() == {"web": ["api"]}

        await slots.open("api", {"api/check.py": "print('ok')\n"})
        good = await asyncio.wait_for(gate.admit.remote(await slots.request("api", "api")), 120)
        assert good.accepted, good.reason
        assert good.changed == ["api/check.py", "api/server.py"]  # node_modules never reaches main
        assert good.commit == await gate.head.remote() != first_head
        assert [r.id for r in good.criteria] == ["api-check", "hello"] and all(r.passed for r in good.criteria)

        merged_web = await asyncio.wait_for(web, 120)
        assert merged_web.accepted, merged_web.reason
        assert {r.id: r.passed for r in merged_web.criteria} == {
            "api-check": True,
            "hello": True,
            "heading": True,
            "page-file": True,
        }
        assert merged_web.swarm is not None and merged_web.swarm.passed
        assert await gate.merged.remote() == ["api", "web"]
        assert sorted(await gate.tree.remote()) == ["api/check.py", "api/server.py", "web/index.html"]

        kinds = [(e.message.data["component"], e.message.kind) for _, e in await bus.read_events(build_id, count=100)]
        assert kinds.index(("api", "merge.rejected")) < kinds.index(("api", "merge.accepted"))
        assert kinds.index(("api", "merge.accepted")) < kinds.index(("web", "merge.accepted"))
        assert ("web", "merge.queued") in kinds
        # the rejection's findings reached the api team's errors channel, and the good merge resolved them
        assert not any(e.source == "merge:api" for e in (await bus.unified_context(build_id)).errors.values())

        # a restarted gate reconnects to its main-test sandbox and reads what is merged from the repo
        tree = await gate.tree_hash.remote()
        ray_cluster.kill(gate, no_restart=False)
        await wait_until(lambda: _answers(gate.sandbox_id.remote(), None), 60)  # a fresh incarnation
        await wait_until(lambda: _answers(gate.merged.remote(), ["api", "web"]), 60)
        assert await gate.tree_hash.remote() == tree
    finally:
        await stop_gate(gate)
        await slots.close()


async def _held(gate: Any, expected: dict[str, list[str]]) -> bool:
    return await gate.held.remote() == expected


async def _answers(call: Any, expected: Any) -> bool:
    try:
        return await call == expected
    except Exception:  # the actor is restarting
        return False


async def test_preview_serves_merged_main_and_take_control_is_a_separate_copy(ray_cluster, build_id: str) -> None:  # noqa: F811
    contract = PAGE_ONLY
    slots = Slots(build_id)
    gate = start_gate(GateConfig(build_id=build_id))
    preview = start_preview(PreviewConfig(build_id=build_id, screenshot_every_s=0))
    chromium = Chromium()
    try:
        await gate.start.remote(json.dumps(contract))
        preview_id = await preview.start.remote(json.dumps(contract))
        await slots.open("web", {"web/index.html": PAGE})
        result = await asyncio.wait_for(gate.admit.remote(await slots.request("web", "web")), 120)
        assert result.accepted, result.reason

        url = await asyncio.wait_for(preview.refresh.remote(), 60)  # tree and merged come from the gate
        assert url == await preview.expose.remote()
        assert await page_text(chromium, url) == "Todos"
        shot = await preview.screenshot.remote("/")
        assert shot.startswith(b"\x89PNG")

        own_url = await asyncio.wait_for(preview.take_control.remote(), 60)
        assert own_url != url
        takeover = ray_cluster.get_actor((await preview.takeovers.remote())[0], namespace=NAMESPACE)
        assert await takeover.sandbox_id.remote() not in (preview_id, await gate.sandbox_id.remote())
        assert await page_text(chromium, own_url) == "Todos"
        await takeover.write_file.remote("web/index.html", PAGE.replace("<h1>Todos", "<h1>Mine"))
        async with httpx.AsyncClient(timeout=5) as client:
            assert "<h1>Mine</h1>" in (await client.get(own_url + "/")).text
            assert "<h1>Todos</h1>" in (await client.get(url + "/")).text
        assert await page_text(chromium, url) == "Todos"
        assert await gate.tree.remote() == {"web/index.html": PAGE.encode()}
    finally:
        await chromium.close()
        await stop_preview(preview)
        await stop_gate(gate)
        await slots.close()


# The hostile candidate's check, run by the gate in the main-test sandbox: it plants a git hook, a
# root .gitattributes hiding every file from `git archive`, moves refs/heads/main (with git and by
# hand), leaves a daemon behind, and passes only once api/ok exists.
ATTACK = (
    "mkdir -p .git/hooks .git/refs/heads && printf '#!/bin/sh\\ntouch pwned\\n' > .git/hooks/pre-commit; "
    "chmod +x .git/hooks/pre-commit; echo '* export-ignore' > .gitattributes; "
    "git update-ref refs/heads/main HEAD 2>/dev/null; echo 0000000000000000000000000000000000000000 > .git/refs/heads/main; "
    "setsid sh -c 'exec sleep 3617' < /dev/null > /dev/null 2>&1 & test -f api/ok"
)
HOSTILE: dict[str, Any] = {
    "name": "hostile",
    "summary": "A candidate that attacks main's git.",
    "components": [
        {"name": "api", "kind": "backend", "description": "API", "tasks": [{"id": "api", "title": "API"}]},
    ],
    "success_criteria": [{"id": "attack", "type": "command", "command": ATTACK, "component": "api"}],
}
#: What the candidate's own workspace holds besides its code, and hands the gate in its request.
SLOT_GIT_FILES = {
    ".git/hooks/pre-commit": "#!/bin/sh\ntouch pwned\n",
    ".git/refs/heads/main": "0" * 40 + "\n",
    ".gitattributes": "* export-ignore\n",
}


async def hostile_request(slots: Slots, build: str) -> MergeRequest:
    """request_from_sandbox leaves .git out as junk; a hostile caller of the gate would not."""
    request = await slots.request("api", "api")
    extra = {p: sha256_of(t.encode()) for p, t in SLOT_GIT_FILES.items()}
    return request.model_copy(update={"files": {**request.files, **extra}})


async def main_test_processes(build: str) -> str:
    sandbox = await ProxySandbox.connect(get_proxy(build, MAIN_TEST_SID))
    listing = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done 2>/dev/null; true"
    return (await sandbox.exec(listing, timeout=30)).stdout


async def test_a_hostile_candidate_cannot_alter_main_through_hooks_attributes_or_refs(
    ray_cluster, build_id: str
) -> None:  # noqa: F811
    slots = Slots(build_id)
    gate = start_gate(GateConfig(build_id=build_id))
    try:
        first_sandbox = await gate.start.remote(json.dumps(HOSTILE))
        tree, head = await gate.tree_hash.remote(), await gate.head.remote()
        slot = await slots.open("api", {"api/server.py": API, **SLOT_GIT_FILES})
        await slot.exec("ln -s ../../etc/passwd api/passwd && ln -s server.py api/current", timeout=30)

        bad: MergeResult = await asyncio.wait_for(gate.admit.remote(await hostile_request(slots, build_id)), 120)
        assert not bad.accepted and [r.id for r in bad.criteria] == ["attack"], bad.reason
        assert await gate.tree_hash.remote() == tree == bad.tree_hash and await gate.head.remote() == head
        named = {(f.file, f.rule) for f in bad.findings}
        assert {
            (".git/hooks/pre-commit", "merge.git_metadata"),  # in the request
            (".git/refs/heads/main", "merge.git_metadata"),
            (".gitattributes", "merge.git_control"),
            ("api/passwd", "merge.symlink"),
            (".git/hooks/pre-commit", "merge.sandbox_git_write"),  # written by the check in the main-test sandbox
            (".git/refs/heads/main", "merge.sandbox_git_write"),
            (".gitattributes", "merge.sandbox_git_write"),
        } <= named, named
        # main's repository is on the gate's host: no hook, no moved ref; the main-test sandbox is a new one
        # holding main (nothing), and the daemon the candidate left went with the old one
        assert not (repo_dir(build_id) / "hooks").exists()
        assert await gate.sandbox_id.remote() != first_sandbox
        assert "3617" not in await main_test_processes(build_id)
        main_test = await ProxySandbox.connect(get_proxy(build_id, MAIN_TEST_SID))
        assert [f.path for f in await main_test.list_files()] == []

        await slots.open("api", {"api/ok": "yes\n"})
        good = await asyncio.wait_for(gate.admit.remote(await hostile_request(slots, build_id)), 120)
        assert good.accepted, good.reason
        assert good.changed == ["api/current", "api/ok", "api/server.py"]  # the symlink inside api/ is merged
        assert "refused 4 path(s)" in good.reason
        tree_files = await gate.tree.remote()  # `* export-ignore` would have emptied a `git archive`
        assert tree_files == {"api/ok": b"yes\n", "api/server.py": API.encode()}
        assert (await main_test.exec("readlink api/current", timeout=30)).stdout.strip() == "server.py"
        # the probe does see a daemon left by an accepted check: only a rejection ends the sandbox
        assert "3617" in await main_test_processes(build_id)
    finally:
        await stop_gate(gate)
        await slots.close()
    assert not repo_dir(build_id).exists()  # closing the gate removes main's repository


# The Notes case: the component's own check stores notes in a file next to the code. It passes on a fresh
# tree only (the file starts empty), so it fails if main holds the file or the last merge's checks left it.
# (Not named test*.py: the swarm's unittest run would store a note before the criterion runs.)
NOTES_STORE = '''"""Notes kept in a JSON file next to the code."""

import json
import pathlib

FILE = pathlib.Path(__file__).with_name("notes.json")


def all_notes() -> list[str]:
    return json.loads(FILE.read_text()) if FILE.exists() else []


def add(text: str) -> None:
    FILE.write_text(json.dumps([*all_notes(), text]))
'''
NOTES_CHECK = "from store import add, all_notes\n\nadd('buy milk')\nassert all_notes() == ['buy milk'], all_notes()\n"
NOTES: dict[str, Any] = {
    "name": "notes",
    "summary": "Notes in a file store, and a CLI that uses them.",
    "components": [
        {"name": "backend", "kind": "backend", "description": "store", "tasks": [{"id": "s", "title": "Store"}]},
        {
            "name": "cli",
            "kind": "other",
            "description": "CLI",
            "depends_on": ["backend"],
            "tasks": [{"id": "c", "title": "CLI"}],
        },
    ],
    "success_criteria": [
        {"id": "store", "type": "command", "command": "cd backend && python3 check_store.py", "component": "backend"},
        {"id": "cli", "type": "command", "command": "python3 cli/notes.py", "component": "cli"},
    ],
}


async def test_a_data_file_the_components_own_test_writes_is_neither_merged_nor_seen_by_the_next_merge(
    ray_cluster, build_id: str
) -> None:  # noqa: F811
    slots = Slots(build_id)
    gate = start_gate(GateConfig(build_id=build_id))
    try:
        await gate.start.remote(json.dumps(NOTES))
        files = {
            "backend/store.py": NOTES_STORE,
            "backend/check_store.py": NOTES_CHECK,
            "backend/.gitignore": "*.json\n",
        }
        backend = await slots.open("backend", files)
        ran = await backend.exec("cd backend && python3 check_store.py", timeout=30)  # the team's own check
        assert ran.exit_code == 0 and "backend/notes.json" in [f.path for f in await backend.list_files()]
        request = await slots.request("backend", "backend")
        assert "backend/notes.json" not in request.files

        merged = await asyncio.wait_for(gate.admit.remote(request), 120)
        assert merged.accepted, merged.reason
        assert merged.changed == ["backend/.gitignore", "backend/check_store.py", "backend/store.py"]

        # the next merge checks backend's criterion again, on main: the notes the last check stored are gone
        await slots.open("cli", {**files, "cli/notes.py": "print('notes')\n"})
        cli = await asyncio.wait_for(gate.admit.remote(await slots.request("cli", "cli")), 120)
        assert cli.accepted, cli.reason
        assert {r.id: r.passed for r in cli.criteria} == {"store": True, "cli": True}
        assert "backend/notes.json" not in await gate.tree.remote()
    finally:
        await stop_gate(gate)
        await slots.close()
