"""The per-sandbox team: 3–5 agents build one component's tasks in one sandbox, and never give up silently.

This is the plan's *sandbox build runner* as plain Python. The SandboxTeam actor
(``actors/team.py``) owns one :class:`TeamRunner` and hands it its ports: the agents, a
check runner on the sandbox, a planner, an event sink and a context reader. Unit tests
pass fakes.

What a run does:

1. loads the build's unified context (``team.started`` carries its size);
2. splits the tasks among the agents: in dependency order, round-robin, unless a task
   names its agent; an agent runs its tasks one at a time, each once its dependencies are
   done;
3. runs each task's ``check_command`` in the sandbox after the agent finished it;
4. escalates a failed task, level by level, until it passes or is reported blocked;
5. runs the component's check; ``team.ready_to_merge`` only when every task is done and
   that check passes.

Escalation levels and the task ids (the ``task`` of every TurnKey, so a cassette can script
each attempt — e.g. a failing first attempt and a passing retry):

====  ==========================================  =========================  ==========================
lvl   what happens                                agent (role)               task id of the attempt
====  ==========================================  =========================  ==========================
0     first attempt                               assigned agent ``i``       ``{task}``
1     retry, the failure appended to the task     the same agent ``i``       ``{task}#retry1``
2     hand-off with more context (the failure,    the next agent ``i+1``     ``{task}#handoff``
      the files other agents changed)
3     re-plan: the planner answers replacement    role ``planner``           planner key ``{task}#replan``
      tasks; each runs with levels 0–2            agent ``i+k`` for the k-th their own ids
4     blocked: ``task.blocked``; dependents are   —                          —
      blocked too; the other tasks go on
====  ==========================================  =========================  ==========================

Agents' roles are ``agent:{component}:{n}``. Events: ``team.started``, ``task.started``,
``task.done``, ``task.escalated``, ``task.recovered``, ``task.blocked``, ``team.check``,
``team.ready_to_merge``, ``team.finished``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from coordinator.bus_models import UnifiedContext
from sandbox_agents.agent_models import AgentOutcome, AgentTask
from sandbox_agents.backends.base import ExecResult
from sandbox_agents.errors import InvalidInputError
from sandbox_agents.llm.base import LLMProvider, LLMRequest, Message, ToolSpec, TurnKey

logger = logging.getLogger(__name__)

FAILURE_CAP = 4_000
"""Most characters of a failure carried into the next attempt's instructions."""
RETRY_SUFFIX, HANDOFF_SUFFIX, REPLAN_SUFFIX = "#retry1", "#handoff", "#replan"


class TeamTask(BaseModel):
    """One task of a component's plan, with its dependencies and its check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200, pattern=r"^[^#\s]+$")
    """Stable id; ``#`` is reserved for the attempt suffixes."""
    title: str
    """One line saying what the task is."""
    instructions: str = ""
    """What to do, in full."""
    acceptance: str = ""
    """What must hold for the task to count as done, in words."""
    check_command: list[str] | str | None = None
    """Run in the sandbox after the agent finished; exit code 0 means the task is done."""
    check_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    """Bound on the task's check."""
    files: tuple[str, ...] = ()
    """Files the task is expected to touch (a hint to the agent)."""
    depends_on: tuple[str, ...] = ()
    """Tasks that must be done before this one starts."""
    agent: int | None = Field(default=None, ge=0)
    """Index of the agent that must run it; round-robin when unset."""

    def agent_task(self, attempt_id: str, note: str = "") -> AgentTask:
        """The :class:`AgentTask` of one attempt, with ``note`` appended to the instructions."""
        instructions = self.instructions + (f"\n\n{note}" if note else "")
        return AgentTask(
            id=attempt_id,
            title=self.title,
            instructions=instructions.strip(),
            acceptance=self.acceptance,
            check_command=self.check_command,
            files=self.files,
        )


class ComponentWork(BaseModel):
    """What one team builds: a component's tasks, its check and the size of the team."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    component: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    """Component of the intent contract; it names the agents' roles ``agent:{component}:{n}``."""
    tasks: tuple[TeamTask, ...] = Field(min_length=1)
    """The tasks, in any order; dependencies decide when each may start."""
    check_command: list[str] | str | None = None
    """The component's build/test command; it must pass before the team signals ready-to-merge."""
    check_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    """Bound on the component's check."""
    agents: int = Field(default=3, ge=1, le=5)
    """Agents in the team (the plan's 3–5; fewer for small components and tests)."""

    @model_validator(mode="after")
    def _plan_is_sound(self) -> ComponentWork:
        ids = [t.id for t in self.tasks]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate task ids: {sorted({i for i in ids if ids.count(i) > 1})}")
        for task in self.tasks:
            missing = [d for d in task.depends_on if d not in ids]
            if missing:
                raise ValueError(f"task {task.id!r} depends on unknown tasks {missing}")
            if task.agent is not None and task.agent >= self.agents:
                raise ValueError(f"task {task.id!r} names agent {task.agent} of a team of {self.agents}")
        topological(self.tasks)  # refuses a cycle
        return self

    def roles(self) -> list[str]:
        return [agent_role(self.component, n) for n in range(self.agents)]


