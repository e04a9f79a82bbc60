"""Concrete build ports that need no Ray: events, merge requests and progress on the bus, webhooks,
the planner, the swarm over a slot's sandbox, satisfaction in main and in a candidate, and the judge.

The BuildCoordinator actor builds these around sandboxes it reaches through SandboxProxy
handles (:class:`~sandbox_agents.proxy_sandbox.ProxySandbox`), so they work on any
:class:`~sandbox_agents.backends.base.Sandbox` and are usable (and testable) without Ray.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from coordinator.build.notify import WebhookNotifier
from coordinator.build.ports import MergeHandler, ProgressHandler, PublishedInterface, SlotVerification
from coordinator.bus.context_bus import ContextBus
from coordinator.bus.events import EventPayload
from coordinator.bus.models import Channel, Envelope, Event, MergeRequest, Progress
from coordinator.bus.subscription import Subscription
from coordinator.contracts import Command, Component, IntentContract
from coordinator.intent import LockedContract, SandboxCriterionRunner, SatisfactionReport, check_satisfaction
from coordinator.judge import Decision, Evidence, judge
from coordinator.plan import SlotPlan
from coordinator.store.store import Store
from sandbox_agents.backends.base import Sandbox
from sandbox_agents.errors import SandboxTimeoutError
from sandbox_agents.llm.base import LLMProvider

logger = logging.getLogger(__name__)

SandboxOf = Callable[[str], Awaitable[Sandbox]]
"""Slot id → the slot's sandbox (reconnecting through its proxy)."""

_TARGET_KIND = {"frontend": "web", "backend": "api"}


def command_text(command: Command) -> str:
    return command if isinstance(command, str) else shlex.join(command)


class BusEvents:
    """Build events onto the bus's event log (what SSE streams); returns the stream id."""

    def __init__(self, bus: ContextBus, build_id: str) -> None:
        self.bus = bus
        self.build_id = build_id

    async def emit(self, event: EventPayload) -> str | None:
        return await self.bus.publish(self.build_id, Event.of(event))


MERGE_GROUP = "merge-gate"
"""The one consumer group of a build's ``merge`` channel."""
PROGRESS_GROUP = "progress-log"
"""The one consumer group of a build's ``progress`` channel (the run, relaying it into the event log)."""
READY_TIMEOUT_S = 60.0
"""How long a (resumed) coordinator waits for Redis to serve its consumers before failing."""


class _CoordinatorConsumer:
    """One channel of a build, consumed by the build's coordinator (one consumer).

    Every incarnation of a build's coordinator consumes under the same group and consumer name,
    so the entries a killed one had been handed but not acknowledged are replayed to the next one
    first (the subscription's pending-entry recovery), then new ones are read.
    """

    channel: Channel
    group: str

    def __init__(self, bus: ContextBus, build_id: str) -> None:
        self.bus = bus
        self.build_id = build_id
        self._subscription: Subscription | None = None

    async def _consume(self, on_entry: Callable[[Envelope], Awaitable[None]]) -> None:
        await self.stop()
        self._subscription = await self.bus.subscribe(
            self.build_id, [self.channel], group=self.group, consumer="coordinator", handler=on_entry
        ).start(ready_timeout=READY_TIMEOUT_S)

    async def stop(self) -> None:
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.stop()


class BusMergeRequests(_CoordinatorConsumer):
    """The ``merge`` channel on the bus, consumed by the build's coordinator (group ``merge-gate``)."""

    channel: Channel = "merge"
    group = MERGE_GROUP

    async def send(self, request: MergeRequest) -> None:
        await self.bus.publish(self.build_id, request)

    async def start(self, handler: MergeHandler) -> None:
        async def on_entry(envelope: Envelope) -> None:
            if isinstance(envelope.message, MergeRequest):
                await handler(envelope.message)

        await self._consume(on_entry)


class BusProgress(_CoordinatorConsumer):
    """The ``progress`` channel on the bus, relayed by the build's run into its event log (group ``progress-log``).

    A line is acknowledged once the handler returned, i.e. once its ``team.progress`` event is in the
    log; a handler that raises leaves it to the subscription's retries (then the dead letters). So
    lines are relayed at least once: one a killed coordinator had relayed but not yet acknowledged is
    relayed again by the next incarnation (a duplicate line, never a lost one). A malformed entry, or
    one past :class:`~coordinator.bus.models.Progress`'s bounds, never reaches the handler: the
    subscription dead-letters it and logs an error. An entry of another kind is dropped with a warning.
    """

    channel: Channel = "progress"
    group = PROGRESS_GROUP

    async def start(self, handler: ProgressHandler) -> None:
        async def on_entry(envelope: Envelope) -> None:
            if isinstance(envelope.message, Progress):
                await handler(envelope.message)
            else:
                logger.warning(
                    "build %s: dropped %s entry %s on the progress channel",
                    self.build_id,
                    envelope.message.type,
                    envelope.id,
                )

        await self._consume(on_entry)


INTERFACE_KEY = "interface."
"""Context key prefix of a published interface change: ``interface.{component}``."""


