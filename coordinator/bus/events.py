"""The kinds of the build's event log, one typed payload model per kind.

An emitter builds the payload of its kind (``MergeAccepted(component=..., slot=..., commit=...)``)
and hands it to its events port; on the bus it travels as an :class:`~coordinator.bus.models.Event`
``{"type": "event", "kind": "merge.accepted", "data": {...}}`` whose ``data`` holds the payload's
fields. A reader gets the typed payload back with ``Event.payload`` (:func:`parse_event`).

Two rules keep the wire shape what readers (the web UI, ``kriptik logs``, the demo's progress,
benches) have always seen:

* ``data`` holds the fields the emitter gave, and only those: an optional field left out is absent
  from ``data`` (it is not written as its default). So the coordinator's ``merge.rejected``
  (``reason``, ``findings``) and the gate's (``commit``, ``changed``, ``reason``) keep their own
  keys, and a reader tells them apart as before.
* A kind this version does not know (an older stream, a test or a bench writing its own kinds),
  or data that does not fit its kind's model, decodes as :class:`UnknownEvent` instead of failing.

Events emitted by a build run (``BuildRun.emit``) or its budget ledger carry the build's id as
``build_id`` (:class:`RunEvent`); the run fills it in, so emitters leave it out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

logger = logging.getLogger(__name__)


class EventPayload(BaseModel):
    """Base of every payload: ``kind`` names it, :attr:`data` is what travels as the event's ``data``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str

    @property
    def data(self) -> dict[str, Any]:
        """The fields the emitter gave (JSON-ready), without ``kind``: the event's ``data`` on the wire."""
        return self.model_dump(mode="json", include=set(self.model_fields_set) - {"kind"})


class UnknownEvent(EventPayload):
    """An event of a kind this version does not know, or whose data does not fit its kind: kept as it came."""

    raw: dict[str, Any] = Field(default_factory=dict)
    """The event's ``data`` as it was on the wire."""

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.raw)


class RunEvent(EventPayload):
    """An event a build run emits; the run sets ``build_id`` (``BuildRun.emit``, ``BudgetLedger``)."""

    build_id: str | None = None
    """The build; filled in by the emitting run, so absent only from events other actors emit."""

    def for_build(self, build_id: str) -> Self:
        """The same event carrying the build's id."""
        return self.model_copy(update={"build_id": build_id})


# --- the run's phases and endings (coordinator/build/run.py) --------------------------------


class BuildPhase(RunEvent):
    kind: Literal["build.phase"] = "build.phase"
    phase: str
    previous: str
    """The phase left ("" for the first)."""


class BuildResumed(RunEvent):
    """A paused build runs again (its budget was raised)."""

    kind: Literal["build.resumed"] = "build.resumed"
    phase: str


class CoordinatorResumed(RunEvent):
    """A restarted coordinator carries on a running build from the phase it had reached."""

    kind: Literal["coordinator.resumed"] = "coordinator.resumed"
    phase: str


class IntentLocked(RunEvent):
    kind: Literal["intent.locked"] = "intent.locked"
    name: str
    """The contract's name."""
    sha256: str
    """The lock's hash of the contract."""


class FleetReady(RunEvent):
    kind: Literal["fleet.ready"] = "fleet.ready"
    slots: list[str]
    """Every slot id of the plan."""
    order: list[str]
    """Components in dependency order."""


class ComponentPhase(RunEvent):
    kind: Literal["component.phase"] = "component.phase"
    component: str
    phase: str


class CheckpointTaken(RunEvent):
    kind: Literal["checkpoint.taken"] = "checkpoint.taken"
    reason: str
    """``interval``, ``phase:{name}`` or ``pause``."""
    slots: int
    """How many slots were snapshotted."""
    phase: str


class IntentSatisfaction(RunEvent):
    """Every success criterion checked against main (``SatisfactionReport.to_event``)."""

    kind: Literal["intent.satisfaction"] = "intent.satisfaction"
    contract_sha256: str
    results: list[dict[str, Any]]
    """One ``CriterionResult`` (id, type, component, passed, evidence) per criterion."""
    done: bool
    passed: int
    total: int


class BuildDone(RunEvent):
    kind: Literal["build.done"] = "build.done"
    tree_hash: str
    """Main's tree hash at the end."""
    preview_url: str | None


class BuildPaused(RunEvent):
    kind: Literal["build.paused"] = "build.paused"
    reason: str
    phase: str
    spent_usd: float


class BuildCancelled(RunEvent):
    kind: Literal["build.cancelled"] = "build.cancelled"
    phase: str


