"""One component's pipeline in a build run: sandbox, team, verification, tournament, merge, preview.

:class:`ComponentSteps` runs the pipelines of a :class:`~coordinator.build.run.BuildRun` (which owns
the phases, checkpoints and endings). It is composed from what it needs, not from the run: the
run's shared :class:`~coordinator.build.state.BuildState` (contract, plan, slot records, merges),
the run's ports and settings, and a :class:`RunHost` — the four calls through which a pipeline
drives the run (events, its component's phase, step boundaries). Each step persists the slot's
status before it returns (the statuses are listed in ``coordinator/build/state.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from coordinator.build.ports import (
    BuildCancelledError,
    BuildPausedError,
    BuildPorts,
    BuildSettings,
    FixReason,
    MergeOutcome,
    SlotVerification,
    TeamOutcome,
)
from coordinator.build.state import LIVE, BuildState
from coordinator.bus.events import (
    BuildErrorEvent,
    ComponentFed,
    InterfaceChanged,
    MergeRejected,
    PreviewRefreshed,
    RunEvent,
    SlotAcquired,
    SlotBlocked,
    SlotBuilding,
    SlotBuilt,
    SlotRespawned,
    SlotRestored,
    SlotSeeded,
    SlotVerified,
    TournamentDecision,
    TournamentEliminated,
)
from coordinator.bus.models import MergeRequest
from coordinator.contracts import Interface
from coordinator.judge import Evidence
from coordinator.plan import SlotPlan
from coordinator.tournament import Tournament
from sandbox_agents.errors import BuildError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RunHost(Protocol):
    """How a component's pipeline drives the build run it belongs to (:class:`BuildRun` is one)."""

    async def emit(self, event: RunEvent) -> None:
        """Append an event to the build's log (never raises for a lost event)."""
        ...

    async def step(self) -> None:
        """A step boundary: raise BuildCancelledError on a cancel, then BuildPausedError at 100 % of the budget."""
        ...

    def check_control(self) -> None:
        """Raise :class:`BuildCancelledError` when the build was cancelled."""
        ...

    async def set_component_phase(self, component: str, phase: str) -> None:
        """Move one component's pipeline to ``phase``; the build's phase follows the least advanced one."""
        ...


async def gather(*aws: Coroutine[Any, Any, T]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest and raise that failure (not a group)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(a) for a in aws]
    except BaseExceptionGroup as group_error:
        raise _first(group_error) from None
    return [t.result() for t in tasks]


