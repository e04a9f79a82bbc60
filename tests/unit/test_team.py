"""The per-sandbox team with fakes: dependency order, every escalation level, file locks, ready-to-merge."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from coordinator.bus.events import EventPayload, TaskEscalated, UnknownEvent, parse_event
from coordinator.bus.models import ContextValue, FileState, KnownError, UnifiedContext
from coordinator.team import (
    ComponentWork,
    FileLockService,
    LLMPlanner,
    TeamRunner,
    TeamTask,
    agent_role,
    assign,
    prompt_context,
)
from sandbox_agents.agent_models import AgentOutcome, AgentTask
from sandbox_agents.agent_prompt import build_system_prompt
from sandbox_agents.backends.base import ExecResult, SandboxSpec
from sandbox_agents.backends.fake import FakeBackend
from sandbox_agents.errors import InvalidInputError
from sandbox_agents.llm.base import ToolCall, Usage
from sandbox_agents.llm.cassette import Cassette
from sandbox_agents.llm.replay import ReplayProvider
from sandbox_agents.tools import AgentTools


class World:
    """What the fakes share: which tasks are fixed, what happened, in order."""

    def __init__(self, broken: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.broken = set(broken)
        """Attempt ids whose run leaves the task's check failing."""
        self.fixed: set[str] = set()
        self.log: list[tuple[str, str, str]] = []
        self.running = 0
        self.max_running = 0


class FakeAgent:
    def __init__(self, name: str, world: World) -> None:
        self.name = name
        self.world = world
        self.tasks: list[AgentTask] = []

    async def run_task(self, task: AgentTask) -> AgentOutcome:
        self.tasks.append(task)
        world = self.world
        world.running += 1
        world.max_running = max(world.max_running, world.running)
        world.log.append(("start", self.name, task.id))
        await asyncio.sleep(0)
        world.running -= 1
        base = task.id.split("#")[0]
        if task.id in world.broken:
            world.fixed.discard(base)
        else:
            world.fixed.add(base)
        world.log.append(("end", self.name, task.id))
        usage = Usage(input_tokens=100, output_tokens=10)
        return AgentOutcome(
            task_id=task.id,
            status="done",
            changed_files={f"{base}.py": "0" * 64},
            usage=usage,
            role=self.name,
            model="m1",
        )


class FakeChecks:
    """``check T`` passes when task T is fixed; the component check passes unless told otherwise."""

    def __init__(self, world: World, component_ok: bool = True) -> None:
        self.world = world
        self.component_ok = component_ok
        self.commands: list[str] = []

    async def run_check(self, command: list[str] | str, timeout_s: float) -> ExecResult:
        text = command if isinstance(command, str) else " ".join(command)
        self.commands.append(text)
        if text == "component-check":
            return ExecResult(exit_code=0 if self.component_ok else 1, stderr="" if self.component_ok else "FAILED")
        task = text.split()[1]
        if task in self.world.fixed:
            return ExecResult(exit_code=0, stdout="ok")
        return ExecResult(exit_code=1, stderr=f"AssertionError: {task} is wrong")


class FakePlanner:
    def __init__(self, answer: list[TeamTask] | Exception) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str]] = []

    async def replan(self, task: TeamTask, failure: str) -> list[TeamTask]:
        self.calls.append((task.id, failure))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class FakeEvents:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[tuple[str, str, bool]] = []

    async def emit(self, event: EventPayload) -> None:
        self.events.append((event.kind, event.data))

    async def report_error(self, key: str, message: str, *, resolved: bool = False) -> None:
        self.errors.append((key, message, resolved))

    def kinds(self, task: str | None = None) -> list[str]:
        return [k for k, d in self.events if task is None or d.get("task") == task]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for k, d in self.events if k == kind]


def task(tid: str, *deps: str, **kw: Any) -> TeamTask:
    return TeamTask(id=tid, title=f"do {tid}", check_command=f"check {tid}", depends_on=deps, **kw)