class BuildErrorEvent(RunEvent):
    """The build failed (``error`` and ``phase``), or a step failed that it goes on after (``fatal=False``)."""

    kind: Literal["build.error"] = "build.error"
    component: str | None = None
    """The component whose step failed (a non-fatal error)."""
    error: str
    phase: str = ""
    fatal: bool = True
    """False for a failure the build goes on after (a broken preview)."""


# --- a component's slots (coordinator/build/steps.py) ----------------------------------------


class SlotAcquired(RunEvent):
    kind: Literal["slot.acquired"] = "slot.acquired"
    slot: str
    sandbox_id: str
    respawn: bool
    """True when it replaces a dead sandbox that had no checkpoint."""
    backend: str = ""
    """The sandbox's backend (``local``, ``modal``); absent from runs of older versions."""


class SlotRespawned(RunEvent):
    """A dead sandbox was restored from the slot's newest checkpoint."""

    kind: Literal["slot.respawned"] = "slot.respawned"
    slot: str
    checkpoint: str
    """The checkpoint's id."""
    sandbox_id: str


class SlotRestored(RunEvent):
    """A resumed run restored a slot that had no sandbox from its newest checkpoint."""

    kind: Literal["slot.restored"] = "slot.restored"
    slot: str
    checkpoint: str
    sandbox_id: str


class SlotSeeded(RunEvent):
    """A dependent's fresh sandbox got main's tree."""

    kind: Literal["slot.seeded"] = "slot.seeded"
    slot: str
    files: int


class ComponentFed(RunEvent):
    """A provider's chosen code was copied into a dependent's sandboxes, before the provider merged.

    The dependent's team runs its checks only once every provider it depends on has fed it.
    """

    kind: Literal["component.fed"] = "component.fed"
    component: str
    """The dependent that got the files."""
    provider: str
    slots: list[str]
    files: int


class InterfaceChanged(RunEvent):
    """A provider's agents published a new version of its declared interface (``interface.{component}``).

    Its dependents built before the change are sent back to their teams with it before they merge.
    """

    kind: Literal["interface.changed"] = "interface.changed"
    component: str
    interface: dict[str, Any]
    """The new interface (a ``coordinator.contracts.Interface``, as JSON)."""
    version: int
    """1 for the first change of this component's interface in the build, then 2, …"""
    by: str = ""
    """Who published it (the agent actor)."""
    dependents: list[str] = Field(default_factory=list)
    """Components that use it and are rebuilt against it."""


class SlotBuilding(RunEvent):
    kind: Literal["slot.building"] = "slot.building"
    slot: str
    attempt: int
    """0 for the plan's tasks, then one per rejected merge sent back to the team."""


class SlotBuilt(RunEvent):
    kind: Literal["slot.built"] = "slot.built"
    slot: str
    done: list[str]
    """Tasks done."""
    blocked: dict[str, str]
    """Task id → why it is blocked."""
    attempt: int


class SlotBlocked(RunEvent):
    kind: Literal["slot.blocked"] = "slot.blocked"
    slot: str
    done: list[str]
    blocked: dict[str, str]
    attempt: int


class SlotVerified(RunEvent):
    """The verification swarm's verdict on a slot (``SlotVerification``)."""

    kind: Literal["slot.verified"] = "slot.verified"
    slot: str
    score: float
    passed: bool
    tests_passed: int
    tests_total: int
    summary: str


# --- tournaments --------------------------------------------------------------------------------


class _DecisionFields(RunEvent):
    component: str
    winner: str
    """The winning candidate's slot id."""
    ranking: list[dict[str, Any]]
    """One ``RankedCandidate`` (candidate, score, terms, llm_reasons) per candidate, best first."""
    reasons: list[str]
    llm_used: bool
    usage: list[dict[str, Any]]
    """What the LLM signal cost, one ``LLMCharge`` per call."""


class JudgeDecision(_DecisionFields):
    """The judge's verdict as the Judge actor logs it (``Decision.to_event``)."""

    kind: Literal["judge.decision"] = "judge.decision"


class TournamentDecision(_DecisionFields):
    """The judge's verdict as the build run acts on it."""

    kind: Literal["tournament.decision"] = "tournament.decision"


class TournamentEliminated(RunEvent):
    """A losing candidate was snapshotted, then terminated."""

    kind: Literal["tournament.eliminated"] = "tournament.eliminated"
    component: str
    slot: str


# --- merges and the preview -----------------------------------------------------------------------