def _first(group: BaseExceptionGroup) -> BaseException:
    """The exception to act on from a group: a cancel beats a pause beats anything else."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        else:
            leaves.append(e)

    walk(group)
    for kind in (BuildCancelledError, BuildPausedError):
        for e in leaves:
            if isinstance(e, kind):
                return e
    return leaves[0]


class ComponentSteps:
    """The per-component steps of a build run.

    Args:
        state: The run's contract, plan, slot records and merges (shared with the run).
        ports: The run's ports.
        settings: Merge attempts, respawns, the backend that prices compute.
        host: The run, as the pipeline drives it.
    """

    def __init__(self, state: BuildState, ports: BuildPorts, settings: BuildSettings, host: RunHost) -> None:
        self.state = state
        self.ports = ports
        self.settings = settings
        self._fed: dict[str, dict[str, bytes]] = {}
        """What each provider last fed its dependents (parallel builds), to feed again only on a change."""
        self.host = host
        self._metered: dict[str, float] = {}
        self._spent: dict[str, float] = {}
        self._respawns: dict[str, int] = {}
        self._merge_waiters: dict[int, asyncio.Future[MergeOutcome]] = {}
        """Request id → the pipeline waiting for the consumer's outcome of that merge request."""
        self._merge_outcomes: dict[int, MergeOutcome] = {}
        """Outcomes the consumer reached, by request id (one may come before its pipeline asks)."""
        self._interfaces: dict[str, tuple[int, Interface]] = {}
        """Provider → (version, interface) of the last change its agents published in this run."""
        self._built_against: dict[str, dict[str, int]] = {}
        """Slot → the interface versions known when its last team run started."""
        self._blocked: dict[str, dict[str, str]] = {}
        """Slot → task → why it is blocked, from the slot's last team run (the build's error names them)."""
        self._fixes: dict[str, int] = {}
        """Slot → fix runs given to its team (a rejected merge's, an interface change's): the fix task's number."""
        self._checked: dict[str, tuple[str | None, bool]] = {}
        """Slot → (its sandbox, the verdict) of the component check its team ran last, while nothing has
        written to that sandbox since: verification takes that verdict instead of running the check again."""

    # --- the pipeline ---------------------------------------------------------------------

    async def component(self, name: str) -> None:
        """Build, verify, judge, merge and preview one component.

        In parallel (the default) its team starts at once: its checks wait in the team until every
        provider has fed it (:meth:`feed_dependents`), and only its merge waits for their merges.
        Sequential (``parallel: false``): nothing starts before its dependencies merged.
        """
        state, host = self.state, self.host
        assert state.plan is not None and state.locked is not None
        if state.merged[name].is_set():
            return
        depends_on = state.locked.contract.component(name).depends_on
        if not self.settings.parallel:
            for dep in depends_on:
                await state.merged[dep].wait()
        elif merged := [dep for dep in depends_on if state.merged[dep].is_set()]:
            await self.feed_from_main(name, merged)
        host.check_control()
        slots = state.plan.slots_of(name)
        status = {s.slot_id: state.slots[s.slot_id].status for s in slots}
        winner = next((s for s in slots if status[s.slot_id] in ("won", "merging", "merged")), None)
        if winner is None:
            await host.set_component_phase(name, "build")
            live = [s for s in slots if status[s.slot_id] in LIVE]
            await gather(*(self.build_slot(s) for s in live))
            built = [s for s in live if state.slots[s.slot_id].status == "built"]
            if not built:
                raise BuildError(f"component {name}: no candidate could be built{self._why_blocked(live)}")
            await host.set_component_phase(name, "verify")
            results = await gather(*(self.verify_slot(s) for s in built))  # candidates verified side by side
            verdicts = dict(zip([s.slot_id for s in built], results, strict=True))
            if len(slots) > 1:
                await host.set_component_phase(name, "judge")
                winner = await self.tournament(name, slots, built, verdicts)
            else:
                winner = built[0]
        if self.settings.parallel:
            await self.feed_dependents(name, winner)
            for dep in depends_on:  # merges keep dependency order
                await state.merged[dep].wait()
            host.check_control()
            await self.adapt_to_interface_changes(name, winner)
        await host.set_component_phase(name, "merge")
        await self.merge(winner)
        if self.settings.parallel:  # a rejected merge's fix changed what was fed: dependents get the merged code
            await self.feed_dependents(name, winner, only_if_changed=True)
        await host.set_component_phase(name, "preview")
        await self.refresh_preview(name)
        await self.release(winner.slot_id)
        await host.set_component_phase(name, "done")
        state.merged[name].set()

    async def feed_from_main(self, name: str, providers: list[str]) -> None:
        """On a resume, feed ``name`` from main the providers that merged before: their code is there.

        (A sandbox restored from a checkpoint older than the provider's feed lacks it otherwise.)
        """
        state = self.state
        assert state.plan is not None
        slots = [s for s in state.plan.slots_of(name) if state.slots[s.slot_id].status in LIVE]
        files = await self.ports.gate.tree()
        for slot in slots:
            await self.ensure_sandbox(slot)
            await self._seed(slot.slot_id, files)
        for provider in providers:
            event = ComponentFed(component=name, provider=provider, slots=[s.slot_id for s in slots], files=len(files))
            await self.host.emit(event)

    async def feed_dependents(self, name: str, winner: SlotPlan, *, only_if_changed: bool = False) -> None:
        """Copy the chosen code of ``name`` into the live sandboxes of every component that depends on it.

        What is copied is what its merge will carry (the workspace without junk), which holds its
        own providers' code too. Each dependent is told on the event log (``component.fed``); its
        team's checks run once every provider has fed it. Idempotent: a resumed run feeds again.

        Args:
            only_if_changed: Feed only if the code differs from what this run fed before (after a
                merge whose rejection sent the team back: a dependent must not merge stale copies).
        """
        state, host = self.state, self.host
        assert state.plan is not None and state.locked is not None
        dependents = [c.name for c in state.locked.contract.components if name in c.depends_on]
        if not dependents:
            return
        await self.note_interface_change(name, dependents)
        files = await self.ports.fleet.tree(winner.slot_id)
        if only_if_changed and self._fed.get(name) in (None, files):
            return
        self._fed[name] = files
        for dependent in dependents:
            slots = [s.slot_id for s in state.plan.slots_of(dependent) if state.slots[s.slot_id].status in LIVE]
            for slot_id in slots:
                await self.ensure_sandbox(state.plan.slot(slot_id))
                await self._seed(slot_id, files)
            await host.emit(ComponentFed(component=dependent, provider=name, slots=slots, files=len(files)))

    # --- interfaces changed mid-build -----------------------------------------------------------

    async def note_interface_change(self, provider: str, dependents: list[str]) -> None:
        """Take up a new interface ``provider``'s agents published (``interface.{provider}``), if any.

        Only the provider's own agents may change its interface, and only to a valid ``Interface``;
        anything else is reported (``build.error``, not fatal) and ignored. A change is announced
        (``interface.changed``) and its dependents built before it adapt before they merge
        (:meth:`adapt_to_interface_changes`).
        """
        state, host = self.state, self.host
        assert state.locked is not None
        published = [p for p in await self.ports.interfaces.published() if p.component == provider]
        if not published:
            return
        item = published[-1]
        if item.by_component != provider:
            error = f"interface.{provider} published by {item.by or 'someone'} outside {provider}'s team: ignored"
            await host.emit(BuildErrorEvent(component=provider, error=error, fatal=False))
            return
        try:
            interface = Interface.model_validate_json(item.text)
        except ValidationError as exc:
            error = f"interface.{provider} is not a valid interface, ignored: {exc}"[:2000]
            await host.emit(BuildErrorEvent(component=provider, error=error, fatal=False))
            return
        version, current = self._interfaces.get(provider, (0, state.locked.contract.component(provider).provides))
        if interface == current:
            return
        self._interfaces[provider] = (version + 1, interface)
        users = [d for d in dependents if provider in state.locked.contract.component(d).uses]
        await host.emit(
            InterfaceChanged(
                component=provider,
                interface=interface.model_dump(mode="json"),
                version=version + 1,
                by=item.by,
                dependents=users,
            )
        )

    async def adapt_to_interface_changes(self, name: str, winner: SlotPlan) -> None:
        """Send ``name``'s chosen candidate back to its team if an interface it uses changed after it was built.

        The team gets one fix task with the new interfaces; its check (the component's) runs again
        against the providers' code fed since, then the candidate is verified again.
        """
        state, host = self.state, self.host
        assert state.locked is not None
        seen = self._built_against.get(winner.slot_id, {})
        changed = [
            (p, version, interface)
            for p in state.locked.contract.component(name).uses
            if p in self._interfaces
            for version, interface in [self._interfaces[p]]
            if version > seen.get(p, 0)
        ]
        if not changed:
            return
        feedback = "\n\n".join(
            f"The interface of {p}, which {name} uses, changed while {name} was being built (version {v}). "
            f"Build against it now:\n{interface.describe()}"
            for p, v, interface in changed
        )
        feedback += "\n\nUpdate the code that uses it, then make sure the component's check passes."
        await host.set_component_phase(name, "build")
        if not await self.build_slot(winner, attempt=self._next_fix(winner), feedback=feedback, reason="interface"):
            raise BuildError(f"component {name}: the team could not adapt to its providers' new interfaces")
        await self.verify_slot(winner)
        await host.set_component_phase(name, "merge")

    def _next_fix(self, slot: SlotPlan) -> int:
        """The number of the slot's next fix run (``merge-fix-N``/``interface-fix-N`` share the count)."""
        self._fixes[slot.slot_id] = self._fixes.get(slot.slot_id, 0) + 1
        return self._fixes[slot.slot_id]

    # --- sandboxes --------------------------------------------------------------------------

    async def ensure_sandbox(self, slot: SlotPlan) -> None:
        """Give the slot a running sandbox: reconnect, respawn from its checkpoint, or acquire one."""
        record = self.state.slots[slot.slot_id]
        if record.sandbox_id and await self.ports.fleet.alive(slot.slot_id):
            return
        await self.respawn(slot, counted=bool(record.sandbox_id))

    async def respawn(self, slot: SlotPlan, *, counted: bool = True) -> None:
        """Restore the slot's sandbox from its newest checkpoint (or start it afresh without one)."""
        state = self.state
        if counted:
            n = self._respawns[slot.slot_id] = self._respawns.get(slot.slot_id, 0) + 1
            if n > self.settings.max_respawns:
                raise BuildError(f"slot {slot.slot_id}: sandbox died {n} times")
        checkpoint = state.store.latest_checkpoint(state.build_id, slot.slot_id)
        record = state.slots[slot.slot_id]
        if checkpoint is not None:
            sandbox_id = await self.ports.fleet.restore(slot, checkpoint.snapshot)
            status = record.status if record.status != "pending" else "ready"
            state.save_slot(slot.slot_id, sandbox_id=sandbox_id, status=status, proxy_name=slot.slot_id)
            restored = SlotRespawned if counted or record.sandbox_id else SlotRestored
            await self.host.emit(restored(slot=slot.slot_id, checkpoint=checkpoint.id, sandbox_id=sandbox_id))
        else:
            if record.sandbox_id:
                await self.ports.fleet.release(slot.slot_id)
            sandbox_id = await self.ports.fleet.acquire(slot)
            status = "ready" if record.status in ("pending", "ready", "building") else record.status
            state.save_slot(slot.slot_id, sandbox_id=sandbox_id, status=status, proxy_name=slot.slot_id)
            backend = self.settings.backend_of(slot.slot_id)
            acquired = SlotAcquired(slot=slot.slot_id, sandbox_id=sandbox_id, respawn=counted, backend=backend)
            await self.host.emit(acquired)
        self._metered[slot.slot_id] = 0.0

    async def with_respawn(self, slot: SlotPlan, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` on the slot; if its sandbox turns out dead, respawn it and run ``op`` again."""
        while True:
            error: Exception | None = None
            try:
                result = await op()
            except Exception as exc:  # noqa: BLE001 - a failure on a live sandbox is raised; on a dead one, retried
                if await self.ports.fleet.alive(slot.slot_id):
                    raise
                error = exc
            else:
                if await self.ports.fleet.alive(slot.slot_id):
                    return result
            logger.warning("build %s: sandbox of %s is dead (%r); respawning", self.state.build_id, slot.slot_id, error)
            await self.respawn(slot)

    async def release(self, slot_id: str) -> None:
        await self.meter(slot_id)
        try:
            await self.ports.teams.stop(slot_id)
        except Exception:  # noqa: BLE001 - the team may already be gone
            logger.debug("stopping team %s failed", slot_id, exc_info=True)
        await self.ports.fleet.release(slot_id)
        self.state.save_slot(slot_id, sandbox_id=None)

    # --- team, verification ------------------------------------------------------------------

    async def build_slot(
        self, slot: SlotPlan, *, attempt: int = 0, feedback: str | None = None, reason: FixReason = "merge"
    ) -> bool:
        """Run the slot's team (seeding a dependent's fresh sandbox with main first); True when built."""
        state, host = self.state, self.host
        assert state.locked is not None
        if feedback is None and state.slots[slot.slot_id].status in ("built", "won", "merging", "merged"):
            return True
        await self.ensure_sandbox(slot)
        dependent = bool(state.locked.contract.component(slot.component).depends_on)
        self._built_against[slot.slot_id] = {p: version for p, (version, _) in self._interfaces.items()}

        async def team() -> TeamOutcome:
            if state.slots[slot.slot_id].status == "ready" and dependent:
                files = await self.ports.gate.tree()
                await self._seed(slot.slot_id, files)
                await host.emit(SlotSeeded(slot=slot.slot_id, files=len(files)))
            state.save_slot(slot.slot_id, status="building")
            await host.emit(SlotBuilding(slot=slot.slot_id, attempt=attempt))
            return await self.ports.teams.run(slot, attempt=attempt, feedback=feedback, reason=reason)

        outcome = await self.with_respawn(slot, team)
        for role, model, usage in outcome.usage:
            await self.ports.ledger.record_llm(role, model, usage)
        await self.meter(slot.slot_id)
        report = outcome.report
        self._blocked[slot.slot_id] = dict(report.blocked)
        if report.check is not None:
            self._checked[slot.slot_id] = (state.slots[slot.slot_id].sandbox_id, report.check.ok)
        agents = sorted({*state.slots[slot.slot_id].agents, *(a.agent for a in report.attempts)})
        state.save_slot(slot.slot_id, status="built" if report.ready else "blocked", agents=agents)
        ended = SlotBuilt if report.ready else SlotBlocked
        await host.emit(ended(slot=slot.slot_id, done=report.done, blocked=report.blocked, attempt=attempt))
        await host.step()
        return report.ready

    def _why_blocked(self, slots: list[SlotPlan], cap: int = 600) -> str:
        """Why the slots' last team runs ended blocked: each blocked task's reason, its root cause first."""
        reasons = [
            f"{slot.slot_id}: task {task} blocked: {why[:cap]}"
            for slot in slots
            for task, why in self._blocked.get(slot.slot_id, {}).items()
        ]
        return ("\n" + "\n".join(reasons[:4])) if reasons else ""

    async def _seed(self, slot_id: str, files: dict[str, bytes]) -> None:
        """Write ``files`` into the slot's sandbox: its team's last check verdict no longer holds."""
        self._checked.pop(slot_id, None)
        await self.ports.fleet.seed(slot_id, files)

    def _team_check(self, slot_id: str) -> bool | None:
        """The component check's verdict from the slot's last team run, if its sandbox is still the one
        that ran it and nothing was written there since (a respawn or a feed means run it again)."""
        known = self._checked.get(slot_id)
        if known is None or known[0] != self.state.slots[slot_id].sandbox_id:
            return None
        return known[1]

    async def verify_slot(self, slot: SlotPlan) -> SlotVerification:
        verdict = await self.with_respawn(
            slot, lambda: self.ports.verify.verify(slot, check=self._team_check(slot.slot_id))
        )
        await self.meter(slot.slot_id)
        self.state.save_slot(slot.slot_id, swarm_score=verdict.score)
        await self.host.emit(SlotVerified(slot=slot.slot_id, **verdict.model_dump(mode="json")))
        await self.host.step()
        return verdict

    # --- tournament --------------------------------------------------------------------------

    async def tournament(
        self, name: str, slots: list[SlotPlan], built: list[SlotPlan], verdicts: dict[str, SlotVerification]
    ) -> SlotPlan:
        """Judge the built candidates on evidence; snapshot, then terminate the losers."""
        state, host = self.state, self.host
        assert state.locked is not None and state.plan is not None
        locked = state.locked

        async def evidence_of(slot: SlotPlan) -> Evidence:
            passed, total = await self.ports.satisfaction.check_slot(locked, slot)
            verdict = verdicts[slot.slot_id]
            return Evidence(
                candidate=slot.slot_id,
                swarm_score=verdict.score,
                criteria_passed=passed,
                criteria_total=total,
                tests_passed=verdict.tests_passed,
                tests_total=verdict.tests_total,
                build_size_bytes=await self.ports.fleet.size_bytes(slot.slot_id),
                budget_spent_usd=round(self._spent.get(slot.slot_id, 0.0), 6),
            )

        evidence = list(await gather(*(evidence_of(s) for s in built)))  # each in its own sandbox, side by side
        decision = await self.ports.judge.decide(evidence, name)
        for charge in decision.usage:
            await self.ports.ledger.record_llm(charge.role, charge.model, charge.usage)
        await host.emit(TournamentDecision(**{**decision.to_event().data, "component": name}))
        threshold = state.plan.halving_thresholds.get(name, 0.1)
        tournament = Tournament(component=name, alive=[s.slot_id for s in built], threshold=threshold)
        tournament.finish(decision.winner, decision.scores())
        losers = [s for s in slots if s.slot_id != decision.winner]
        for slot in losers:
            record = state.slots[slot.slot_id]
            if record.sandbox_id and slot.slot_id in tournament.pending_termination():
                ref = await self.ports.fleet.snapshot(slot.slot_id)
                state.store.add_checkpoint(state.build_id, record.sandbox_id, slot.slot_id, ref, phase="tournament")
                tournament.record_snapshot(slot.slot_id, ref.id)
            await self.release(slot.slot_id)
            state.save_slot(slot.slot_id, status="lost")
            await host.emit(TournamentEliminated(component=name, slot=slot.slot_id))
        winner = state.plan.slot(decision.winner)
        state.save_slot(winner.slot_id, status="won")
        await host.step()
        return winner

    # --- merge and preview ---------------------------------------------------------------------

    async def merge(self, slot: SlotPlan) -> None:
        """Send the slot's merge request on the bus and act on the outcome.

        The run's consumer (:meth:`handle_merge_request`) admits it through the gate. A rejection
        goes back to the team with the findings, then the fix is requested again. A request still
        pending from before a restart is sent again under its own id (the consumer merges it once).
        """
        state, host, store = self.state, self.host, self.state.store
        name = slot.component
        attempts = self.settings.max_merge_attempts
        for attempt in range(attempts):
            if state.slots[slot.slot_id].status == "merged":  # the consumer finished a request from before a restart
                return
            pending = next((p for p in store.pending_merges(state.build_id) if p.component == name), None)
            if pending is None:
                await self.ensure_sandbox(slot)
                record = state.slots[slot.slot_id]
                ref = {"slot": slot.slot_id, "sandbox_id": record.sandbox_id, "attempt": attempt}
                pending = store.add_pending_merge(state.build_id, name, ref)
                state.save_slot(slot.slot_id, status="merging")
            request = MergeRequest(
                component=name,
                slot=slot.slot_id,
                sandbox_id=state.slots[slot.slot_id].sandbox_id or "",
                request_id=pending.id,
                attempt=int(pending.ref.get("attempt", attempt)),
            )
            outcome = await self._request_merge(request)
            await host.step()
            if outcome.accepted:
                return
            if attempt + 1 >= attempts:
                break
            await host.set_component_phase(name, "build")
            feedback = "\n".join([outcome.reason, *outcome.findings]).strip() or "the merge gate rejected the merge"
            if not await self.build_slot(slot, attempt=self._next_fix(slot), feedback=feedback):
                raise BuildError(f"component {name}: the team could not fix the rejected merge")
            await self.verify_slot(slot)
            await host.set_component_phase(name, "merge")
        raise BuildError(f"component {name}: merge rejected {attempts} times")

    async def _request_merge(self, request: MergeRequest) -> MergeOutcome:
        """Publish ``request`` and wait for the consumer's outcome of it (or of an earlier copy)."""
        if (done := self._merge_outcomes.get(request.request_id)) is not None:
            return done
        waiter = self._merge_waiters.setdefault(request.request_id, asyncio.get_running_loop().create_future())
        await self.ports.merges.send(request)
        return await waiter

    async def handle_merge_request(self, request: MergeRequest) -> None:
        """The consumer of the ``merge`` channel: admit one request through the gate, exactly once.

        The store's pending-merge row is the request's fate: a copy of a request already resolved is
        skipped; a pending one whose component the gate already merged (the coordinator died after
        the gate accepted it) is recorded as merged without a second admission. The outcome and its
        event are persisted before the request is acknowledged (this handler returning), so a crash
        in between only replays it into the first of those two cases.
        """
        state, store = self.state, self.state.store
        assert state.plan is not None
        pending = next((p for p in store.pending_merges(state.build_id) if p.id == request.request_id), None)
        if pending is None or request.slot not in state.slots:  # resolved already (a copy), or not of this build
            logger.info("build %s: merge request %d is resolved already", state.build_id, request.request_id)
            return
        slot = state.plan.slot(request.slot)
        try:
            if request.component in await self.ports.gate.merged():
                outcome = MergeOutcome(accepted=True, reason="merged before the coordinator restarted")
                recovered = True
            else:
                outcome = await self.with_respawn(
                    slot, lambda: self.ports.gate.admit(slot, state.slots[slot.slot_id].sandbox_id or "")
                )
                recovered = False
            await self._record_merge(request, outcome, recovered=recovered)
        except Exception as exc:  # noqa: BLE001 - the waiting pipeline raises it (the build fails as before)
            self._settle_merge(request.request_id, exc)
            return
        except BaseException as exc:  # cancelled (the request stays unacknowledged) or the process is going
            self._settle_merge(request.request_id, exc)
            raise
        self._settle_merge(request.request_id, outcome)

    async def _record_merge(self, request: MergeRequest, outcome: MergeOutcome, *, recovered: bool) -> None:
        """Persist the gate's verdict (status lists it).

        The gate announces its verdicts itself (``merge.accepted`` with the commit and the files,
        ``merge.rejected`` with the findings), also those given while this coordinator was down: no
        second announcement here, unless the gate failed before it could give one.
        """
        state, store = self.state, self.state.store
        name = request.component
        if outcome.accepted:
            store.resolve_pending_merge(request.request_id, "merged", commit=outcome.commit, reason=outcome.reason)
            state.save_slot(request.slot, status="merged")
            if recovered:
                logger.info("build %s: %s was merged before the coordinator restarted", state.build_id, name)
            return
        store.resolve_pending_merge(request.request_id, "rejected", reason=outcome.reason)
        state.save_slot(request.slot, status="built")
        if not outcome.announced:  # the gate could not answer: nobody told the log yet
            await self.host.emit(
                MergeRejected(component=name, slot=request.slot, reason=outcome.reason, findings=outcome.findings)
            )

    def _settle_merge(self, request_id: int, result: MergeOutcome | BaseException) -> None:
        waiter = self._merge_waiters.pop(request_id, None)
        if isinstance(result, MergeOutcome):
            self._merge_outcomes[request_id] = result
        if waiter is None or waiter.done():
            return
        if isinstance(result, MergeOutcome):
            waiter.set_result(result)
        elif isinstance(result, asyncio.CancelledError):
            waiter.cancel()
        else:
            waiter.set_exception(result)

    async def refresh_preview(self, name: str) -> None:
        state = self.state
        try:
            url = await self.ports.preview.refresh()
        except Exception as exc:  # noqa: BLE001 - a broken preview is reported, the build goes on
            await self.host.emit(BuildErrorEvent(component=name, error=f"preview: {exc!r}"[:2000], fatal=False))
            return
        state.preview_url = url or state.preview_url
        state.store.update_session(state.build_id, preview_url=state.preview_url)  # status reads it from the store
        await self.host.emit(PreviewRefreshed(component=name, url=state.preview_url))

    # --- budget ----------------------------------------------------------------------------------

    async def meter(self, slot_id: str) -> None:
        """Charge the compute the slot's sandbox used since the last charge."""
        try:
            seconds = await self.ports.fleet.compute_seconds(slot_id)
        except Exception:  # noqa: BLE001 - metering is best effort; a dead sandbox has no meter
            logger.debug("build %s: no compute meter for %s", self.state.build_id, slot_id, exc_info=True)
            return
        delta = seconds - self._metered.get(slot_id, 0.0)
        if delta <= 0:
            return
        self._metered[slot_id] = seconds
        backend = self.settings.backend_of(slot_id)
        size: dict[str, float] = {}
        if backend == "modal" and self.state.plan is not None:
            # Modal's meter is wall time, billed for what the sandbox reserved; a local one is CPU time used.
            spec = self.state.plan.slot(slot_id).spec
            size = {"cpu": spec.cpu, "memory_gib": spec.memory_mb / 1024}
        entry = await self.ports.ledger.record_compute(slot_id, delta, backend, **size)
        self._spent[slot_id] = self._spent.get(slot_id, 0.0) + entry.estimated_cost