def agent_role(component: str, index: int) -> str:
    """The role (TurnKey.role) of the ``index``-th agent of a component's team."""
    return f"agent:{component}:{index}"


def topological(tasks: Sequence[TeamTask]) -> list[TeamTask]:
    """Tasks in dependency order, keeping the given order among independent ones.

    Raises:
        ValueError: The dependencies form a cycle (or name a task not in ``tasks``).
    """
    done: set[str] = set()
    ordered: list[TeamTask] = []
    pending = list(tasks)
    while pending:
        ready = [t for t in pending if all(d in done for d in t.depends_on)]
        if not ready:
            raise ValueError(f"dependency cycle among tasks {[t.id for t in pending]}")
        ordered.append(ready[0])
        done.add(ready[0].id)
        pending.remove(ready[0])
    return ordered


def assign(work: ComponentWork) -> list[list[TeamTask]]:
    """Each agent's queue: tasks in dependency order, round-robin unless a task names its agent."""
    queues: list[list[TeamTask]] = [[] for _ in range(work.agents)]
    turn = 0
    for task in topological(work.tasks):
        if task.agent is not None:
            queues[task.agent].append(task)
        else:
            queues[turn % work.agents].append(task)
            turn += 1
    return queues


# --- ports ---------------------------------------------------------------------------------


class TeamAgent(Protocol):
    """One agent of the team (the SandboxTeam actor wraps an Agent actor handle)."""

    name: str

    async def run_task(self, task: AgentTask) -> AgentOutcome: ...


class CheckRunner(Protocol):
    """Runs a check command in the team's sandbox."""

    async def run_check(self, command: list[str] | str, timeout_s: float) -> ExecResult: ...


class Planner(Protocol):
    """Answers replacement tasks for a task that failed its first three attempts."""

    async def replan(self, task: TeamTask, failure: str) -> list[TeamTask]: ...


class TeamEvents(Protocol):
    """Where the team's events and errors go (the build's event log and error channel)."""

    async def emit(self, kind: str, data: dict[str, Any]) -> None: ...

    async def report_error(self, key: str, message: str, *, resolved: bool = False) -> None: ...


#: Reads the build's unified context (in the shape the agent prompt renders).
ContextReader = Callable[[], Awaitable[Mapping[str, Any]]]


# --- results -------------------------------------------------------------------------------


class AttemptRecord(BaseModel):
    """One attempt at one task."""

    model_config = ConfigDict(extra="forbid")

    task: str
    attempt: str
    agent: str
    level: int
    ok: bool
    failure: str = ""


class TeamReport(BaseModel):
    """What a team run did."""

    model_config = ConfigDict(extra="forbid")

    component: str
    ready: bool
    """Every task done and the component's check passed: the team signalled ready-to-merge."""
    done: list[str] = Field(default_factory=list)
    blocked: dict[str, str] = Field(default_factory=dict)
    """Task id → why it is blocked."""
    recovered: dict[str, int] = Field(default_factory=dict)
    """Task id → the escalation level that fixed it."""
    check: ExecResult | None = None
    attempts: list[AttemptRecord] = Field(default_factory=list)


# --- the per-file lock service -------------------------------------------------------------