def team(
    tasks: list[TeamTask],
    world: World,
    *,
    agents: int = 3,
    planner: FakePlanner | None = None,
    component_ok: bool = True,
) -> tuple[TeamRunner, list[FakeAgent], FakeEvents, FakeChecks]:
    work = ComponentWork(component="calc", tasks=tuple(tasks), check_command="component-check", agents=agents)
    fakes = [FakeAgent(agent_role("calc", n), world) for n in range(agents)]
    events = FakeEvents()
    checks = FakeChecks(world, component_ok)
    runner = TeamRunner(work, fakes, checks=checks, planner=planner or FakePlanner([]), events=events)
    return runner, fakes, events, checks


async def test_tasks_run_in_dependency_order_split_among_agents() -> None:
    world = World()
    tasks = [task("c", "b"), task("b", "a"), task("a"), task("d"), task("e", "a", "d")]
    runner, agents, events, _ = team(tasks, world)
    report = await runner.run()
    assert report.ready and not report.blocked and sorted(report.done) == ["a", "b", "c", "d", "e"]
    position = {(kind, tid): i for i, (kind, _, tid) in enumerate(world.log)}
    for before, after in [("a", "b"), ("b", "c"), ("a", "e"), ("d", "e")]:
        assert position[("end", before)] < position[("start", after)]
    assert [[t.id for t in q] for q in assign(runner.work)] == [["a", "d"], ["b", "e"], ["c"]]
    assert {a.name: [t.id for t in a.tasks] for a in agents} == {
        "agent:calc:0": ["a", "d"],
        "agent:calc:1": ["b", "e"],
        "agent:calc:2": ["c"],
    }
    assert world.max_running >= 2  # independent tasks do run side by side
    assert events.kinds()[0] == "team.started" and events.kinds()[-2:] == ["team.ready_to_merge", "team.finished"]
    assert events.kinds("a") == ["task.started", "task.done"]


async def test_level_1_retry_by_the_same_agent_with_the_error_appended() -> None:
    world = World(broken={"a"})
    runner, agents, events, _ = team([task("a"), task("b", "a")], world)
    report = await runner.run()
    assert report.ready and report.recovered == {"a": 1}
    assert [t.id for t in agents[0].tasks] == ["a", "a#retry1"]
    retry = agents[0].tasks[1]
    assert (
        "previous attempt at this task failed" in retry.instructions
        and "AssertionError: a is wrong" in retry.instructions
    )
    assert events.kinds("a") == ["task.started", "task.escalated", "task.started", "task.done", "task.recovered"]
    assert events.of("task.escalated")[0]["level"] == 1 and events.of("task.escalated")[0]["next"] == "a#retry1"
    assert ("team:calc:a", "recovered", True) in events.errors  # the error is retracted from the bus
    assert any(key == "team:calc:a" and not resolved for key, _, resolved in events.errors)


async def test_level_2_handoff_to_another_agent_with_more_context() -> None:
    world = World(broken={"x", "a", "a#retry1"})
    runner, agents, events, _ = team([task("a"), task("x", agent=1)], world, agents=2)
    world.broken.discard("x")
    report = await runner.run()
    assert report.recovered == {"a": 2} and report.ready
    handoff = [t for t in agents[1].tasks if t.id == "a#handoff"]
    assert handoff, [t.id for t in agents[1].tasks]
    note = handoff[0].instructions
    assert "failed" in note and "AssertionError: a is wrong" in note
    assert "x.py (by agent:calc:1)" in note and "a.py (by agent:calc:0)" in note
    assert [e["level"] for e in events.of("task.escalated") if e["task"] == "a"] == [1, 2]


