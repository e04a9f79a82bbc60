"""What a per-sandbox team works on and reports: tasks, the component's work, the ports it talks through.

:class:`TeamTask` and :class:`ComponentWork` are the plan of one component (validated: unique
ids, known dependencies, no cycle); :func:`assign` splits the tasks among the agents in
dependency order. The ports (:class:`TeamAgent`, :class:`CheckRunner`, :class:`Planner`,
:class:`TeamEvents`, :data:`ContextReader`) are what :class:`~coordinator.team.runner.TeamRunner` is
handed by the SandboxTeam actor (or by unit tests, as fakes); :class:`TeamReport` is what a
run answers. The attempt suffixes name the escalation levels (see ``coordinator/team/runner.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coordinator.bus.events import EventPayload
from sandbox_agents.agent_models import AgentOutcome, AgentTask
from sandbox_agents.backends.base import ExecResult, InstallRequest
from sandbox_agents.llm.metered import LLMCharge

#: Suffixes of the attempt ids of escalation levels 1, 2 and 3 (the table in ``coordinator/team/runner.py``).
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

    def agent_task(self, attempt_id: str, note: str = "", brief: str = "") -> AgentTask:
        """The :class:`AgentTask` of one attempt, with ``note`` appended to the instructions and the app's ``brief``."""
        instructions = self.instructions + (f"\n\n{note}" if note else "")
        return AgentTask(
            id=attempt_id,
            title=self.title,
            instructions=instructions.strip(),
            acceptance=self.acceptance,
            check_command=self.check_command,
            files=self.files,
            brief=brief,
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
    packages: tuple[InstallRequest, ...] = ()
    """Dependency manifests: the install phase runs before every check, so checks see the dependencies."""
    brief: str = ""
    """The app and this component's part of it (``coordinator.plan.app_brief``), in every agent's system prompt."""
    providers: tuple[str, ...] = ()
    """Components whose code must have been fed in (``component.fed``) before a check runs (parallel builds)."""

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

    async def emit(self, event: EventPayload) -> object:
        """Append a team event (``coordinator.bus.events``: ``team.*``, ``task.*``) to the build's log."""
        ...

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
    usage: list[LLMCharge] = Field(default_factory=list)
    """Every agent run's and re-plan's tokens and cost (a run that raised has none to report)."""