class BusInterfaces:
    """Interface changes as the build's agents published them: ``interface.{component}`` decisions
    in the unified context (the latest per component).

    Args:
        component_of: The component whose team a publisher (sender name) belongs to, or None.
    """

    def __init__(self, bus: ContextBus, build_id: str, component_of: Callable[[str], str | None]) -> None:
        self.bus = bus
        self.build_id = build_id
        self.component_of = component_of

    async def published(self) -> list[PublishedInterface]:
        unified = await self.bus.unified_context(self.build_id)
        out = []
        for key, entry in unified.context.items():
            if not key.startswith(INTERFACE_KEY) or entry.kind != "decision":
                continue
            value = entry.value
            text = value.get("message", "") if isinstance(value, dict) else value
            out.append(
                PublishedInterface(
                    component=key[len(INTERFACE_KEY) :],
                    text=text if isinstance(text, str) else json.dumps(text),
                    by=entry.sender,
                    by_component=self.component_of(entry.sender),
                )
            )
        return out


class SessionNotifier:
    """Webhook notifications about a build's end or pause (ghost mode)."""

    def __init__(self, notifier: WebhookNotifier, store: Store, build_id: str) -> None:
        self.notifier = notifier
        self.store = store
        self.build_id = build_id

    async def notify(self, status: str, summary: str, data: dict[str, Any]) -> None:
        await self.notifier.notify_session(self.store.get_session(self.build_id), summary, data)


class ProviderPlanner:
    """Phase 0 from a prompt: one planner turn (``(planner, intent, 0)``) through an LLM provider."""

    def __init__(self, provider: LLMProvider) -> None:
        self.provider = provider

    async def plan(self, prompt: str) -> IntentContract:
        from coordinator.intent import plan_contract

        return await plan_contract(prompt, self.provider)


class EvidenceJudge:
    """The judge on evidence (plus the LLM signal when a provider is given)."""

    def __init__(self, provider: LLMProvider | None = None) -> None:
        self.provider = provider

    async def decide(self, evidence: list[Evidence], component: str) -> Decision:
        return await judge(evidence, self.provider, component=component)


async def run_check(sandbox: Sandbox, command: Command | None, timeout_s: float = 300.0) -> bool | None:
    """Run a check command; None when there is none."""
    if not command:
        return None
    try:
        result = await sandbox.exec(command, timeout=timeout_s)
    except SandboxTimeoutError:
        return False
    return result.exit_code == 0


class SwarmVerify:
    """Phase 3: the verification swarm over a slot's sandbox, plus the component's own check as the tests.

    Args:
        contract: The locked contract (component kinds, dev servers).
        sandbox_of: Reaches a slot's sandbox.
        run_swarm: ``(slot id, VerifyTarget) -> SwarmReport``; the slot's Swarm actor (or an in-process swarm).
    """

    def __init__(self, contract: Callable[[], IntentContract], sandbox_of: SandboxOf, run_swarm: Any) -> None:
        self.contract = contract
        self.sandbox_of = sandbox_of
        self.run_swarm = run_swarm

    async def verify(self, slot: SlotPlan, *, check: bool | None = None) -> SlotVerification:
        from sandbox_agents.verifiers import VerifyTarget

        component = self.contract().component(slot.component)
        sandbox = await self.sandbox_of(slot.slot_id)
        target = VerifyTarget(
            kind=_TARGET_KIND.get(component.kind, "library"),
            dev_command=command_text(component.dev_server.command) if component.dev_server else None,
            dev_port=component.dev_server.port if component.dev_server else None,
            page_path=component.dev_server.ready_path if component.dev_server else "/",
            name=slot.team_name,
        )
        report = await self.run_swarm(slot.slot_id, target)
        tests = check if check is not None else await run_check(sandbox, component.check_command)
        return SlotVerification(
            score=report.score,
            passed=report.passed,
            tests_passed=1 if tests else 0,
            tests_total=0 if tests is None else 1,
            summary=", ".join(f"{r.verifier}={'ok' if r.passed else 'fail'}" for r in report.reports)[:1000],
        )


class SandboxSatisfaction:
    """Phase 6 against main (the gate's main-test sandbox and its dev servers) and criteria in candidates.

    Args:
        main: Reaches the main-test sandbox.
        urls: Component → base URL of its dev server serving main (``""`` the default).
        sandbox_of: Reaches a slot's sandbox (tournament evidence).
        ui_checker: a ``UiChecker`` ``(url, selector, text, *, steps) -> (visible, errors)``; None fails UI criteria.
    """

    def __init__(
        self,
        main: Callable[[], Awaitable[Sandbox]],
        urls: Callable[[], Awaitable[Mapping[str, str]]],
        sandbox_of: SandboxOf,
        ui_checker: Any = None,
    ) -> None:
        self.main = main
        self.urls = urls
        self.sandbox_of = sandbox_of
        self.ui_checker = ui_checker

    async def check_main(self, locked: LockedContract) -> SatisfactionReport:
        bases = dict(await self.urls())
        bases.setdefault("", next(iter(bases.values()), "http://127.0.0.1:9"))
        runner = SandboxCriterionRunner(await self.main(), bases, self.ui_checker)
        return await check_satisfaction(locked, runner)

    async def check_slot(self, locked: LockedContract, slot: SlotPlan) -> tuple[int, int]:
        """Command and file criteria of the slot's component, run in the candidate's own sandbox."""
        criteria = [c for c in locked.contract.criteria_of(slot.component) if c.type in ("command", "file")]
        if not criteria:
            return 0, 0
        sandbox = await self.sandbox_of(slot.slot_id)
        runner = SandboxCriterionRunner(sandbox, "http://127.0.0.1:9")
        sub = locked.contract.model_copy(update={"success_criteria": tuple(criteria)})
        from coordinator.intent import lock

        report = await check_satisfaction(lock(sub), runner)
        return sum(r.passed for r in report.results), len(report.results)


def served(contract: IntentContract) -> list[Component]:
    return [c for c in contract.components if c.dev_server is not None]