async def test_level_3_replan_replaces_the_task_and_dependents_follow() -> None:
    world = World(broken={"a", "a#retry1", "a#handoff"})
    planner = FakePlanner([task("a2", "a1"), task("a1")])
    runner, agents, events, _ = team([task("a"), task("b", "a")], world, planner=planner)
    report = await runner.run()
    assert report.recovered == {"a": 3} and report.ready and set(report.done) == {"a", "b"}
    assert planner.calls[0][0] == "a" and "AssertionError" in planner.calls[0][1]
    ran = [(a.name, t.id) for a in agents for t in a.tasks]
    assert ("agent:calc:0", "a1") in ran and ("agent:calc:1", "a2") in ran  # replacements in order, spread
    position = {(kind, tid): i for i, (kind, _, tid) in enumerate(world.log)}
    assert position[("end", "a1")] < position[("start", "a2")] < position[("start", "b")]
    assert [e["level"] for e in events.of("task.escalated")] == [1, 2, 3]


async def test_level_4_blocked_is_reported_and_the_rest_continue() -> None:
    world = World(broken={"a", "a#retry1", "a#handoff", "a1", "a1#retry1", "a1#handoff"})
    planner = FakePlanner([task("a1")])
    runner, _, events, checks = team([task("a"), task("b", "a"), task("c")], world, planner=planner)
    report = await runner.run()
    assert set(report.blocked) == {"a", "b"} and report.done == ["c"] and not report.ready
    assert "depends on blocked" in report.blocked["b"]
    assert {d["task"] for d in events.of("task.blocked")} == {"a", "b"}
    assert "team.ready_to_merge" not in events.kinds() and "component-check" not in checks.commands
    assert events.of("team.finished")[0] == {"component": "calc", "ready": False, "blocked": ["a", "b"]}


async def test_level_4_when_the_planner_fails() -> None:
    world = World(broken={"a", "a#retry1", "a#handoff"})
    runner, _, events, _ = team([task("a"), task("c")], world, planner=FakePlanner(RuntimeError("no plan")))
    report = await runner.run()
    assert "re-plan failed: RuntimeError: no plan" in report.blocked["a"] and report.done == ["c"]


async def test_a_blocked_tasks_reason_leads_with_its_first_failure_the_root_cause() -> None:
    miss = "CassetteMissError: no recorded turn for role='agent:calc:0', task='a', turn=0"

    class MissingTurnAgent(FakeAgent):
        async def run_task(self, task: AgentTask) -> AgentOutcome:
            if task.id == "a":  # level 0 meets the missing turn; later levels fail on its leftovers
                return AgentOutcome(task_id=task.id, status="error", error=miss, role=self.name)
            return await super().run_task(task)

    world = World(broken={"a#retry1", "a#handoff"})
    runner, agents, _, _ = team([task("a")], world, planner=FakePlanner(RuntimeError("no plan")))
    runner.agents[0] = MissingTurnAgent(agents[0].name, world)
    report = await runner.run()
    reason = report.blocked["a"]
    assert reason.startswith("first failure:") and miss in reason.split("last failure:")[0]
    assert "re-plan failed: RuntimeError: no plan" in reason


async def test_replacement_ids_must_not_clash() -> None:
    world = World(broken={"a", "a#retry1", "a#handoff"})
    runner, _, _, _ = team([task("a"), task("c")], world, planner=FakePlanner([task("c")]))
    report = await runner.run()
    assert "clash" in report.blocked["a"]


async def test_a_crashing_agent_is_escalated_like_a_failure() -> None:
    world = World()
    runner, agents, _, _ = team([task("a")], world, agents=2)

    async def boom(t: AgentTask) -> AgentOutcome:
        raise ConnectionError("actor died")

    agents[0].run_task = boom  # type: ignore[method-assign]
    report = await runner.run()
    assert report.recovered == {"a": 2}
    assert "actor died" in report.attempts[0].failure