class MergeQueued(EventPayload):
    """The gate took an admission; it waits for the dependencies not merged yet."""

    kind: Literal["merge.queued"] = "merge.queued"
    component: str
    slot: str
    waiting_for: list[str]


class MergeAccepted(RunEvent):
    """A component is in main, announced once, by the gate: ``commit``, ``changed``, ``reason``.

    Runs of older versions echoed it with ``commit``, or ``recovered`` for a merge that was in flight
    while the coordinator was down; ``recovered`` is kept so their logs still decode.
    """

    kind: Literal["merge.accepted"] = "merge.accepted"
    component: str
    slot: str
    commit: str | None = None
    changed: list[str] = Field(default_factory=list)
    """Files written or deleted in main."""
    reason: str = ""
    recovered: bool = False


class MergeRejected(RunEvent):
    """The gate refused a merge (main unchanged): the gate's event has ``commit``, ``changed``,
    ``reason``; the run's has ``reason`` and ``findings`` (sent back to the team)."""

    kind: Literal["merge.rejected"] = "merge.rejected"
    component: str
    slot: str
    commit: str | None = None
    changed: list[str] = Field(default_factory=list)
    reason: str = ""
    findings: list[str] = Field(default_factory=list)


class PreviewRefreshed(RunEvent):
    kind: Literal["preview.refreshed"] = "preview.refreshed"
    component: str
    """The component whose merge the preview now serves."""
    url: str | None


# --- a sandbox's team (coordinator/team/runner.py) ------------------------------------------------


class TeamStarted(EventPayload):
    kind: Literal["team.started"] = "team.started"
    component: str
    tasks: int
    agents: int
    context: int
    """Entries of the unified context the team started from."""


class TeamCheck(EventPayload):
    """The component's own check after every task was done."""

    kind: Literal["team.check"] = "team.check"
    component: str
    ok: bool
    output: str


class TeamReadyToMerge(EventPayload):
    kind: Literal["team.ready_to_merge"] = "team.ready_to_merge"
    component: str
    done: list[str]


class TeamFinished(EventPayload):
    kind: Literal["team.finished"] = "team.finished"
    component: str
    ready: bool
    blocked: list[str]


class TeamProgress(EventPayload):
    """A team's progress line, relayed into the log by the build's run from the bus's ``progress`` channel.

    Relayed at least once: a line a killed coordinator had relayed but not acknowledged appears again
    after its restart. Readers keep the latest per slot (the web UI shows it in the fleet table).
    """

    kind: Literal["team.progress"] = "team.progress"
    component: str
    """The component as its team knows it (a candidate's team: ``{component}.{strategy}``)."""
    slot: str = ""
    """The plan's slot (``web~polished``); empty when the team did not say."""
    task: str
    """The task the line is about (``check`` for the component's check): the message's ``phase``."""
    message: str
    """One human line, e.g. ``task api-tests: check passed``."""
    fraction: float | None = None
    """Tasks done / tasks of the team's run, in [0, 1]."""


class TaskStarted(EventPayload):
    kind: Literal["task.started"] = "task.started"
    component: str
    task: str
    attempt: str
    """The attempt's task id (``{task}``, ``{task}#retry1``, ``{task}#handoff``)."""
    agent: str
    level: int
    """Escalation level (0 first attempt, 1 retry, 2 hand-off)."""


class TaskDone(EventPayload):
    kind: Literal["task.done"] = "task.done"
    component: str
    task: str
    attempt: str
    agent: str
    level: int


class AgentStepEvent(EventPayload):
    """What an agent just did: a message of the model (``tool`` empty) or a tool call and what it was on."""

    kind: Literal["agent.step"] = "agent.step"
    component: str
    sid: str
    """The slot whose sandbox the agent works in."""
    agent: str
    task: str
    turn: int
    tool: str = ""
    detail: str = ""
    ok: bool = True


class TaskRecovered(EventPayload):
    """A task done after at least one failed attempt."""

    kind: Literal["task.recovered"] = "task.recovered"
    component: str
    task: str
    level: int
    """The escalation level that got it done."""


class TaskEscalated(EventPayload):
    kind: Literal["task.escalated"] = "task.escalated"
    component: str
    task: str
    level: int
    """The level escalated to (1 retry, 2 hand-off, 3 re-plan)."""
    next: str
    """The next attempt's task id."""
    reason: str


class TaskBlocked(EventPayload):
    kind: Literal["task.blocked"] = "task.blocked"
    component: str
    task: str
    reason: str


# --- the budget (coordinator/budget.py) ----------------------------------------------------------


