"""BuildRun, the phase machine of one build, over fakes and a FakeClock (no Ray, no sandboxes).

The fakes model the world a coordinator restart does not lose: sandboxes (with files, alive or
dead), the merge gate's main tree, the event log. A "crash" is a BaseException raised from an
event emission, which nothing in BuildRun catches, like a SIGKILL between two steps.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from coordinator.budget import Budget, BudgetLedger, Rates
from coordinator.build.ports import (
    CANCEL_REQUESTED,
    PAUSED_BUDGET,
    BuildSettings,
    MergeOutcome,
    PublishedInterface,
    SlotVerification,
    TeamOutcome,
)
from coordinator.build.run import BuildPorts, BuildRun
from coordinator.bus.events import EventPayload, MergeAccepted, MergeRejected, UnknownEvent, parse_event
from coordinator.bus.models import MergeRequest
from coordinator.clock import FakeClock
from coordinator.contracts import IntentContract, parse_contract
from coordinator.control import status_view
from coordinator.intent import CriterionResult, LockedContract, SatisfactionReport
from coordinator.judge import Decision, Evidence, judge
from coordinator.plan import PlanSettings, SlotPlan
from coordinator.store.schema import SessionStatus
from coordinator.store.store import Store
from coordinator.team import TeamReport
from coordinator.team.models import AttemptRecord
from sandbox_agents.backends.base import ExecResult, SandboxSpec, SnapshotRef
from sandbox_agents.errors import SandboxDeadError
from sandbox_agents.llm.base import Usage
from sandbox_agents.llm.metered import LLMCharge

pytestmark = pytest.mark.timeout(30)


def comp(name: str, deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "other",
        "description": name,
        "depends_on": list(deps),
        "tasks": [{"id": f"{name}-t", "title": f"build {name}"}],
        **extra,
    }


CONTRACT: IntentContract = parse_contract(
    {
        "name": "shop",
        "summary": "four components, one tournament",
        "components": [
            comp("db"),
            comp("util"),
            comp("api", ("db",)),
            comp("web", ("api",), tournament={"candidates": 2, "strategies": ["minimal", "polished"]}),
        ],
        "success_criteria": [{"type": "file", "path": f"{c}/main.py", "component": c} for c in ("db", "util", "api")]
        + [{"type": "file", "path": "web/main.py", "component": "web"}],
        "budget": {"usd": 5.0},
    }
)


class Crash(BaseException):
    """Stands for the coordinator process dying: nothing in BuildRun catches it."""


class World:
    """Sandboxes, main, the event log: everything that outlives a coordinator."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.sandboxes: dict[str, dict[str, Any]] = {}  # sandbox id -> {files, alive}
        self.slot_sandbox: dict[str, str] = {}
        self.team_agents: dict[str, list[str]] = {}  # slot id -> the agents its last team run reported
        self.snapshots: dict[str, dict[str, bytes]] = {}
        self.log: list[tuple[str, Any]] = []  # (what, detail) in order
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.main: dict[str, bytes] = {}
        self.merged: list[str] = []
        self.reject: dict[str, int] = {}  # component -> admissions to reject
        self.gate_fails: dict[str, int] = {}  # component -> admissions the gate fails on without a verdict
        self.crash_at: tuple[str, str] | None = None  # (event kind, data value) that "kills" the coordinator
        self.hold: dict[str, asyncio.Event] = {}  # slot -> event the team waits for
        self.kill_during_team: set[str] = set()
        self.kill_before_verify: set[str] = set()
        self.team_usd = 0.0
        self.seeded: dict[str, list[str]] = {}
        self.merge_stream: list[MergeRequest] = []  # the bus's merge channel: it outlives a coordinator
        self.merge_acked: set[int] = set()  # stream positions the consumer group acknowledged
        self.publish_interface: dict[tuple[str, int], PublishedInterface] = {}  # (component, team attempt) -> it
        self.interfaces: dict[str, PublishedInterface] = {}  # interface.{component} decisions on the bus
        self.blocked: dict[str, dict[str, str]] = {}  # slot -> task -> why its team run ends blocked
        self.check_exit = 0  # exit code of the component check each team run ends with


class FakeFleet:
    def __init__(self, world: World) -> None:
        self.w = world

    def _box(self, slot_id: str) -> dict[str, Any]:
        return self.w.sandboxes[self.w.slot_sandbox[slot_id]]

    async def acquire(self, slot: SlotPlan) -> str:
        sid = f"sbx-{next(self.w.ids)}"
        self.w.sandboxes[sid] = {"files": {}, "alive": True}
        self.w.slot_sandbox[slot.slot_id] = sid
        self.w.log.append(("acquire", slot.slot_id))
        return sid

    async def alive(self, slot_id: str) -> bool:
        sid = self.w.slot_sandbox.get(slot_id)
        return sid is not None and self.w.sandboxes.get(sid, {}).get("alive", False)

    async def restore(self, slot: SlotPlan, ref: SnapshotRef) -> str:
        sid = f"sbx-{next(self.w.ids)}"
        self.w.sandboxes[sid] = {"files": dict(self.w.snapshots[ref.id]), "alive": True}
        self.w.slot_sandbox[slot.slot_id] = sid
        self.w.log.append(("restore", slot.slot_id))
        return sid

    async def snapshot(self, slot_id: str) -> SnapshotRef:
        box = self._box(slot_id)
        if not box["alive"]:
            raise SandboxDeadError("dead")
        snap = f"snap-{next(self.w.ids)}"
        self.w.snapshots[snap] = dict(box["files"])
        self.w.log.append(("snapshot", slot_id))
        return SnapshotRef(backend="fake", id=snap, sandbox_id=self.w.slot_sandbox[slot_id], spec=SandboxSpec())

    async def tree(self, slot_id: str) -> dict[str, bytes]:
        return dict(self._box(slot_id)["files"])

    async def seed(self, slot_id: str, files: dict[str, bytes]) -> None:
        self._box(slot_id)["files"].update(files)
        self.w.seeded[slot_id] = sorted(files)
        self.w.log.append(("seed", slot_id))

    async def size_bytes(self, slot_id: str) -> int:
        return sum(len(v) for v in self._box(slot_id)["files"].values())

    async def compute_seconds(self, slot_id: str) -> float:
        return 10.0 * len(self._box(slot_id)["files"])

    async def release(self, slot_id: str) -> None:
        sid = self.w.slot_sandbox.pop(slot_id, None)
        if sid is not None:
            self.w.sandboxes.pop(sid, None)
            self.w.log.append(("release", slot_id))