async def test_every_agent_run_reports_its_tokens_for_the_budget_ledger() -> None:
    world = World(broken={"a"})  # a's first run fails its check: a is run twice, b once
    runner, agents, _, _ = team([task("a"), task("b", "a")], world, agents=2)

    async def crash(t: AgentTask) -> AgentOutcome:
        raise ConnectionError("actor died")

    report = await runner.run()
    runs = [(name, tid) for kind, name, tid in world.log if kind == "end"]
    assert len(runs) == 3
    assert [(c.role, c.model, c.usage.total_tokens) for c in report.usage] == [(name, "m1", 110) for name, _ in runs]
    runner, agents, _, _ = team([task("a")], World(), agents=2)
    agents[0].run_task = crash  # type: ignore[method-assign]
    report = await runner.run()
    assert [c.role for c in report.usage] == ["agent:calc:1"]  # the crashed run had nothing to report


async def test_ready_to_merge_only_when_the_component_check_passes() -> None:
    runner, _, events, _ = team([task("a")], World(), component_ok=False)
    report = await runner.run()
    assert not report.ready and report.check is not None and report.check.exit_code == 1
    assert "team.ready_to_merge" not in events.kinds() and events.of("team.check")[0]["ok"] is False
    runner, _, events, _ = team([task("a")], World(), component_ok=True)
    assert (await runner.run()).ready and "team.ready_to_merge" in events.kinds()


def test_plans_are_validated() -> None:
    with pytest.raises(ValidationError, match="cycle"):
        ComponentWork(component="c", tasks=(task("a", "b"), task("b", "a")))
    with pytest.raises(ValidationError, match="unknown tasks"):
        ComponentWork(component="c", tasks=(task("a", "zz"),))
    with pytest.raises(ValidationError, match="duplicate"):
        ComponentWork(component="c", tasks=(task("a"), task("a")))
    with pytest.raises(ValidationError):
        TeamTask(id="a#1", title="reserved suffix")
    with pytest.raises(InvalidInputError):
        TeamRunner(ComponentWork(component="c", tasks=(task("a"),)), [], checks=None, planner=None, events=None)  # type: ignore[arg-type]


# --- per-file serialization ---------------------------------------------------------------


async def test_file_lock_service_serialises_holders() -> None:
    locks = FileLockService()
    await locks.acquire("a.py", "agent-0")
    waiter = asyncio.create_task(locks.acquire("a.py", "agent-1"))
    await asyncio.sleep(0)
    assert not waiter.done() and locks.held() == {"a.py": "agent-0"}
    await locks.acquire("b.py", "agent-1")  # another path is free
    with pytest.raises(InvalidInputError):
        locks.release("a.py", "agent-1")
    with pytest.raises(InvalidInputError):
        await locks.acquire("a.py", "agent-0")
    assert locks.release_all("agent-0") == ["a.py"]
    await asyncio.wait_for(waiter, 5)
    assert locks.held() == {"b.py": "agent-1", "a.py": "agent-1"}


class SlowSandbox:
    """A fake sandbox whose reads yield to other tasks, so unlocked read-modify-writes interleave."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def read_file(self, path: str) -> bytes:
        data = await self._inner.read_file(path)
        for _ in range(5):
            await asyncio.sleep(0)
        return data


@pytest.mark.parametrize("shared_lock", [True, False])
async def test_two_agents_editing_one_file_do_not_clobber_it(shared_lock: bool) -> None:
    sandbox = SlowSandbox(await FakeBackend().create(SandboxSpec()))
    await sandbox.write_file("calc.py", "A = 0\nB = 0\n")
    service = FileLockService()

    def tools_for(holder: str) -> AgentTools:
        lock = (lambda path: service.lock(path, holder)) if shared_lock else None
        return AgentTools(sandbox, file_lock=lock)  # type: ignore[arg-type]

    def edit(n: int, old: str, new: str) -> ToolCall:
        return ToolCall(id=f"c{n}", name="edit", arguments={"path": "calc.py", "old": old, "new": new})

    results = await asyncio.gather(
        tools_for("agent-0").call(edit(0, "A = 0", "A = 1")), tools_for("agent-1").call(edit(1, "B = 0", "B = 2"))
    )
    assert not any(r.is_error for r in results)
    text = (await sandbox.read_file("calc.py")).decode()
    if shared_lock:
        assert text == "A = 1\nB = 2\n"
    else:  # without the shared service each agent's own locks do not see the other: one edit is lost
        assert text != "A = 1\nB = 2\n"


# --- planner and context --------------------------------------------------------------------

PLANNER_CASSETTE = """
version: 1
turns:
  - role: planner
    task: "a#replan"
    turn: 0
    tool_calls:
      - name: replace_tasks
        arguments:
          tasks:
            - {id: a1, title: smaller step, check_command: "check a1"}
            - {id: a2, title: last step, depends_on: [a1]}
  - role: planner
    task: "b#replan"
    turn: 0
    text: |
      - id: b1
        title: from text