class BudgetRaised(RunEvent):
    kind: Literal["budget.raised"] = "budget.raised"
    previous_usd: float | None
    budget_usd: float | None
    status: str
    """The ledger's status under the new limit (``ok``, ``warning``, ``exhausted``)."""
    spent_usd: float


class BudgetWarning(RunEvent):
    kind: Literal["budget.warning"] = "budget.warning"
    spent_usd: float
    budget_usd: float | None
    fraction: float
    """The warning fraction crossed."""


class BudgetExhausted(RunEvent):
    kind: Literal["budget.exhausted"] = "budget.exhausted"
    spent_usd: float
    budget_usd: float | None
    action: str
    """What the build does now (``pause``)."""


# --- verification (actors/swarm.py) ---------------------------------------------------------------


class SwarmReportEvent(EventPayload):
    """The verification swarm's verdict on one slot's sandbox."""

    kind: Literal["swarm.report"] = "swarm.report"
    sid: str
    sandbox_id: str
    passed: bool
    score: float
    verifiers: dict[str, bool]
    """Verifier name → passed."""
    duration_s: float


class VerifierReportEvent(EventPayload):
    """One verifier's verdict, as soon as it has one."""

    kind: Literal["verifier.report"] = "verifier.report"
    sid: str
    verifier: str
    passed: bool
    score: float
    errors: int
    """Error findings reported on the errors channel."""


# --- where a component's time went (kriptik demo's overhead figure) --------------------------------


class BusyReport(EventPayload):
    """When a component's work was busy with real work: sandbox commands or model calls.

    ``kriptik demo`` subtracts the union of a component's intervals from its pipeline time; what is
    left is the pipeline's own overhead (actor hops and starts, seeding, waits, browser starts).
    """

    kind: Literal["busy.report"] = "busy.report"
    component: str
    """The component, as the reporter knows it: a tournament candidate's slot is ``{component}~{strategy}``,
    its team ``{component}.{strategy}``."""
    source: str
    """``sandbox``: exec and install in the slot's sandbox; ``gate``: the merge gate's commands for the
    component's merge; ``model``: the LLM calls of the slot's agents."""
    slot: str = ""
    """The slot the work was for (empty when the reporter does not know it)."""
    intervals: list[tuple[float, float]]
    """``(start, end)`` in seconds since the epoch (the reporter's clock), sorted and disjoint."""
    seconds: float
    """Their total length."""


KnownEvent = Annotated[
    BuildPhase
    | BuildResumed
    | CoordinatorResumed
    | IntentLocked
    | FleetReady
    | ComponentPhase
    | CheckpointTaken
    | IntentSatisfaction
    | BuildDone
    | BuildPaused
    | BuildCancelled
    | BuildErrorEvent
    | SlotAcquired
    | SlotRespawned
    | SlotRestored
    | SlotSeeded
    | ComponentFed
    | InterfaceChanged
    | SlotBuilding
    | SlotBuilt
    | SlotBlocked
    | SlotVerified
    | JudgeDecision
    | TournamentDecision
    | TournamentEliminated
    | MergeQueued
    | MergeAccepted
    | MergeRejected
    | PreviewRefreshed
    | TeamStarted
    | TeamCheck
    | TeamReadyToMerge
    | TeamFinished
    | TeamProgress
    | TaskStarted
    | TaskDone
    | AgentStepEvent
    | TaskRecovered
    | TaskEscalated
    | TaskBlocked
    | BudgetRaised
    | BudgetWarning
    | BudgetExhausted
    | SwarmReportEvent
    | VerifierReportEvent
    | BusyReport,
    Field(discriminator="kind"),
]
"""Every kind this version emits, tagged on ``kind``."""

KNOWN_EVENT_ADAPTER: TypeAdapter[KnownEvent] = TypeAdapter(KnownEvent)

EVENT_TYPES: dict[str, type[EventPayload]] = {
    model.model_fields["kind"].default: model for model in get_args(get_args(KnownEvent)[0])
}
"""Kind → its payload model, for every kind of :data:`KnownEvent`."""


def parse_event(kind: str, data: Mapping[str, Any]) -> EventPayload:
    """The typed payload of an event-log entry; an :class:`UnknownEvent` for a kind (or data) not known here."""
    if kind in EVENT_TYPES and "kind" not in data:
        try:
            return KNOWN_EVENT_ADAPTER.validate_python({**data, "kind": kind})
        except ValidationError as exc:
            logger.warning(
                "event %s does not fit its model (%d errors); kept as an UnknownEvent", kind, exc.error_count()
            )
    return UnknownEvent(kind=kind, raw=dict(data))