class FileLockService:
    """One holder per workspace path at a time, shared by every agent of a sandbox.

    An agent's tools take the lock of a path around each write, edit and remove, so two
    agents never interleave a read-modify-write of one file. A holder's locks are dropped
    when its attempt ends (:meth:`release_all`), so a crashed agent cannot wedge a file.
    """

    def __init__(self) -> None:
        self._held: dict[str, str] = {}
        self._freed: dict[str, asyncio.Event] = {}

    async def acquire(self, path: str, holder: str) -> None:
        """Wait until ``path`` is free, then hold it for ``holder``.

        Raises:
            InvalidInputError: ``holder`` already holds ``path`` (the lock is not re-entrant).
        """
        if not path or not holder:
            raise InvalidInputError("path and holder must be non-empty", field="path")
        while path in self._held:
            if self._held[path] == holder:
                raise InvalidInputError(f"{holder} already holds the lock of {path}", field="path")
            await self._freed.setdefault(path, asyncio.Event()).wait()
        self._held[path] = holder

    def release(self, path: str, holder: str) -> None:
        """Free ``path``. Raises InvalidInputError when ``holder`` does not hold it."""
        if self._held.get(path) != holder:
            raise InvalidInputError(f"{holder} does not hold the lock of {path}", field="path")
        del self._held[path]
        event = self._freed.pop(path, None)
        if event is not None:
            event.set()

    def release_all(self, holder: str) -> list[str]:
        """Free every path ``holder`` holds; returns them."""
        paths = [p for p, h in self._held.items() if h == holder]
        for path in paths:
            self.release(path, holder)
        return paths

    @contextlib.asynccontextmanager
    async def lock(self, path: str, holder: str) -> AsyncIterator[None]:
        await self.acquire(path, holder)
        try:
            yield
        finally:
            if self._held.get(path) == holder:
                self.release(path, holder)

    def held(self) -> dict[str, str]:
        return dict(self._held)


# --- the runner ----------------------------------------------------------------------------


class _Failed(Exception):
    """An attempt (or a whole escalation) did not get the task done; the text says why."""