"""


async def test_llm_planner_answers_from_the_cassette_under_role_planner() -> None:
    planner = LLMPlanner(ReplayProvider.from_cassette(Cassette.loads(PLANNER_CASSETTE)))
    tasks = await planner.replan(task("a"), "it broke")
    assert [(t.id, t.depends_on) for t in tasks] == [("a1", ()), ("a2", ("a1",))]
    assert [t.id for t in await planner.replan(task("b"), "it broke")] == ["b1"]


def test_prompt_context_puts_other_sandboxes_errors_in_the_system_prompt() -> None:
    unified = UnifiedContext(
        errors={
            "k": KnownError(
                source="npm-peer", message="vite 7 needs node 20", file=None, line=None, sender="agent:web:0", ts=2.0
            )
        },
        context={"api.base": ContextValue(value={"message": "use /api/v1"}, kind="decision", sender="x", ts=1.0)},
        files={"calc.py": FileState(sha256="ab" * 32, sandbox_id="s", agent="a", ts=1.0)},
    )
    system = build_system_prompt("agent:calc:0", AgentTask(id="t", title="t"), prompt_context(unified))
    assert "Known errors" in system and "npm-peer: vite 7 needs node 20" in system and "[from agent:web:0]" in system
    assert "api.base: use /api/v1" in system and "calc.py @ abababababab" in system


# --- the Sandbox protocol over a proxy handle ------------------------------------------------


class _Method:
    """``handle.method.remote(*args)`` → an awaitable, as a Ray actor method gives."""

    def __init__(self, fn: Any, streaming: bool = False) -> None:
        self.fn, self.streaming = fn, streaming

    def options(self, **kwargs: Any) -> _Method:
        assert kwargs == {"num_returns": "streaming"}
        return _Method(self.fn, streaming=True)

    def remote(self, *args: Any) -> Any:
        if not self.streaming:
            return self.fn(*args)

        async def refs() -> Any:  # an ObjectRefGenerator yields refs, each awaited for its value
            async for chunk in self.fn(*args):
                yield asyncio.sleep(0, chunk)

        return refs()


class FakeProxyHandle:
    """The SandboxProxy actor's method signatures (positional, as ProxySandbox calls them) over a sandbox."""

    def __init__(self, sandbox: Any) -> None:
        s = sandbox

        async def sandbox_id() -> str:
            return s.id

        async def read_file(path: str) -> bytes:
            return await s.read_file(path)

        self.sandbox_id = _Method(sandbox_id)
        self.exec = _Method(lambda c, cwd, env, t, stdin: s.exec(c, cwd=cwd, env=env, timeout=t, stdin=stdin))
        self.exec_stream = _Method(lambda c, cwd, env, t: s.exec_stream(c, cwd=cwd, env=env, timeout=t))
        self.write_file = _Method(lambda p, d, mode: s.write_file(p, d, mode=mode))
        self.read_file = _Method(read_file)
        self.list_files = _Method(lambda pattern: s.list_files(pattern))
        self.remove = _Method(lambda p, recursive: s.remove(p, recursive=recursive))


