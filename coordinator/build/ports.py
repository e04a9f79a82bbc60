"""The ports of a build run: what :class:`coordinator.build.run.BuildRun` needs from the world.

BuildRun is floor 2 (no Ray). The BuildCoordinator actor (``actors/build/actor.py``)
hands it one object per port, built over the real actors (SandboxProxy pool, SandboxTeam,
Swarm, Judge, MergeGate, Preview, the context bus); unit tests hand it fakes. Every port is
keyed by the plan's slot ids (``calc``, ``frontend~minimal``) so a restarted run finds the
same sandboxes again.

The small result models here are what crosses those ports; they are ours, so the build logic
never depends on the shape of another actor's reply.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from coordinator.budget import BudgetLedger
from coordinator.bus.events import EventPayload
from coordinator.bus.models import MergeRequest, Progress
from coordinator.clock import Clock
from coordinator.contracts import IntentContract
from coordinator.intent import LockedContract, SatisfactionReport
from coordinator.judge import Decision, Evidence
from coordinator.plan import SlotPlan
from coordinator.store.store import Store
from coordinator.team import TeamReport
from sandbox_agents.backends.base import SnapshotRef
from sandbox_agents.errors import BuildError
from sandbox_agents.llm.base import Usage

PHASES: tuple[str, ...] = ("intent", "fleet", "build", "verify", "judge", "merge", "preview", "satisfy", "done")
"""Phases of a build (DESIGN.md's 0–6; ``judge`` and ``satisfy`` named apart), in order."""

CANCEL_REQUESTED = "cancel requested"
"""Marker in a session's ``error`` while it is still active: cancel at the next step boundary
(written by whoever received the cancel, even while the coordinator was down)."""
PAUSED_BUDGET = "paused: budget exhausted"
"""The session's ``error`` (the pause reason) while it is paused for budget."""


class BuildSettings(BaseModel):
    """Knobs of a build run that are not part of the intent."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_interval_s: float = Field(default=300.0, gt=0)
    """Snapshot every live slot this often (``BUILD_CHECKPOINT_INTERVAL``), besides phase boundaries."""
    max_merge_attempts: int = Field(default=3, ge=1, le=10)
    """Admissions tried per component; a rejection sends the findings back to the team in between."""
    max_respawns: int = Field(default=3, ge=0, le=20)
    """Times one slot's dead sandbox is respawned before the build fails."""
    backend: str = "local"
    """Sandbox backend name of the components' sandboxes, for pricing compute (``Rates.compute_cost``)."""
    component_backends: dict[str, str] = Field(default_factory=dict)
    """A component whose sandboxes run elsewhere (a ``hybrid`` build's ``runs_on``): its backend name."""
    parallel: bool = True
    """Every component's team starts at once; a dependent's checks wait until its providers' chosen
    code has been copied in (``component.fed``), and merges keep dependency order. False: a component
    starts only once its dependencies are merged."""

    def backend_of(self, slot_id: str) -> str:
        """The backend name of a slot's sandbox (``web~polished`` is component ``web``'s)."""
        return self.component_backends.get(slot_id.split("~", 1)[0], self.backend)


class BuildCancelledError(BuildError):
    """The user cancelled the build; raised at the next step boundary."""


class BuildPausedError(BuildError):
    """The build paused (budget exhausted); ``reason`` says why."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- results crossing the ports --------------------------------------------------------------


class TeamOutcome(BaseModel):
    """A team run and what it cost in LLM tokens."""

    model_config = ConfigDict(extra="forbid")

    report: TeamReport
    usage: list[tuple[str, str, Usage]] = Field(default_factory=list)
    """``(role, model, usage)`` per agent run, for the ledger (empty when the team does not say)."""


class SlotVerification(BaseModel):
    """The verification swarm's verdict on one slot's sandbox."""

    model_config = ConfigDict(extra="forbid")

    score: float = Field(ge=0, le=1)
    passed: bool
    tests_passed: int = Field(default=0, ge=0)
    tests_total: int = Field(default=0, ge=0)
    summary: str = ""


class MergeOutcome(BaseModel):
    """The merge gate's answer to one admission."""

    model_config = ConfigDict(extra="forbid")

    accepted: bool
    commit: str | None = None
    reason: str = ""
    findings: list[str] = Field(default_factory=list)
    announced: bool = True
    """The gate told the build's log its verdict itself (``merge.accepted``/``merge.rejected``); False
    when it could not answer (its actor failed), and the run tells the rejection instead."""


# --- ports -----------------------------------------------------------------------------------


class FleetPort(Protocol):
    """One sandbox (through its SandboxProxy) per slot."""

    async def acquire(self, slot: SlotPlan) -> str:
        """A new sandbox for the slot (``slot.spec``); returns its id."""
        ...

    async def alive(self, slot_id: str) -> bool:
        """Whether the slot has a running sandbox (reconnecting to its proxy if needed)."""
        ...

    async def restore(self, slot: SlotPlan, ref: SnapshotRef) -> str:
        """Respawn the slot's sandbox from a checkpoint; returns the new sandbox id."""
        ...

    async def snapshot(self, slot_id: str) -> SnapshotRef: ...

    async def tree(self, slot_id: str) -> dict[str, bytes]:
        """The slot's workspace files (junk left out): what a merge of it would carry."""
        ...

    async def seed(self, slot_id: str, files: dict[str, bytes]) -> None:
        """Write main's tree into the slot's workspace (dependents start from merged code)."""
        ...

    async def size_bytes(self, slot_id: str) -> int: ...

    async def compute_seconds(self, slot_id: str) -> float:
        """CPU-seconds the slot's current sandbox used so far (cumulative, per sandbox)."""
        ...

    async def release(self, slot_id: str) -> None:
        """Terminate the slot's sandbox and drop its proxy (idempotent)."""
        ...


FixReason = Literal["merge", "interface"]
"""Why a built slot's team runs again: its merge was rejected, or an interface it uses changed."""


class TeamsPort(Protocol):
    async def run(
        self, slot: SlotPlan, *, attempt: int = 0, feedback: str | None = None, reason: FixReason = "merge"
    ) -> TeamOutcome:
        """Run the slot's team to the end. With ``feedback``, the team gets one fix task carrying it
        instead of the plan's tasks: ``{reason}-fix-{attempt}`` (``merge-fix-1``, ``interface-fix-1``)."""
        ...

    async def stop(self, slot_id: str) -> None: ...


class VerifyPort(Protocol):
    async def verify(self, slot: SlotPlan, *, check: bool | None = None) -> SlotVerification:
        """Verify the slot's candidate. ``check`` is the component check's verdict when its team ran it
        on this very candidate (it is then not run again); ``None`` runs it."""
        ...


class JudgePort(Protocol):
    async def decide(self, evidence: list[Evidence], component: str) -> Decision: ...


class GatePort(Protocol):
    """The MergeGate: main-test sandbox, one admission at a time; a rejection leaves main unchanged."""

    async def start(self, contract: IntentContract) -> str: ...

    async def admit(self, slot: SlotPlan, sandbox_id: str) -> MergeOutcome: ...

    async def merged(self) -> list[str]:
        """Components merged into main so far."""
        ...

    async def tree(self) -> dict[str, bytes]: ...

    async def tree_hash(self) -> str: ...


MergeHandler = Callable[[MergeRequest], Awaitable[None]]
"""Handles one merge request; a request is acknowledged only once its handler returned."""


class MergeRequestsPort(Protocol):
    """The build's ``merge`` channel: pipelines send requests, the run consumes them, at least once.

    The channel outlives the coordinator: a request its consumer had not acknowledged when the
    process died is delivered again to the next incarnation's consumer, before any new one.
    """

    async def send(self, request: MergeRequest) -> None:
        """Publish a request (buffered while the bus is down; never dropped)."""
        ...

    async def start(self, handler: MergeHandler) -> None:
        """Consume with ``handler`` until :meth:`stop`: unacknowledged requests first, then new ones."""
        ...

    async def stop(self) -> None:
        """Stop consuming; a request whose handler was interrupted stays unacknowledged."""
        ...


ProgressHandler = Callable[[Progress], Awaitable[None]]
"""Relays one progress line; the line is acknowledged only once its handler returned."""


class ProgressPort(Protocol):
    """The build's ``progress`` channel: teams publish a line per task start and end, the run relays
    each into its event log (``team.progress``), at least once."""

    async def start(self, handler: ProgressHandler) -> None:
        """Consume with ``handler`` until :meth:`stop`: unacknowledged lines first, then new ones."""
        ...

    async def stop(self) -> None:
        """Stop consuming; a line whose handler was interrupted stays unacknowledged."""
        ...


class PublishedInterface(BaseModel):
    """An interface a component's agents published on the bus (the ``interface.{component}`` decision)."""

    model_config = ConfigDict(extra="forbid")

    component: str
    text: str
    """What was published, as published (the run parses it as JSON into an ``Interface``)."""
    by: str = ""
    """The publisher's name (an agent actor of the component's team, or someone else)."""
    by_component: str | None = None
    """The component whose team the publisher belongs to (None: not an agent of this build)."""


class InterfacesPort(Protocol):
    """Interface changes the build's agents published (latest per component)."""

    async def published(self) -> list[PublishedInterface]: ...


class PreviewPort(Protocol):
    async def refresh(self) -> str | None:
        """Serve main's code again after a merge; returns the preview URL (None if nothing serves)."""
        ...


class SatisfactionPort(Protocol):
    async def check_main(self, locked: LockedContract) -> SatisfactionReport:
        """Every success criterion against main (through the gate's sandbox and the preview)."""
        ...

    async def check_slot(self, locked: LockedContract, slot: SlotPlan) -> tuple[int, int]:
        """``(passed, total)`` of the component's criteria in a candidate's own sandbox."""
        ...


class PlannerPort(Protocol):
    async def plan(self, prompt: str) -> IntentContract: ...


class EventsPort(Protocol):
    async def emit(self, event: EventPayload) -> str | None:
        """Append to the build's event log; returns the entry id (None if buffered)."""
        ...


class NotifierPort(Protocol):
    async def notify(self, status: str, summary: str, data: dict[str, Any]) -> None: ...


@dataclass
class BuildPorts:
    """Everything a run reaches the world through."""

    fleet: FleetPort
    teams: TeamsPort
    verify: VerifyPort
    judge: JudgePort
    gate: GatePort
    merges: MergeRequestsPort
    interfaces: InterfacesPort
    preview: PreviewPort
    satisfaction: SatisfactionPort
    events: EventsPort
    store: Store
    ledger: BudgetLedger
    clock: Clock
    planner: PlannerPort | None = None
    notifier: NotifierPort | None = None
    progress: ProgressPort | None = None
    """None: the teams' progress lines stay on the bus, unrelayed."""
