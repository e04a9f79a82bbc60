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
   that check passes. A check runs once per change: one that passed with no agent run ending
   since it started is not run again (the component check is often the last task's).

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

The task models, ports and report live in ``coordinator/team/models.py``, the per-file lock
service in ``coordinator/team/locks.py``, the LLM planner and :func:`prompt_context` in
``coordinator/team/llm.py``; the package ``coordinator.team`` exports them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from coordinator.bus.events import (
    BusyReport,
    EventPayload,
    TaskBlocked,
    TaskDone,
    TaskEscalated,
    TaskRecovered,
    TaskStarted,
    TeamCheck,
    TeamFinished,
    TeamReadyToMerge,
    TeamStarted,
)
from coordinator.team.locks import FileLockService
from coordinator.team.models import (
    HANDOFF_SUFFIX,
    REPLAN_SUFFIX,
    RETRY_SUFFIX,
    AttemptRecord,
    CheckRunner,
    ComponentWork,
    ContextReader,
    Planner,
    TeamAgent,
    TeamEvents,
    TeamReport,
    TeamTask,
    assign,
    topological,
)
from sandbox_agents.backends.base import ExecResult
from sandbox_agents.busy import BusyIntervals, Interval, rounded, union
from sandbox_agents.errors import InvalidInputError
from sandbox_agents.llm.metered import LLMCharge

__all__ = ["FAILURE_CAP", "TeamRunner"]

logger = logging.getLogger(__name__)

FAILURE_CAP = 4_000
"""Most characters of a failure carried into the next attempt's instructions."""


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
        clock: The wall clock of the re-planner's busy intervals.
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
        clock: Callable[[], float] = time.time,
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
        self._runs_ended = 0
        """Agent runs that ended: each may have changed the sandbox, so a passed check holds until the next."""
        self._passed: dict[str | tuple[str, ...], tuple[int, ExecResult]] = {}
        """Check command → runs ended when it last started, and its passing result."""
        self._model_busy: list[Interval] = []
        """When the agents (from their outcomes) and the re-planner waited on the model."""
        self._replanning = BusyIntervals(clock)
        self.report = TeamReport(component=work.component, ready=False)

    async def run(self) -> TeamReport:
        """Run every task (escalating failures), then the component check.

        Returns:
            The report; ``ready`` says whether ``team.ready_to_merge`` was emitted.
        """
        context = await self._read_context()
        component = self.work.component
        await self._emit(
            TeamStarted(component=component, tasks=len(self.work.tasks), agents=self.work.agents, context=len(context))
        )
        queues = assign(self.work)
        await asyncio.gather(*(self._work_queue(n, queue) for n, queue in enumerate(queues)))
        await self._report_model_time()  # every model call of the run is behind us (the checks ask none)
        report = self.report
        if not report.blocked:
            report.check = await self._component_check()
            report.ready = report.check is None or report.check.ok
            output = _result_text(report.check)[-1000:]
            await self._emit(TeamCheck(component=component, ok=report.ready, output=output))
            if report.ready:
                await self._emit(TeamReadyToMerge(component=component, done=report.done))
        await self._emit(TeamFinished(component=component, ready=report.ready, blocked=sorted(report.blocked)))
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
                await self._emit(TaskRecovered(component=self.work.component, task=task.id, level=level))
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
        first = failure  # the root cause: later levels often fail on what it left (or on the same cause)
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
            raise _Failed(_with_first(failure, first))
        await self._escalated(task, 3, failure, task.id + REPLAN_SUFFIX)
        try:
            with self._replanning.busy():
                replan = await self.planner.replan(task, _cap(failure))
            replacements = self._checked_replacements(replan)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a planner miss or a bad plan leaves level 4
            last = f"re-plan failed: {type(exc).__name__}: {exc}; last failure: {_cap(failure, 1000)}"
            raise _Failed(_with_first(last, first)) from exc
        for k, sub in enumerate(replacements):
            await self._escalate(sub, (index + k) % len(self.agents), allow_replan=False)
        return 3

    async def _attempt(self, task: TeamTask, index: int, attempt_id: str, *, level: int, note: str = "") -> str:
        """One attempt: the agent's run, then the task's check. Returns the failure text, empty on success."""
        agent = self.agents[index]
        ids: dict[str, Any] = {"component": self.work.component, "task": task.id, "attempt": attempt_id}
        async with self._busy[index]:
            await self._emit(TaskStarted(**ids, agent=agent.name, level=level))
            failure = ""
            try:
                outcome = await agent.run_task(task.agent_task(attempt_id, note, self.work.brief))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dead agent is one more failure to escalate
                failure = f"agent {agent.name} failed: {type(exc).__name__}: {exc}"
                outcome = None
            finally:
                self._runs_ended += 1
                self.locks.release_all(agent.name)
        if outcome is not None:
            self._model_busy += outcome.model_busy
            if outcome.usage.total_tokens or outcome.usage.cost_usd:
                model = outcome.model or "unknown"
                self.report.usage.append(LLMCharge(role=outcome.role or agent.name, model=model, usage=outcome.usage))
            for path in outcome.changed_files:
                self._changes[path] = agent.name
            if not outcome.ok:
                failure = f"the agent stopped with status {outcome.status}: {outcome.error or outcome.final_text}"
            elif task.check_command:
                result = await self._check(task.check_command, task.check_timeout_s)
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
            await self._emit(TaskDone(**ids, agent=agent.name, level=level))
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
        await self._emit(TaskBlocked(component=self.work.component, task=task.id, reason=_cap(reason, 1500)))

    async def _escalated(self, task: TeamTask, level: int, failure: str, next_attempt: str) -> None:
        await self._emit(
            TaskEscalated(
                component=self.work.component,
                task=task.id,
                level=level,
                next=next_attempt,
                reason=_cap(failure, 1500),
            )
        )

    async def _report_model_time(self) -> None:
        """``busy.report`` (source ``model``): when this run's agents and re-planner waited on the model."""
        intervals = union([*self._model_busy, *self._replanning.intervals()])
        seconds = round(sum(end - start for start, end in intervals), 3)
        await self._emit(
            BusyReport(component=self.work.component, source="model", intervals=rounded(intervals), seconds=seconds)
        )

    async def _component_check(self) -> ExecResult | None:
        if not self.work.check_command:
            return None
        return await self._check(self.work.check_command, self.work.check_timeout_s)

    async def _check(self, command: list[str] | str, timeout_s: float) -> ExecResult:
        """Run a check once per change: a command that passed with no agent run ending since it started
        passes again without running (the component check is often the last task's check)."""
        key = command if isinstance(command, str) else tuple(command)
        passed = self._passed.get(key)
        if passed is not None and passed[0] == self._runs_ended:
            return passed[1]
        started = self._runs_ended
        result = await self.checks.run_check(command, timeout_s)
        if result.ok:
            self._passed[key] = (started, result)
        return result

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

    async def _emit(self, event: EventPayload) -> None:
        try:
            await self.events.emit(event)
        except Exception:  # a lost event must not stop the build
            logger.warning("team %s: event %s not delivered", self.work.component, event.kind, exc_info=True)


def _with_first(last: str, first: str) -> str:
    """A blocked task's reason: its first failure (the root cause, e.g. the cassette key that is missing) first."""
    if first.strip() == last.strip():
        return last
    return f"first failure: {_cap(first, 1000)}\nlast failure: {last}"


def _cap(text: str, cap: int = FAILURE_CAP) -> str:
    return text if len(text) <= cap else text[: cap // 2] + "\n…[cut]…\n" + text[-cap // 2 :]


def _command_text(command: list[str] | str) -> str:
    return command if isinstance(command, str) else " ".join(command)


def _result_text(result: ExecResult | None) -> str:
    if result is None:
        return "(no check)"
    out, err = result.stdout[-1500:], result.stderr[-2000:]
    return f"exit code {result.exit_code}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