async def test_agent_tools_work_unchanged_on_a_proxy_sandbox() -> None:
    from sandbox_agents.backends.base import ExecResult as Result
    from sandbox_agents.proxy_sandbox import ProxySandbox

    backend = FakeBackend()
    backend._handlers["echo"] = lambda sb, req: Result(exit_code=0, stdout=" ".join(req.argv()[1:]) + "\n")
    inner = await backend.create(SandboxSpec())
    sandbox = await ProxySandbox.connect(FakeProxyHandle(inner), SandboxSpec(workdir="/workspace"))
    assert sandbox.id == inner.id and sandbox.spec.workdir == "/workspace"
    tools = AgentTools(sandbox)
    write = await tools.call(ToolCall(id="1", name="write_file", arguments={"path": "a/b.txt", "content": "hi"}))
    assert not write.is_error
    read = await tools.call(ToolCall(id="2", name="read_file", arguments={"path": "a/b.txt"}))
    assert read.content == "hi"
    listed = await tools.call(ToolCall(id="3", name="list_files", arguments={"pattern": "**/*.txt"}))
    assert "a/b.txt" in listed.content
    assert (
        "exit code: 0"
        in (await tools.call(ToolCall(id="4", name="exec", arguments={"command": ["echo", "x"]}))).content
    )
    chunks = [c async for c in sandbox.exec_stream(["echo", "streamed"])]
    assert chunks[-1].exit_code == 0 and "streamed" in "".join(c.data for c in chunks)
    assert not (await tools.call(ToolCall(id="5", name="remove", arguments={"path": "a/b.txt"}))).is_error
    assert await inner.list_files("**/*.txt") == []


async def test_every_team_event_is_a_known_kind_naming_its_component() -> None:
    world = World(broken={"a"})
    runner, _, events, _ = team([task("a"), task("b", "a")], world)
    await runner.run()
    payloads = [parse_event(kind, data) for kind, data in events.events]
    assert all(
        not isinstance(p, UnknownEvent) and p.data == d for p, (_, d) in zip(payloads, events.events, strict=True)
    )
    assert {d["component"] for _, d in events.events} == {"calc"}
    [escalated] = [p for p in payloads if isinstance(p, TaskEscalated)]
    assert escalated.level == 1 and escalated.next == "a#retry1"


async def test_the_team_reports_when_its_agents_waited_on_the_model_once_every_task_ran() -> None:
    world = World()
    runner, agents, events, _ = team([task("a"), task("b")], world, agents=2)
    busy = {"a": [(10.0, 12.0)], "b": [(11.0, 13.0), (20.0, 21.0)]}
    for agent in agents:
        run = agent.run_task

        async def timed(t: AgentTask, run: Any = run) -> AgentOutcome:
            return (await run(t)).model_copy(update={"model_busy": busy[t.id]})

        agent.run_task = timed  # type: ignore[method-assign]
    await runner.run()
    assert events.of("busy.report") == [
        {"component": "calc", "source": "model", "intervals": [[10.0, 13.0], [20.0, 21.0]], "seconds": 4.0}
    ]
    assert events.kinds().index("busy.report") < events.kinds().index("team.check")


async def test_a_component_check_that_just_passed_as_the_last_tasks_check_is_not_run_again() -> None:
    world = World()
    last = TeamTask(id="a", title="do a", check_command="component-check")
    runner, _, events, checks = team([last], world, agents=1)
    report = await runner.run()
    assert report.ready and checks.commands == ["component-check"]
    assert events.of("team.check")[0]["ok"] is True


async def test_a_check_runs_again_once_an_agent_run_ended_after_it_passed() -> None:
    world = World()
    first = TeamTask(id="a", title="do a", check_command="component-check")
    runner, _, _, checks = team([first, task("b", "a")], world, agents=2)
    report = await runner.run()
    assert report.ready and checks.commands == ["component-check", "check b", "component-check"]
