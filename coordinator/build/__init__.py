"""One build as a domain: the phase machine and the ports it reaches the world through (floor 2, no Ray).

:class:`BuildRun` (:mod:`.run`) takes a build from intent to done — intent lock, fleet, build,
verify, judge, merge, preview, satisfy — persisting after every step so a restarted run
carries on. It touches sandboxes, teams, the swarm, the judge, the gate and the preview only
through the protocols of :mod:`.ports`, handed to it in :class:`BuildPorts` by the
BuildCoordinator actor (``actors/build/``) or by a unit test's fakes. Each component's pipeline
is in :mod:`.steps`, sharing the run's :class:`BuildState` (:mod:`.state`). :mod:`.adapters` holds the
port implementations that need no Ray (bus events, the merge channel, planner, swarm over a sandbox,
satisfaction, judge) and :mod:`.notify` the webhook notifier of ghost mode. See
docs/coordinator.md.
"""

from coordinator.build.adapters import (
    BusEvents,
    BusInterfaces,
    BusMergeRequests,
    EvidenceJudge,
    ProviderPlanner,
    SandboxSatisfaction,
    SessionNotifier,
    SwarmVerify,
)
from coordinator.build.notify import DeliveryResult, Notification, WebhookConfig, WebhookNotifier
from coordinator.build.ports import (
    CANCEL_REQUESTED,
    PAUSED_BUDGET,
    PHASES,
    BuildCancelledError,
    BuildPausedError,
    BuildPorts,
    BuildSettings,
    EventsPort,
    FixReason,
    FleetPort,
    GatePort,
    InterfacesPort,
    JudgePort,
    MergeOutcome,
    MergeRequestsPort,
    NotifierPort,
    PlannerPort,
    PreviewPort,
    PublishedInterface,
    SatisfactionPort,
    SlotVerification,
    TeamOutcome,
    TeamsPort,
    VerifyPort,
)
from coordinator.build.run import BuildRun
from coordinator.build.state import BuildState

__all__ = [
    "CANCEL_REQUESTED",
    "PAUSED_BUDGET",
    "PHASES",
    "BuildCancelledError",
    "BuildPausedError",
    "BuildPorts",
    "BuildRun",
    "BuildSettings",
    "BuildState",
    "BusEvents",
    "BusInterfaces",
    "BusMergeRequests",
    "DeliveryResult",
    "EventsPort",
    "EvidenceJudge",
    "FixReason",
    "FleetPort",
    "GatePort",
    "InterfacesPort",
    "JudgePort",
    "MergeOutcome",
    "MergeRequestsPort",
    "Notification",
    "NotifierPort",
    "PlannerPort",
    "PreviewPort",
    "PublishedInterface",
    "ProviderPlanner",
    "SandboxSatisfaction",
    "SatisfactionPort",
    "SessionNotifier",
    "SlotVerification",
    "SwarmVerify",
    "TeamOutcome",
    "TeamsPort",
    "VerifyPort",
    "WebhookConfig",
    "WebhookNotifier",
]