class FakeTeams:
    def __init__(self, world: World) -> None:
        self.w = world

    async def run(
        self, slot: SlotPlan, *, attempt: int = 0, feedback: str | None = None, reason: str = "merge"
    ) -> TeamOutcome:
        self.w.log.append(("team", slot.slot_id, attempt, feedback, reason))
        if (published := self.w.publish_interface.get((slot.component, attempt))) is not None:
            self.w.interfaces[slot.component] = published  # its agents publish it during this run
        if slot.slot_id in self.w.hold:
            await self.w.hold[slot.slot_id].wait()
        box = self.w.sandboxes[self.w.slot_sandbox[slot.slot_id]]
        if slot.slot_id in self.w.kill_during_team:
            self.w.kill_during_team.discard(slot.slot_id)
            box["alive"] = False
            raise SandboxDeadError("sandbox processes killed")
        body = f"# {slot.component} by {slot.slot_id}\n" + ("x = 1\n" * (50 if "minimal" in slot.slot_id else 5))
        box["files"][f"{slot.component}/main.py"] = body.encode()
        if feedback:
            box["files"][f"{slot.component}/fix.py"] = f"# fixed: {feedback}\n".encode()
        self.w.log.append(("team-done", slot.slot_id))
        usage = [(f"agent:{slot.team_name}:0", "claude-sonnet-4", Usage(input_tokens=1000, output_tokens=100))]
        if self.w.team_usd:
            usage = [(f"agent:{slot.team_name}:0", "priced", Usage(cost_usd=self.w.team_usd))]
        blocked = self.w.blocked.get(slot.slot_id, {})
        done = [t.id for t in slot.tasks if t.id not in blocked]
        check = None if blocked else ExecResult(exit_code=self.w.check_exit)
        ready = not blocked and self.w.check_exit == 0
        attempts = [
            AttemptRecord(task=t, attempt=t, agent=f"{slot.slot_id}:agent-{i}", level=0, ok=True)
            for i, t in enumerate(done)
        ]
        self.w.team_agents[slot.slot_id] = [a.agent for a in attempts]
        report = TeamReport(
            component=slot.team_name, ready=ready, done=done, blocked=blocked, check=check, attempts=attempts
        )
        return TeamOutcome(report=report, usage=usage)

    async def stop(self, slot_id: str) -> None:
        self.w.log.append(("stop", slot_id))


class FakeVerify:
    def __init__(self, world: World) -> None:
        self.w = world

    async def verify(self, slot: SlotPlan, *, check: bool | None = None) -> SlotVerification:
        self.w.log.append(("verify", slot.slot_id, check))
        box = self.w.sandboxes[self.w.slot_sandbox[slot.slot_id]]
        if slot.slot_id in self.w.kill_before_verify:
            self.w.kill_before_verify.discard(slot.slot_id)
            box["alive"] = False
        if not box["alive"]:
            raise SandboxDeadError("dead")
        score = 0.3 if "minimal" in slot.slot_id else 0.9
        return SlotVerification(score=score, passed=True, tests_passed=int(score * 10), tests_total=10)


class FakeJudge:
    async def decide(self, evidence: list[Evidence], component: str) -> Decision:
        decision = await judge(evidence, component=component)
        charge = LLMCharge(role="judge", model="claude-sonnet-4", usage=Usage(input_tokens=500, output_tokens=50))
        return decision.model_copy(update={"usage": [charge]})  # as if its LLM signal had answered