class TeamRunner:
    """Runs one component's tasks with a team of agents in one sandbox.

    Args:
        work: The component's tasks, check and team size.
        agents: One port per agent, ``work.agents`` of them; agent ``n`` plays role ``agent:{component}:{n}``.
        checks: Runs check commands in the sandbox.
        planner: Answers replacement tasks at escalation level 3.
        events: Receives the team's events and error reports.
        context: Reads the build's unified context (at start, and for hand-offs).
        locks: The sandbox's per-file lock service; released for an agent after each of its attempts.
    """

    def __init__(
        self,
        work: ComponentWork,
        agents: Sequence[TeamAgent],
        *,
        checks: CheckRunner,
        planner: Planner,
        events: TeamEvents,
        context: ContextReader | None = None,
        locks: FileLockService | None = None,
    ) -> None:
        if len(agents) != work.agents:
            raise InvalidInputError(
                f"{work.component}: {work.agents} agents planned, {len(agents)} given", field="agents"
            )
        self.work = work
        self.agents = list(agents)
        self.checks = checks
        self.planner = planner
        self.events = events
        self.context = context
        self.locks = locks or FileLockService()
        self._busy = [asyncio.Lock() for _ in agents]
        self._settled: dict[str, asyncio.Event] = {t.id: asyncio.Event() for t in work.tasks}
        self._changes: dict[str, str] = {}
        self._replaced: set[str] = set()
        self.report = TeamReport(component=work.component, ready=False)

    async def run(self) -> TeamReport:
        """Run every task (escalating failures), then the component check.

        Returns:
            The report; ``ready`` says whether ``team.ready_to_merge`` was emitted.
        """
        context = await self._read_context()
        await self._emit(
            "team.started", {"tasks": len(self.work.tasks), "agents": self.work.agents, "context": len(context)}
        )
        queues = assign(self.work)
        await asyncio.gather(*(self._work_queue(n, queue) for n, queue in enumerate(queues)))
        report = self.report
        if not report.blocked:
            report.check = await self._component_check()
            report.ready = report.check is None or report.check.ok
            await self._emit("team.check", {"ok": report.ready, "output": _result_text(report.check)[-1000:]})
            if report.ready:
                await self._emit("team.ready_to_merge", {"done": report.done})
        await self._emit("team.finished", {"ready": report.ready, "blocked": sorted(report.blocked)})
        return report

    async def _work_queue(self, index: int, queue: list[TeamTask]) -> None:
        for task in queue:
            await self._settle_one(task, index)

    async def _settle_one(self, task: TeamTask, index: int) -> None:
        try:
            for dep in task.depends_on:
                await self._settled[dep].wait()
            blocked_deps = [d for d in task.depends_on if d in self.report.blocked]
            if blocked_deps:
                await self._block(task, f"depends on blocked task(s) {blocked_deps}")
                return
            level = await self._escalate(task, index, allow_replan=True)
            self.report.done.append(task.id)
            if level:
                self.report.recovered[task.id] = level
                await self._emit("task.recovered", {"task": task.id, "level": level})
                await self.events.report_error(self._error_key(task), "recovered", resolved=True)
        except _Failed as exc:
            await self._block(task, str(exc))
        finally:
            self._settled[task.id].set()

    async def _escalate(self, task: TeamTask, index: int, *, allow_replan: bool) -> int:
        """Levels 0–3 for one task; returns the level that got it done. Raises _Failed for level 4."""
        failure = await self._attempt(task, index, task.id, level=0)
        if not failure:
            return 0
        await self._escalated(task, 1, failure, task.id + RETRY_SUFFIX)
        note = f"Your previous attempt at this task failed. Fix this:\n{_cap(failure)}"
        failure = await self._attempt(task, index, task.id + RETRY_SUFFIX, level=1, note=note)
        if not failure:
            return 1
        other = (index + 1) % len(self.agents)
        await self._escalated(task, 2, failure, task.id + HANDOFF_SUFFIX)
        failure = await self._attempt(task, other, task.id + HANDOFF_SUFFIX, level=2, note=self._handoff_note(failure))
        if not failure:
            return 2
        if not allow_replan:
            raise _Failed(failure)
        await self._escalated(task, 3, failure, task.id + REPLAN_SUFFIX)
        try:
            replacements = self._checked_replacements(await self.planner.replan(task, _cap(failure)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a planner miss or a bad plan leaves level 4
            raise _Failed(f"re-plan failed: {type(exc).__name__}: {exc}; last failure: {_cap(failure, 1000)}") from exc
        for k, sub in enumerate(replacements):
            await self._escalate(sub, (index + k) % len(self.agents), allow_replan=False)
        return 3

    async def _attempt(self, task: TeamTask, index: int, attempt_id: str, *, level: int, note: str = "") -> str:
        """One attempt: the agent's run, then the task's check. Returns the failure text, empty on success."""
        agent = self.agents[index]
        data = {"task": task.id, "attempt": attempt_id, "agent": agent.name, "level": level}
        async with self._busy[index]:
            await self._emit("task.started", data)
            failure = ""
            try:
                outcome = await agent.run_task(task.agent_task(attempt_id, note))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dead agent is one more failure to escalate
                failure = f"agent {agent.name} failed: {type(exc).__name__}: {exc}"
                outcome = None
            finally:
                self.locks.release_all(agent.name)
        if outcome is not None:
            for path in outcome.changed_files:
                self._changes[path] = agent.name
            if not outcome.ok:
                failure = f"the agent stopped with status {outcome.status}: {outcome.error or outcome.final_text}"
            elif task.check_command:
                result = await self.checks.run_check(task.check_command, task.check_timeout_s)
                if not result.ok:
                    failure = f"the task's check `{_command_text(task.check_command)}` failed:\n{_result_text(result)}"
        self.report.attempts.append(
            AttemptRecord(
                task=task.id, attempt=attempt_id, agent=agent.name, level=level, ok=not failure, failure=failure
            )
        )
        if failure:
            await self.events.report_error(self._error_key(task), f"{attempt_id}: {_cap(failure, 1500)}")
        else:
            await self._emit("task.done", data)
        return failure

    def _handoff_note(self, failure: str) -> str:
        changes = "\n".join(f"- {path} (by {who})" for path, who in sorted(self._changes.items())) or "- (none yet)"
        return (
            "Another agent tried this task twice and failed. Its last failure:\n"
            f"{_cap(failure)}\n\nFiles changed in this sandbox so far:\n{changes}\n"
            "Read the relevant files first, then fix the problem."
        )

    def _checked_replacements(self, tasks: list[TeamTask]) -> list[TeamTask]:
        if not tasks:
            raise InvalidInputError("the planner answered no replacement tasks", field="tasks")
        taken = set(self._settled) | self._replaced
        ids = [t.id for t in tasks]
        clash = [i for i in ids if i in taken] or [i for i in ids if ids.count(i) > 1]
        if clash:
            raise InvalidInputError(
                f"replacement task ids clash with existing ones: {sorted(set(clash))}", field="tasks"
            )
        for t in tasks:  # replacements may depend on each other and on tasks already done, nothing else
            unknown = [d for d in t.depends_on if d not in ids and d not in self.report.done]
            if unknown:
                raise InvalidInputError(f"replacement {t.id!r} depends on unfinished tasks {unknown}", field="tasks")
        done = set(self.report.done)
        ordered = topological(
            [t.model_copy(update={"depends_on": tuple(d for d in t.depends_on if d not in done)}) for t in tasks]
        )
        self._replaced.update(ids)
        return ordered

    async def _block(self, task: TeamTask, reason: str) -> None:
        self.report.blocked[task.id] = reason
        await self._emit("task.blocked", {"task": task.id, "reason": _cap(reason, 1500)})

    async def _escalated(self, task: TeamTask, level: int, failure: str, next_attempt: str) -> None:
        data = {"task": task.id, "level": level, "next": next_attempt, "reason": _cap(failure, 1500)}
        await self._emit("task.escalated", data)

    async def _component_check(self) -> ExecResult | None:
        if not self.work.check_command:
            return None
        return await self.checks.run_check(self.work.check_command, self.work.check_timeout_s)

    async def _read_context(self) -> Mapping[str, Any]:
        if self.context is None:
            return {}
        try:
            return await self.context()
        except Exception:  # the agents read it again every turn; a failed first read is not fatal
            logger.warning("team %s: reading the unified context failed", self.work.component, exc_info=True)
            return {}

    def _error_key(self, task: TeamTask) -> str:
        return f"team:{self.work.component}:{task.id}"

    async def _emit(self, kind: str, data: dict[str, Any]) -> None:
        try:
            await self.events.emit(kind, {"component": self.work.component, **data})
        except Exception:  # a lost event must not stop the build
            logger.warning("team %s: event %s not delivered", self.work.component, kind, exc_info=True)


# --- the planner over an LLM provider (replay answers from role "planner") -----------------

_TASKS: TypeAdapter[list[TeamTask]] = TypeAdapter(list[TeamTask])
REPLACE_TOOL = ToolSpec(
    name="replace_tasks",
    description="Answer the tasks that replace the failed one, in order.",
    parameters={
        "type": "object",
        "properties": {"tasks": {"type": "array", "items": TeamTask.model_json_schema()}},
        "required": ["tasks"],
    },
)


class LLMPlanner:
    """Asks a provider for replacement tasks: key ``(planner, {task}#replan, 0)``.

    The answer is a ``replace_tasks`` tool call with ``{"tasks": [...]}``, or text holding a
    YAML/JSON list of tasks (or ``{tasks: [...]}``).
    """

    def __init__(self, provider: LLMProvider, *, role: str = "planner") -> None:
        self.provider = provider
        self.role = role

    async def replan(self, task: TeamTask, failure: str) -> list[TeamTask]:
        request = LLMRequest(
            key=TurnKey(role=self.role, task=task.id + REPLAN_SUFFIX, turn=0),
            system="You re-plan a failed task of a software build into smaller replacement tasks.",
            messages=[
                Message(role="user", content=f"Task:\n{task.model_dump_json()}\n\nIt failed three times:\n{failure}")
            ],
            tools=[REPLACE_TOOL],
        )
        reply = await self.provider.complete(request)
        calls = [c for c in reply.tool_calls if c.name == REPLACE_TOOL.name]
        raw: Any = calls[0].arguments.get("tasks") if calls else yaml.safe_load(reply.text or "[]")
        if isinstance(raw, dict):
            raw = raw.get("tasks")
        try:
            return _TASKS.validate_python(raw)
        except ValidationError as exc:
            raise InvalidInputError(f"the planner's replacement tasks are invalid: {exc}", field="tasks") from exc


# --- the unified context as the agent prompt reads it --------------------------------------


def prompt_context(unified: UnifiedContext) -> dict[str, Any]:
    """The bus's unified context in the shapes ``agent_prompt.render_context`` renders: errors first."""
    errors = {
        key: {
            "kind": "error",
            "key": e.source,
            "message": e.message,
            "file": e.file,
            "line": e.line or None,
            "source": e.sender,
            "ts": e.ts,
        }
        for key, e in unified.errors.items()
    }
    decisions: dict[str, Any] = {}
    discoveries: dict[str, Any] = {}
    for key, v in unified.context.items():
        value = v.value if isinstance(v.value, Mapping) else {"message": str(v.value)}
        item = {
            "kind": "decision" if v.kind == "decision" else "discovery",
            "key": key,
            "source": v.sender,
            "ts": v.ts,
            **{k: value.get(k) for k in ("message", "file", "line") if value.get(k) is not None},
        }
        item.setdefault("message", str(v.value))
        (decisions if v.kind == "decision" else discoveries)[key] = item
    files = {path: state.sha256 for path, state in unified.files.items()}
    return {"errors": errors, "decisions": decisions, "discoveries": discoveries, "files": files}


def _cap(text: str, cap: int = FAILURE_CAP) -> str:
    return text if len(text) <= cap else text[: cap // 2] + "\n…[cut]…\n" + text[-cap // 2 :]


def _command_text(command: list[str] | str) -> str:
    return command if isinstance(command, str) else " ".join(command)


def _result_text(result: ExecResult | None) -> str:
    if result is None:
        return "(no check)"
    out, err = result.stdout[-1500:], result.stderr[-2000:]
    return f"exit code {result.exit_code}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