class FakeGate:
    """Merges into ``world.main``; like the real gate, it announces each verdict on the build's log."""

    def __init__(self, world: World, build_id: str) -> None:
        self.w = world
        self.build_id = build_id
        self.starts = 0

    async def start(self, contract: IntentContract) -> str:
        self.starts += 1
        return "main"

    async def admit(self, slot: SlotPlan, sandbox_id: str) -> MergeOutcome:
        self.w.log.append(("admit", slot.slot_id))
        if self.w.gate_fails.get(slot.component, 0) > 0:  # its actor failed: no verdict reached the log
            self.w.gate_fails[slot.component] -= 1
            return MergeOutcome(accepted=False, reason="the merge gate failed while checking it", announced=False)
        if self.w.reject.get(slot.component, 0) > 0:
            self.w.reject[slot.component] -= 1
            findings = ["api/main.py: boom"]
            event = MergeRejected(
                component=slot.component, slot=slot.slot_id, reason="tests fail in main", findings=findings
            )
            self.w.events.append((f"{len(self.w.events) + 1}-0", event.kind, event.for_build(self.build_id).data))
            return MergeOutcome(accepted=False, reason="tests fail in main", findings=findings)
        files = self.w.sandboxes[sandbox_id]["files"]
        changed = {p: b for p, b in files.items() if p.startswith(f"{slot.component}/")}
        self.w.main.update(changed)
        self.w.merged.append(slot.component)
        commit = f"c{len(self.w.merged)}"
        event = MergeAccepted(component=slot.component, slot=slot.slot_id, commit=commit, changed=sorted(changed))
        self.w.events.append((f"{len(self.w.events) + 1}-0", event.kind, event.for_build(self.build_id).data))
        return MergeOutcome(accepted=True, commit=commit)

    async def merged(self) -> list[str]:
        return list(self.w.merged)

    async def tree(self) -> dict[str, bytes]:
        return dict(self.w.main)

    async def tree_hash(self) -> str:
        return hashlib.sha256(repr(sorted(self.w.main.items())).encode()).hexdigest()


class FakeMerges:
    """The ``merge`` channel with one consumer group: unacknowledged entries first, then new ones, in order."""

    def __init__(self, world: World) -> None:
        self.w = world
        self.new = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def send(self, request: MergeRequest) -> None:
        self.w.merge_stream.append(request)
        self.new.set()

    async def start(self, handler: Any) -> None:
        async def consume() -> None:
            while True:
                todo = [i for i in range(len(self.w.merge_stream)) if i not in self.w.merge_acked]
                if not todo:
                    self.new.clear()
                    await self.new.wait()
                    continue
                await handler(self.w.merge_stream[todo[0]])  # raising (a crash): the entry stays unacknowledged
                self.w.merge_acked.add(todo[0])

        self.task = asyncio.get_running_loop().create_task(consume())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            except Crash:
                pass  # the crash already reached the waiting pipeline


class FakeInterfaces:
    def __init__(self, world: World) -> None:
        self.w = world

    async def published(self) -> list[PublishedInterface]:
        return list(self.w.interfaces.values())


class FakePreview:
    def __init__(self, world: World) -> None:
        self.w = world

    async def refresh(self) -> str | None:
        self.w.log.append(("preview", len(self.w.merged)))
        return "http://preview.test/"


class FakeSatisfaction:
    def __init__(self, world: World) -> None:
        self.w = world

    async def check_main(self, locked: LockedContract) -> SatisfactionReport:
        results = [
            CriterionResult(
                id=c.id or "", type=c.type, component=c.component, passed=c.path in self.w.main, evidence=""
            )
            for c in locked.contract.success_criteria
        ]
        return SatisfactionReport(contract_sha256=locked.sha256, results=results)

    async def check_slot(self, locked: LockedContract, slot: SlotPlan) -> tuple[int, int]:
        return (1 if "polished" in slot.slot_id else 0), 1


class FakeEvents:
    def __init__(self, world: World) -> None:
        self.w = world

    async def emit(self, event: EventPayload) -> str | None:
        kind, data = event.kind, event.data
        entry = f"{len(self.w.events) + 1}-0"
        self.w.events.append((entry, kind, data))
        if self.w.crash_at is not None and self.w.crash_at == (kind, data.get("phase")):
            self.w.crash_at = None
            raise Crash(f"killed at {kind} {data.get('phase')}")
        return entry


class Notes:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def notify(self, status: str, summary: str, data: dict[str, Any]) -> None:
        self.sent.append(status)


class Harness:
    def __init__(self, tmp_path: Path, *, budget_usd: float | None = 5.0, contract: IntentContract = CONTRACT) -> None:
        self.clock = FakeClock()
        self.store = Store(tmp_path / "store.db", clock=self.clock).start()
        budget = {"max_usd": budget_usd} if budget_usd else None
        self.session = self.store.create_session("alice", "a shop", budget=budget)
        self.store.update_session(self.session.id, contract=contract.model_dump(mode="json"))
        self.world = World()
        self.gate = FakeGate(self.world, self.session.id)
        self.notes = Notes()

    def run_obj(self, settings: BuildSettings | None = None) -> BuildRun:
        session = self.store.get_session(self.session.id)
        events = FakeEvents(self.world)
        ledger = BudgetLedger(
            self.store, session.id, Budget(**session.budget) if session.budget else None, events=events
        )
        ports = BuildPorts(
            fleet=FakeFleet(self.world),
            teams=FakeTeams(self.world),
            verify=FakeVerify(self.world),
            judge=FakeJudge(),
            gate=self.gate,
            merges=FakeMerges(self.world),
            interfaces=FakeInterfaces(self.world),
            preview=FakePreview(self.world),
            satisfaction=FakeSatisfaction(self.world),
            events=events,
            store=self.store,
            ledger=ledger,
            clock=self.clock,
            notifier=self.notes,
        )
        return BuildRun(session.id, ports, settings)

    async def run(self, settings: BuildSettings | None = None) -> Any:
        return await asyncio.wait_for(self.run_obj(settings).run(), 10)

    def kinds(self, kind: str | None = None) -> list[Any]:
        if kind is None:
            return [k for _, k, _ in self.world.events]
        return [d for _, k, d in self.world.events if k == kind]

    def main_hash(self) -> str:
        return hashlib.sha256(repr(sorted(self.world.main.items())).encode()).hexdigest()


def index(log: list[tuple[Any, ...]], *entry: Any) -> int:
    return next(i for i, e in enumerate(log) if e[: len(entry)] == entry)


async def test_phases_in_order_and_the_build_completes(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    session = await h.run()
    assert session.status is SessionStatus.COMPLETED, session.error
    assert session.phase == "done" and session.contract_hash
    phases = [d["phase"] for d in h.kinds("build.phase")]
    assert phases == ["intent", "fleet", "build", "verify", "judge", "merge", "preview", "satisfy", "done"]
    merged = h.world.merged  # dependency order: db before api before web (util, independent, anywhere)
    assert sorted(merged) == ["api", "db", "util", "web"]
    assert merged.index("db") < merged.index("api") < merged.index("web")
    assert set(h.world.main) == {"db/main.py", "util/main.py", "api/main.py", "web/main.py"}
    assert h.kinds()[-1] == "build.done" and h.notes.sent == ["completed"]
    assert not h.world.sandboxes  # every sandbox released at the end
    assert len(h.kinds("preview.refreshed")) == 4
    ids = [int(e.split("-")[0]) for e, _, _ in h.world.events]
    assert ids == list(range(1, len(ids) + 1))
    assert h.store.get_offsets(session.id)[("events", "coordinator")] == h.world.events[-1][0]
    costs = h.store.cost_totals(session.id)
    assert costs.llm_tokens == 5 * 1100 + 550 and costs.compute_seconds > 0  # 5 team runs, the judge, compute


async def test_a_component_no_candidate_could_build_fails_the_build_naming_each_blocked_task_and_why(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    miss = "first failure: CassetteMissError: no recorded turn for role='agent:util:0', task='util-1', turn=0"
    task_id = CONTRACT.component("util").tasks[0].id
    h.world.blocked["util"] = {task_id: miss + "\nlast failure: re-plan failed"}
    session = await h.run()
    assert session.status is SessionStatus.FAILED
    assert "component util: no candidate could be built" in (session.error or "")
    assert f"util: task {task_id} blocked: {miss}" in (session.error or "")  # the root cause, in status


async def test_sequential_dependents_start_after_their_dependencies_merged_seeded_with_main(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.run(BuildSettings(parallel=False))
    log = h.world.log
    assert index(log, "admit", "db") < index(log, "team", "api")
    assert index(log, "admit", "api") < index(log, "team", "web~minimal")
    assert index(log, "team", "util") < index(log, "admit", "db")  # independent ones build side by side
    assert "db/main.py" in h.world.seeded["api"]  # main as it was: db merged (util too, if it was first)
    assert h.world.seeded["web~polished"] == ["api/main.py", "db/main.py", "util/main.py"]
    assert "db" not in h.world.seeded and "util" not in h.world.seeded


async def test_parallel_teams_start_at_once_are_fed_their_providers_and_merge_in_order(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.world.hold["db"] = asyncio.Event()  # the provider's team is slow
    run = asyncio.create_task(h.run())
    started: set[str] = set()
    for _ in range(500):
        started = {e[1] for e in h.world.log if e[0] == "team"}
        if {"db", "util", "api", "web~minimal", "web~polished"} <= started:
            break
        await asyncio.sleep(0.01)
    assert {"db", "util", "api", "web~minimal", "web~polished"} <= started  # all at once, db still building
    assert "db" not in {d["component"] for d in h.kinds("merge.accepted")}
    assert "db" not in {d["provider"] for d in h.kinds("component.fed")}
    h.world.hold["db"].set()
    session = await run
    assert session.status is SessionStatus.COMPLETED, session.error
    fed: dict[tuple[str, str], list[str]] = {}
    for d in h.kinds("component.fed"):
        fed.setdefault((d["provider"], d["component"]), d["slots"])  # each pair's first feed
    assert set(fed) == {("db", "api"), ("api", "web")}
    assert fed[("db", "api")] == ["api"] and sorted(fed[("api", "web")]) == ["web~minimal", "web~polished"]
    # (the fake api team does not wait for db's feed: api's merged tree has db's code, so web is fed again)
    assert h.kinds("component.fed")[-1]["provider"] == "api" and "db/main.py" in h.world.seeded["web~polished"]
    log = h.world.log
    assert index(log, "admit", "db") < index(log, "admit", "api") < index(log, "admit", "web~polished")
    assert "db/main.py" in h.world.seeded["api"] and "api/main.py" in h.world.seeded["web~minimal"]
    assert set(h.world.main) == {"db/main.py", "util/main.py", "api/main.py", "web/main.py"}


async def test_a_providers_fix_after_a_rejected_merge_is_fed_again_before_its_dependents_merge(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.world.reject["db"] = 1  # db's first admission is rejected; its team adds db/fix.py
    session = await h.run()
    assert session.status is SessionStatus.COMPLETED, session.error
    from_db = [d for d in h.kinds("component.fed") if d["provider"] == "db"]
    assert len(from_db) == 2 and from_db[1]["files"] == from_db[0]["files"] + 1
    assert "db/fix.py" in h.world.seeded["api"]  # api merges the fixed db, not a stale copy


async def test_each_merge_is_announced_once_by_the_gate_with_its_commit_and_files(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert (await h.run()).status is SessionStatus.COMPLETED
    accepted = h.kinds("merge.accepted")
    assert sorted(d["component"] for d in accepted) == ["api", "db", "util", "web"]
    assert all(d["commit"] and d["changed"] == [f"{d['component']}/main.py"] for d in accepted)


async def test_status_after_the_build_lists_every_merge_with_its_commit_and_mains_last_commit(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.world.reject["api"] = 1
    session = await h.run()
    assert session.status is SessionStatus.COMPLETED, session.error
    status = status_view(h.store, session)
    merged = [(m.component, m.commit) for m in status.merges if m.status == "merged"]
    assert merged == [(c, f"c{i}") for i, c in enumerate(h.world.merged, 1)]  # in the order main got them
    api = [(m.status, m.commit, m.message) for m in status.merges if m.component == "api"]
    assert api == [("rejected", None, "tests fail in main"), ("merged", dict(merged)["api"], "")]
    assert status.main_commit == f"c{len(h.world.merged)}"


async def test_status_after_the_build_names_each_slots_last_sandbox_its_agents_and_swarm_score(tmp_path: Path) -> None:
    """The fleet table of ``kriptik status`` after the build: every slot was released (it has no
    sandbox any more), yet its row still says which sandbox it had, who worked in it and its score."""
    h = Harness(tmp_path)
    session = await h.run()
    assert session.status is SessionStatus.COMPLETED, session.error
    assert all(s.sandbox_id is None for s in h.store.list_slots(session.id))
    rows = {c.slot: c for c in status_view(h.store, session).components}
    acquired = {d["slot"]: d["sandbox_id"] for d in h.kinds("slot.acquired")}  # the last one of each slot
    assert rows and {slot: c.last_sandbox_id for slot, c in rows.items()} == acquired
    assert all(c.sandbox_id is None for c in rows.values())
    for slot, c in rows.items():
        assert c.agents and c.agents == sorted(h.world.team_agents[slot]), slot
        assert c.swarm_score == (0.3 if "minimal" in slot else 0.9), slot


async def test_a_rejected_merge_goes_back_to_the_team_then_merges(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.world.reject["api"] = 1
    session = await h.run()
    assert session.status is SessionStatus.COMPLETED, session.error
    rejected = h.kinds("merge.rejected")
    assert [r["component"] for r in rejected] == ["api"] and rejected[0]["findings"] == ["api/main.py: boom"]
    fix = [e for e in h.world.log if e[:2] == ("team", "api") and e[2] == 1]
    assert fix and "tests fail in main" in fix[0][3]
    assert "api/fix.py" in h.world.main
    statuses = [m.status for m in h.store.pending_merges(session.id)]
    assert statuses == []  # every admission resolved


async def test_a_rejection_is_on_the_log_once_from_the_gate_or_from_the_run_when_the_gate_failed(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    h.world.reject["api"] = 1  # the gate's verdict: it tells the log itself
    h.world.gate_fails["db"] = 1  # no verdict: the run tells the rejection
    session = await h.run()
    assert session.status is SessionStatus.COMPLETED, session.error
    rejected = [(r["component"], r["reason"]) for r in h.kinds("merge.rejected")]
    assert sorted(rejected) == [("api", "tests fail in main"), ("db", "the merge gate failed while checking it")]


async def test_tournament_judged_losers_snapshotted_then_terminated(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    session = await h.run()
    [decision] = h.kinds("tournament.decision")
    assert decision["component"] == "web" and decision["winner"] == "web~polished"
    log = h.world.log
    assert index(log, "snapshot", "web~minimal") < index(log, "release", "web~minimal")
    assert index(log, "release", "web~minimal") < index(log, "admit", "web~polished")
    assert ("admit", "web~minimal") not in log
    slots = {s.slot: s.status for s in h.store.list_slots(session.id)}
    assert slots["web~minimal"] == "lost" and slots["web~polished"] == "merged"
    assert any(c.slot == "web~minimal" and c.phase == "tournament" for c in h.store.list_checkpoints(session.id))
    assert h.world.main["web/main.py"].startswith(b"# web by web~polished")


async def test_checkpoints_every_interval_on_the_injected_clock(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.world.hold["db"] = asyncio.Event()
    run = h.run_obj(BuildSettings(checkpoint_interval_s=60, parallel=False))
    task = asyncio.create_task(run.run())
    await h.clock.wait_for_sleepers(1)
    before = len(h.store.list_checkpoints(h.session.id))
    h.clock.advance(60)
    await h.clock.wait_for_sleepers(1)
    for _ in range(50):
        await asyncio.sleep(0)
    interval = [d for d in h.kinds("checkpoint.taken") if d["reason"] == "interval"]
    assert len(interval) == 1 and interval[0]["slots"] == 5  # every live slot
    assert len(h.store.list_checkpoints(h.session.id)) == before + 5
    h.clock.advance(59)  # not yet
    for _ in range(20):
        await asyncio.sleep(0)
    assert len([d for d in h.kinds("checkpoint.taken") if d["reason"] == "interval"]) == 1
    h.world.hold["db"].set()
    session = await asyncio.wait_for(task, 10)
    assert session.status is SessionStatus.COMPLETED


async def test_cancel_is_honoured_at_the_next_step_and_releases_everything(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.world.hold["db"] = asyncio.Event()
    run = h.run_obj()
    task = asyncio.create_task(run.run())
    for _ in range(200):
        await asyncio.sleep(0)
        if ("team", "db", 0, None, "merge") in h.world.log:
            break
    run.request_cancel()
    h.world.hold["db"].set()
    session = await asyncio.wait_for(task, 10)
    assert session.status is SessionStatus.CANCELLED and session.finished_at
    assert h.kinds()[-1] == "build.cancelled"
    assert not h.world.sandboxes and not h.world.merged


async def test_a_cancel_stored_while_the_coordinator_was_down_is_honoured(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.world.crash_at = ("build.phase", "build")
    with pytest.raises(Crash):
        await h.run()
    assert h.world.sandboxes  # the fleet outlived the coordinator
    h.store.update_session(h.session.id, error=CANCEL_REQUESTED)  # what Control writes
    session = await h.run()
    assert session.status is SessionStatus.CANCELLED
    assert not h.world.sandboxes


async def test_budget_exhausted_pauses_and_a_raise_resumes_from_checkpoints(tmp_path: Path) -> None:
    h = Harness(tmp_path, budget_usd=1.0)
    h.world.team_usd = 0.4  # three team runs exhaust $1
    session = await h.run()
    assert session.status is SessionStatus.PAUSED and session.error == PAUSED_BUDGET
    assert not h.world.sandboxes  # terminated while paused
    assert "budget.exhausted" in h.kinds() and h.kinds()[-1] == "build.paused"
    assert h.notes.sent == ["paused"]
    paused_slots = [s for s in h.store.list_slots(h.session.id) if s.status in ("ready", "building", "built")]
    assert paused_slots and all(h.store.latest_checkpoint(h.session.id, s.slot) for s in paused_slots)

    assert (await h.run()).status is SessionStatus.PAUSED  # no budget yet: stays paused

    h.world.team_usd = 0.0
    run = h.run_obj()
    await run.ports.ledger.raise_budget(100.0)
    session = await asyncio.wait_for(run.run(), 10)
    assert session.status is SessionStatus.COMPLETED, session.error
    assert "build.resumed" in h.kinds() and h.kinds("slot.restored")
    assert set(h.world.main) == {"db/main.py", "util/main.py", "api/main.py", "web/main.py"}


async def test_a_dead_sandbox_is_respawned_from_its_checkpoint(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.world.kill_during_team.add("util")
    session = await h.run()
    assert session.status is SessionStatus.COMPLETED, session.error
    [respawn] = h.kinds("slot.respawned")
    assert respawn["slot"] == "util"
    assert ("restore", "util") in h.world.log
    assert len([e for e in h.world.log if e[:2] == ("team", "util")]) == 2


def verifications_since(log: list[tuple[Any, ...]], slot_id: str) -> list[tuple[Any, ...]]:
    """The slot's verify calls, each with what happened to its sandbox since its team's last run ended."""
    out, since = [], []
    for entry in log:
        if entry[:2] in (("team-done", slot_id),):
            since = []
        elif entry[1:2] == (slot_id,) and entry[0] in ("seed", "acquire", "restore"):
            since.append(entry[0])
        elif entry[:2] == ("verify", slot_id):
            out.append((entry[2], tuple(since)))
    return out


async def test_verification_takes_the_teams_check_verdict_unless_the_sandbox_changed_since(tmp_path: Path) -> None:
    """The component check runs once per change: the team ran it last, on the same candidate."""
    h = Harness(tmp_path)
    session = await h.run()
    assert session.status is SessionStatus.COMPLETED, session.error
    calls = {slot: verifications_since(h.world.log, slot) for slot in ("db", "util", "api", "web~minimal")}
    assert all(calls.values()), calls
    for slot, verifications in calls.items():
        for check, since in verifications:
            assert check is (None if since else True), (slot, check, since)


async def test_a_candidate_respawned_after_its_team_ran_is_checked_again(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.world.kill_before_verify.add("util")
    session = await h.run()
    assert session.status is SessionStatus.COMPLETED, session.error
    assert [check for check, _ in verifications_since(h.world.log, "util")] == [True, None]
    assert ("restore", "util") in h.world.log


async def test_a_modal_slot_is_charged_for_the_cores_and_memory_its_sandbox_reserved(tmp_path: Path) -> None:
    """Modal meters wall time and bills what a sandbox reserved; a local meter is CPU time used."""
    h = Harness(tmp_path)
    session = await h.run(BuildSettings(component_backends={"util": "modal"}))
    assert session.status is SessionStatus.COMPLETED, session.error
    rows = sqlite3.connect(tmp_path / "store.db").execute(
        "SELECT source, compute_seconds, estimated_cost FROM build_costs WHERE source LIKE 'compute:%'"
    )
    charges = {source.split(";")[0]: (seconds, cost) for source, seconds, cost in rows}
    rates, size = Rates(), PlanSettings()  # the slot's sandbox: the plan's default size
    seconds, cost = charges["compute:modal:util"]
    reserved = size.cpu * rates.modal_cpu_second_usd + size.memory_mb / 1024 * rates.modal_gib_second_usd
    assert cost == pytest.approx(seconds * reserved)
    seconds, cost = charges["compute:local:db"]
    assert cost == pytest.approx(seconds * rates.local_cpu_second_usd)


@pytest.fixture(scope="module")
def undisturbed_hash(tmp_path_factory: pytest.TempPathFactory) -> str:
    h = Harness(tmp_path_factory.mktemp("undisturbed"))
    session = asyncio.run(h.run())
    assert session.status is SessionStatus.COMPLETED
    return h.main_hash()


@pytest.mark.parametrize(
    "phase", ["intent", "fleet", "build", "verify", "judge", "merge", "preview", "satisfy", "done"]
)
async def test_restart_from_each_persisted_phase_gives_the_same_end_state(
    tmp_path: Path, phase: str, undisturbed_hash: str
) -> None:
    h = Harness(tmp_path)
    h.world.crash_at = ("build.phase", phase)
    with pytest.raises(Crash):
        await h.run()
    assert h.store.get_session(h.session.id).phase == phase
    session = await h.run()
    assert session.status is SessionStatus.COMPLETED, session.error
    assert h.main_hash() == undisturbed_hash
    phases = [d["phase"] for d in h.kinds("build.phase")]
    assert phases == ["intent", "fleet", "build", "verify", "judge", "merge", "preview", "satisfy", "done"]
    assert "coordinator.resumed" in h.kinds()  # the restart announced itself, without re-entering a phase
    assert h.world.merged.count("api") == 1 and h.world.merged.count("web") == 1
    assert not h.world.sandboxes
    assert h.gate.starts >= 1


async def test_a_resumed_dependent_is_fed_from_main_by_the_providers_that_merged_before(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.world.crash_at = ("merge.accepted", None)
    original = FakeEvents.emit

    async def crash_once_db_merged(self: FakeEvents, event: EventPayload) -> str | None:
        if (
            event.kind == "component.phase"
            and event.data.get("component") == "db"
            and event.data.get("phase") == "done"
        ):
            if not getattr(h, "crashed", False):
                h.crashed = True  # type: ignore[attr-defined]
                await original(self, event)
                raise Crash("killed after db merged")
        return await original(self, event)

    h.world.crash_at = None
    h.world.hold["api"] = asyncio.Event()  # api is still building when the coordinator dies
    FakeEvents.emit = crash_once_db_merged  # type: ignore[method-assign]
    try:
        with pytest.raises(Crash):
            await h.run()
        fed_before = len(h.kinds("component.fed"))
        h.world.hold["api"].set()
        session = await h.run()
    finally:
        FakeEvents.emit = original  # type: ignore[method-assign]
    assert session.status is SessionStatus.COMPLETED, session.error
    again = [d for d in h.kinds("component.fed")[fed_before:] if d["provider"] == "db"]
    assert again and again[0]["component"] == "api" and again[0]["slots"] == ["api"]  # fed from main
    assert "db/main.py" in h.world.seeded["api"]
    assert h.world.merged.count("db") == 1


async def test_a_merge_in_flight_when_the_coordinator_died_is_rechecked_not_repeated(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.world.crash_at = ("merge.accepted", None)  # the gate merged db; the coordinator died before recording it
    original = FakeEvents.emit

    async def crash_on_first_db_merge(self: FakeEvents, event: EventPayload) -> str | None:
        kind, data = event.kind, event.data
        if kind == "component.phase" and data.get("component") == "db" and data.get("phase") == "preview":
            if not getattr(h, "crashed", False):
                h.crashed = True  # type: ignore[attr-defined]
                # roll the slot back to "merging" as if the crash came right after admit
                run_slots = h.store.list_slots(h.session.id)
                db = next(s for s in run_slots if s.slot == "db")
                h.store.upsert_slot(db.model_copy(update={"status": "merging"}))
                h.store.add_pending_merge(h.session.id, "db", {"slot": "db"})
                raise Crash("killed after admit")
        return await original(self, event)

    h.world.crash_at = None
    FakeEvents.emit = crash_on_first_db_merge  # type: ignore[method-assign]
    try:
        with pytest.raises(Crash):
            await h.run()
        session = await h.run()
    finally:
        FakeEvents.emit = original  # type: ignore[method-assign]
    assert session.status is SessionStatus.COMPLETED, session.error
    assert h.world.merged.count("db") == 1
    assert [d["component"] for d in h.kinds("merge.accepted")].count("db") == 1  # the gate's, from before the crash
    db = [m for m in status_view(h.store, session).merges if m.component == "db"]
    assert [(m.status, m.message) for m in db][-1] == ("merged", "merged before the coordinator restarted")


async def test_every_event_of_a_build_is_a_known_kind_carrying_the_build_id(tmp_path: Path) -> None:
    h = Harness(tmp_path, budget_usd=1.0)
    h.world.team_usd = 0.17  # five team runs pass the warning line, so the ledger's events are in the log too
    assert (await h.run()).status is SessionStatus.COMPLETED
    kinds = h.kinds()
    assert {"tournament.decision", "merge.accepted", "budget.warning", "intent.satisfaction"} <= set(kinds)
    for _, kind, data in h.world.events:
        payload = parse_event(kind, data)
        assert not isinstance(payload, UnknownEvent), (kind, data)
        assert payload.data == data and data["build_id"] == h.session.id


async def test_a_sandbox_whose_release_failed_is_logged_and_the_others_are_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(tmp_path)
    h.world.crash_at = ("build.phase", "build")
    with pytest.raises(Crash):
        await h.run()
    db_sandbox = h.world.slot_sandbox["db"]
    release = FakeFleet.release

    async def refuse_db(self: FakeFleet, slot_id: str) -> None:
        if slot_id == "db":
            raise ConnectionError("proxy gone")
        await release(self, slot_id)

    monkeypatch.setattr(FakeFleet, "release", refuse_db)
    h.store.update_session(h.session.id, error=CANCEL_REQUESTED)
    with caplog.at_level(logging.WARNING, logger="coordinator.build.run"):
        session = await h.run()
    assert session.status is SessionStatus.CANCELLED
    assert list(h.world.sandboxes) == [db_sandbox]  # every other sandbox is released
    assert f"releasing sandbox {db_sandbox} of slot db failed" in caplog.text


async def test_a_merge_request_left_unacknowledged_by_a_dead_coordinator_is_merged_once_after_restart(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    original = FakeGate.admit

    async def die_in_the_first_api_admission(self: FakeGate, slot: SlotPlan, sandbox_id: str) -> MergeOutcome:
        if slot.component == "api" and not getattr(h, "crashed", False):
            h.crashed = True  # type: ignore[attr-defined]
            raise Crash("coordinator killed while the gate admitted api")
        return await original(self, slot, sandbox_id)

    FakeGate.admit = die_in_the_first_api_admission  # type: ignore[method-assign]
    try:
        with pytest.raises(Crash):
            await h.run()
        unacked = [r.component for i, r in enumerate(h.world.merge_stream) if i not in h.world.merge_acked]
        assert unacked == ["api"]  # the request is still on the channel, handed out but not acknowledged
        session = await h.run()
    finally:
        FakeGate.admit = original  # type: ignore[method-assign]
    assert session.status is SessionStatus.COMPLETED, session.error
    assert h.world.merged.count("api") == 1
    assert len(h.world.merge_acked) == len(h.world.merge_stream)  # every request and its re-sent copy handled
    api_requests = {r.request_id for r in h.world.merge_stream if r.component == "api"}
    assert len(api_requests) == 1  # the restarted run re-sent the same request, not a new one
    assert [d["component"] for d in h.kinds("merge.accepted")].count("api") == 1
    assert h.store.pending_merges(session.id) == []


async def test_every_merge_request_delivered_twice_still_merges_each_component_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    original = FakeMerges.send

    async def at_least_once(self: FakeMerges, request: MergeRequest) -> None:
        await original(self, request)
        await original(self, request)  # the bus may deliver a copy (a batch re-sent after a broken connection)

    FakeMerges.send = at_least_once  # type: ignore[method-assign]
    try:
        session = await h.run()
    finally:
        FakeMerges.send = original  # type: ignore[method-assign]
    assert session.status is SessionStatus.COMPLETED, session.error
    assert sorted(h.world.merged) == ["api", "db", "util", "web"]
    assert len([e for e in h.world.log if e[0] == "admit"]) == 4


ITEMS = {"http": [{"method": "GET", "path": "/api/items", "response": [{"id": 1}]}]}
ITEMS_V2 = {"http": [{"method": "GET", "path": "/api/v2/items", "response": {"items": [{"id": 1}]}}]}


def interface_contract() -> IntentContract:
    """CONTRACT with api providing ITEMS, which web uses."""
    data = CONTRACT.model_dump(mode="json")
    for c in data["components"]:
        if c["name"] == "api":
            c["provides"] = ITEMS
        if c["name"] == "web":
            c["uses"] = ["api"]
    return parse_contract(data)


def interface_change(by: str, by_component: str | None, text: str = json.dumps(ITEMS_V2)) -> PublishedInterface:
    return PublishedInterface(component="api", text=text, by=by, by_component=by_component)


async def test_a_provider_changing_its_interface_in_a_fix_sends_its_built_dependent_back_before_it_merges(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, contract=interface_contract())
    h.world.reject["api"] = 1  # api's fix run changes the interface
    h.world.publish_interface[("api", 1)] = interface_change("build:b:agent:api:0", "api")
    session = await h.run()
    assert session.status is SessionStatus.COMPLETED, session.error
    [changed] = h.kinds("interface.changed")
    assert changed["component"] == "api" and changed["version"] == 1 and changed["dependents"] == ["web"]
    assert changed["interface"]["http"][0]["path"] == "/api/v2/items"
    winner = h.kinds("tournament.decision")[0]["winner"]
    fixes = [e for e in h.world.log if e[0] == "team" and e[4] == "interface"]
    assert [(e[1], e[2]) for e in fixes] == [(winner, 1)]
    assert "/api/v2/items" in fixes[0][3]
    assert index(h.world.log, "team", winner, 1) < index(h.world.log, "admit", winner)
    assert not [e for e in h.world.log if e[0] == "team" and e[4] == "interface" and e[1] != winner]


async def test_an_interface_unchanged_or_published_outside_the_providers_team_sends_no_one_back(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, contract=interface_contract())
    h.world.interfaces["api"] = interface_change("build:b:agent:web~polished:0", "web")
    session = await h.run()
    assert session.status is SessionStatus.COMPLETED, session.error
    assert h.kinds("interface.changed") == []
    assert any("outside api's team" in e["error"] for e in h.kinds("build.error"))
    assert not [e for e in h.world.log if e[0] == "team" and e[4] == "interface"]

    h2 = Harness(tmp_path / "2", contract=interface_contract())
    h2.world.interfaces["api"] = interface_change("build:b:agent:api:0", "api", json.dumps(ITEMS))  # the same
    h2.world.publish_interface[("db", 0)] = interface_change("build:b:agent:api:1", "api", "{not json")
    assert (await h2.run()).status is SessionStatus.COMPLETED
    assert h2.kinds("interface.changed") == []
    assert not [e for e in h2.world.log if e[0] == "team" and e[4] == "interface"]
