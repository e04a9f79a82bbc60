"""BuildRun: one build's phase machine, as plain Python over ports.

The BuildCoordinator actor owns one :class:`BuildRun` and hands it its ports
(``coordinator/build/ports.py``). A run goes:

0. **intent** — the contract given with the build, or one planner turn from the prompt;
   locked, stored with its hash (a resumed run re-locks the stored contract and refuses drift);
1. **fleet** — ``plan_fleet``; the MergeGate's main sandbox; one sandbox per slot;
2. **build** — every component runs its own pipeline, all at once: its team builds it, its
   checks waiting until each provider's chosen code was fed into its sandbox, and it merges after
   its providers (``parallel: false``: it starts only once its dependencies are merged); meanwhile
   the teams' progress lines (the bus's ``progress`` channel) are relayed into the log as ``team.progress``;
3. **verify** — the verification swarm on each built slot;
4. **judge** — tournaments only: evidence per candidate, the judge's decision; losers are
   snapshotted, then terminated;
5. **merge**/**preview** — the winner's merge request goes out on the bus's ``merge`` channel and
   the run's one consumer admits it through the gate (a rejection goes back to the team with the
   findings, then is requested again); the preview is refreshed after each merge;
6. **satisfy**/**done** — every success criterion is checked against main.

The build's phase (persisted in the session) is the least advanced phase of any component not
yet merged, so it only moves forward. Everything needed to resume is persisted after every
step: the phase, each slot's status and sandbox (``slots``), merges in flight
(``pending_merges``), the last event id (``bus_offsets``) and checkpoints. A restarted run
reads them and carries on: merged components stay merged, a merge request the dead coordinator
had not acknowledged is delivered to the new one and merged once, a dead sandbox is restored
from its newest checkpoint and its team re-run.

Step boundaries (after each team run, verification, decision, merge and phase change) honour a
cancel (also one stored while the coordinator was down) and the budget: at 100 % the run
checkpoints, terminates its sandboxes and pauses; ``run()`` again after a raise resumes it.
Per-component pipeline steps live in ``coordinator/build/steps.py`` (:class:`ComponentSteps`, which
drives the run through the :class:`~coordinator.build.steps.RunHost` calls), and what both share —
contract, plan, slot records, merges — in ``coordinator/build/state.py`` (:class:`BuildState`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from coordinator.budget import Budget, BudgetStatus
from coordinator.build.ports import (
    CANCEL_REQUESTED,
    PAUSED_BUDGET,
    PHASES,
    BuildCancelledError,
    BuildPausedError,
    BuildPorts,
    BuildSettings,
)
from coordinator.build.state import LIVE, BuildState
from coordinator.build.steps import ComponentSteps, gather
from coordinator.bus.events import (
    BuildCancelled,
    BuildDone,
    BuildErrorEvent,
    BuildPaused,
    BuildPhase,
    BuildResumed,
    CheckpointTaken,
    ComponentPhase,
    CoordinatorResumed,
    FleetReady,
    IntentLocked,
    RunEvent,
    TeamProgress,
)
from coordinator.bus.models import Progress
from coordinator.clock import SystemClock
from coordinator.contracts import parse_contract
from coordinator.intent import ContractDriftError, LockedContract, lock
from coordinator.merge.gate import failure_reason
from coordinator.plan import PlanSettings, plan_fleet
from coordinator.store.schema import BuildSession, SessionStatus, Slot
from sandbox_agents.errors import BuildError

__all__ = ["TERMINAL", "BuildPorts", "BuildRun"]

logger = logging.getLogger(__name__)

TERMINAL = frozenset({SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.CANCELLED})


class BuildRun:
    """The phase machine of one build; ``run()`` is restartable from whatever the store holds.

    Args:
        build_id: The session id in the store.
        ports: The world (fakes in unit tests).
        settings: Checkpoint interval, merge attempts, respawns.
    """

    def __init__(self, build_id: str, ports: BuildPorts, settings: BuildSettings | None = None) -> None:
        self.build_id = build_id
        self.ports = ports
        self.store = ports.store
        self.clock = ports.clock or SystemClock()
        self.settings = settings or BuildSettings()
        self.state = BuildState(build_id, ports.store)
        self.phase = ""
        self.component_phase: dict[str, str] = {}
        self.steps = ComponentSteps(self.state, ports, self.settings, host=self)
        self._cancel = asyncio.Event()

    @property
    def locked(self) -> LockedContract | None:
        """The contract locked in phase 0 (None before)."""
        return self.state.locked

    # --- the run -------------------------------------------------------------------------

    async def run(self) -> BuildSession:
        """Drive the build from wherever it stands to completed, failed, cancelled or paused.

        Returns:
            The session as it is at the end of this run.
        """
        session = self.store.get_session(self.build_id)
        if session.status in TERMINAL:
            return session
        self.phase = session.phase
        self.state.preview_url = self.state.preview_url or session.preview_url
        try:
            self.check_control()
            if session.status is SessionStatus.PAUSED:
                if self.ports.ledger.status() is BudgetStatus.EXHAUSTED:
                    return session  # still no budget: stay paused until raise_budget
                await self.emit(BuildResumed(phase=session.phase))
            elif session.status is SessionStatus.RUNNING and session.phase:
                await self.emit(CoordinatorResumed(phase=session.phase))
            self.store.update_session(self.build_id, status=SessionStatus.RUNNING, error=None)
            await self._intent(session)
            await self._fleet()
            await self._components()
            await self._satisfy()
        except BuildCancelledError:
            await self._finish_cancelled()
        except BuildPausedError as exc:
            await self._pause(exc.reason)
        except Exception as exc:  # noqa: BLE001 - any failure ends the build as failed, with the reason
            logger.exception("build %s failed", self.build_id)
            await self._fail(exc)
        return self.store.get_session(self.build_id)

    def request_cancel(self) -> None:
        """Record a cancel (durably, so a restart honours it too); the run stops at its next step."""
        session = self.store.get_session(self.build_id)
        if session.status not in TERMINAL:
            self.store.update_session(self.build_id, error=CANCEL_REQUESTED)
        self._cancel.set()

    # --- phase 0: intent -----------------------------------------------------------------

    async def _intent(self, session: BuildSession) -> None:
        await self.enter_phase("intent")
        if session.contract is not None and session.contract_hash:
            locked = lock(parse_contract(session.contract), clock=self.clock.now)
            if locked.sha256 != session.contract_hash:
                raise ContractDriftError(
                    f"stored contract of build {self.build_id} no longer matches its hash", fields=["<stored>"]
                )
            self.state.locked = locked
        else:
            if session.contract is not None:
                contract = parse_contract(session.contract)
            elif self.ports.planner is not None:
                contract = await self.ports.planner.plan(session.prompt)
            else:
                raise BuildError(f"build {self.build_id} has neither a contract nor a planner")
            locked = self.state.locked = lock(contract, clock=self.clock.now)
            self.store.update_session(
                self.build_id, contract=contract.model_dump(mode="json"), contract_hash=locked.sha256
            )
            await self.emit(IntentLocked(name=contract.name, sha256=locked.sha256))
        if session.budget is None:  # the contract's budget, unless the user gave one
            budget = Budget(max_usd=locked.contract.budget.usd)
            self.ports.ledger.budget = budget
            self.store.update_session(self.build_id, budget=budget.model_dump())
        await self.step()

    # --- phase 1: fleet ------------------------------------------------------------------

    async def _fleet(self) -> None:
        state = self.state
        assert state.locked is not None
        await self.enter_phase("fleet")
        contract = state.locked.contract
        plan = state.plan = plan_fleet(contract, PlanSettings(build_id=self.build_id))
        stored = {s.slot: s for s in self.store.list_slots(self.build_id)}
        for slot in plan.slots:
            if slot.slot_id not in stored:
                candidates = [s.slot_id for s in plan.slots_of(slot.component)]
                stored[slot.slot_id] = self.store.upsert_slot(
                    Slot(
                        session_id=self.build_id,
                        slot=slot.slot_id,
                        component=slot.component,
                        candidate=candidates.index(slot.slot_id),
                    )
                )
        state.slots = stored
        for name in plan.order:
            event = state.merged.setdefault(name, asyncio.Event())
            if all(state.slots[s.slot_id].status in ("merged", "lost") for s in plan.slots_of(name)):
                event.set()
        await self.ports.gate.start(contract)
        todo = [s for s in plan.slots if state.slots[s.slot_id].status in LIVE]
        await gather(*(self.steps.ensure_sandbox(s) for s in todo))
        await self.emit(FleetReady(slots=[s.slot_id for s in plan.slots], order=list(plan.order)))
        await self.step()

    # --- phases 2-5: one pipeline per component --------------------------------------------

    async def _components(self) -> None:
        plan = self.state.plan
        assert plan is not None
        for name in plan.order:
            if self.state.merged[name].is_set():
                self.component_phase[name] = "done"
            else:
                self.component_phase.setdefault(name, "build")
        await self._advance_phase()
        await self.ports.merges.start(self.steps.handle_merge_request)
        ticker = asyncio.get_running_loop().create_task(self._checkpoint_ticker())
        try:
            if self.ports.progress is not None:
                await self.ports.progress.start(self.relay_progress)
            await gather(*(self.steps.component(name) for name in plan.order))
        finally:
            await self.ports.merges.stop()
            if self.ports.progress is not None:
                await self.ports.progress.stop()
            ticker.cancel()
            try:
                await ticker
            except asyncio.CancelledError:
                pass  # the cancel just made
            except Exception:  # noqa: BLE001 - a failed ticker only cost checkpoints; the build's outcome stands
                logger.warning("build %s: the checkpoint ticker failed", self.build_id, exc_info=True)

    async def set_component_phase(self, component: str, phase: str) -> None:
        """Move one component's pipeline; the build's phase follows its least advanced component."""
        if self.component_phase.get(component) == phase:
            return
        self.component_phase[component] = phase
        await self.emit(ComponentPhase(component=component, phase=phase))
        await self._advance_phase()

    async def _advance_phase(self) -> None:
        open_phases = [p for p in self.component_phase.values() if p != "done"]
        target = min(open_phases, key=PHASES.index) if open_phases else "preview"
        if self.phase not in PHASES or PHASES.index(target) > PHASES.index(self.phase):
            await self.enter_phase(target)

    # --- phase 6: satisfaction -------------------------------------------------------------

    async def _satisfy(self) -> None:
        assert self.state.locked is not None
        await self.enter_phase("satisfy")
        report = await self.ports.satisfaction.check_main(self.state.locked)
        await self.emit(report.to_event())
        if not report.done:
            failed = ", ".join(r.id for r in report.failed)
            raise BuildError(f"success criteria not met in main: {failed}")
        tree_hash = await self.ports.gate.tree_hash()
        await self.release_all()
        await self.enter_phase("done", checkpoint=False)
        now = self.clock.now()
        self.store.update_session(self.build_id, status=SessionStatus.COMPLETED, finished_at=now, error=None)
        await self.emit(BuildDone(tree_hash=tree_hash, preview_url=self.state.preview_url))
        await self._notify("completed", f"build {self.build_id} completed", {"tree_hash": tree_hash})

    # --- phases, steps, checkpoints ---------------------------------------------------------

    async def enter_phase(self, phase: str, *, checkpoint: bool = True) -> None:
        """Persist and announce a phase change (a step boundary: checkpoints, cancel, budget)."""
        if phase == self.phase or (
            phase in PHASES and self.phase in PHASES and PHASES.index(phase) < PHASES.index(self.phase)
        ):
            await self.step()  # a resumed run passes the phases it already left without going back
            return
        previous, self.phase = self.phase, phase
        self.store.update_session(self.build_id, phase=phase)
        await self.emit(BuildPhase(phase=phase, previous=previous))
        if checkpoint:
            await self.checkpoint_all(f"phase:{phase}")
        await self.step()

    async def step(self) -> None:
        """A step boundary: honour a cancel, then the budget."""
        self.check_control()
        if self.ports.ledger.status() is BudgetStatus.EXHAUSTED:
            raise BuildPausedError(f"build {self.build_id} exhausted its budget", reason=PAUSED_BUDGET)

    def check_control(self) -> None:
        """Raise BuildCancelledError when a cancel was requested (here, or stored while we were down)."""
        if self._cancel.is_set():
            raise BuildCancelledError(f"build {self.build_id} was cancelled")
        session = self.store.get_session(self.build_id)
        if session.error == CANCEL_REQUESTED or session.status is SessionStatus.CANCELLED:
            self._cancel.set()
            raise BuildCancelledError(f"build {self.build_id} was cancelled")

    async def _checkpoint_ticker(self) -> None:
        while True:
            await self.clock.sleep(self.settings.checkpoint_interval_s)
            await self.checkpoint_all("interval")

    async def checkpoint_all(self, reason: str) -> int:
        """Snapshot every slot with a live sandbox and record the checkpoints; returns how many."""
        taken = 0
        for slot in list(self.state.slots.values()):
            if slot.status not in LIVE or not slot.sandbox_id:
                continue
            try:
                ref = await self.ports.fleet.snapshot(slot.slot)
            except Exception as exc:  # noqa: BLE001 - a failed checkpoint must not stop the build
                logger.warning("build %s: checkpoint of %s failed: %r", self.build_id, slot.slot, exc)
                continue
            self.store.add_checkpoint(self.build_id, slot.sandbox_id, slot.slot, ref, phase=self.phase)
            taken += 1
        if taken:
            await self.emit(CheckpointTaken(reason=reason, slots=taken, phase=self.phase))
        return taken

    # --- slot records ------------------------------------------------------------------------

    async def release_all(self) -> None:
        """Stop every team and terminate every sandbox the build still holds (per the store after a restart).

        A failure to stop a team or release a sandbox is logged and the next one is released all the same.
        """
        state = self.state
        if not state.slots:
            state.slots = {s.slot: s for s in self.store.list_slots(self.build_id)}
        for slot in list(state.slots.values()):
            try:
                await self.ports.teams.stop(slot.slot)
            except Exception:  # noqa: BLE001 - the team may be gone already
                logger.debug("build %s: stopping the team of %s failed", self.build_id, slot.slot, exc_info=True)
            if slot.sandbox_id:
                try:
                    await self.ports.fleet.release(slot.slot)
                except Exception:  # noqa: BLE001 - the others are released all the same
                    logger.warning(
                        "build %s: releasing sandbox %s of slot %s failed; the build forgets it",
                        self.build_id,
                        slot.sandbox_id,
                        slot.slot,
                        exc_info=True,
                    )
                state.save_slot(slot.slot, sandbox_id=None)

    # --- endings -----------------------------------------------------------------------------

    async def _pause(self, reason: str) -> None:
        await self.checkpoint_all("pause")
        await self.release_all()
        self.store.update_session(self.build_id, status=SessionStatus.PAUSED, error=reason)
        paused = BuildPaused(reason=reason, phase=self.phase, spent_usd=round(self.ports.ledger.spent(), 6))
        await self.emit(paused)
        await self._notify("paused", f"build {self.build_id} paused: {reason}", paused.data)

    async def _finish_cancelled(self) -> None:
        await self.release_all()
        now = self.clock.now()
        self.store.update_session(
            self.build_id, status=SessionStatus.CANCELLED, finished_at=now, error="cancelled by the user"
        )
        await self.emit(BuildCancelled(phase=self.phase))

    async def _fail(self, exc: BaseException) -> None:
        message = failure_reason(exc, limit=2000)  # the error itself, not a remote traceback with colour codes
        await self.emit(BuildErrorEvent(error=message[:2000], phase=self.phase))
        try:
            await self.release_all()
        except Exception:  # noqa: BLE001 - the build is failing already; record that, whatever the release did
            logger.warning("build %s: releasing its sandboxes after the failure failed", self.build_id, exc_info=True)
        now = self.clock.now()
        self.store.update_session(self.build_id, status=SessionStatus.FAILED, finished_at=now, error=message[:4000])
        await self._notify("failed", f"build {self.build_id} failed: {message[:200]}", {"error": message[:2000]})

    async def _notify(self, status: str, summary: str, data: dict[str, Any]) -> None:
        if self.ports.notifier is None:
            return
        try:
            await self.ports.notifier.notify(status, summary, data)
        except Exception:  # noqa: BLE001 - a notification never changes the build's outcome
            logger.warning("build %s: notification %s failed", self.build_id, status, exc_info=True)

    # --- plumbing ------------------------------------------------------------------------------

    async def emit(self, event: RunEvent) -> None:
        """Append an event (with this build's id) to the build's log and persist its id as the last one sent."""
        try:
            entry = await self.ports.events.emit(event.for_build(self.build_id))
        except Exception:  # noqa: BLE001 - a lost event must not stop the build
            logger.warning("build %s: event %s not delivered", self.build_id, event.kind, exc_info=True)
            return
        if entry:
            self.store.set_offset(self.build_id, "events", "coordinator", entry)

    async def relay_progress(self, line: Progress) -> None:
        """A team's progress line into the build's log as ``team.progress``.

        Straight to the events port, not through :meth:`emit`: a failure raises, so the line stays
        unacknowledged on the ``progress`` channel and is relayed again.
        """
        event = TeamProgress(
            component=line.component, slot=line.slot, task=line.phase, message=line.message, fraction=line.fraction
        )
        await self.ports.events.emit(event)

    def describe(self) -> dict[str, Any]:
        """The run's state for ``status()``: session, slots, merges, budget, preview."""
        session = self.store.get_session(self.build_id)
        ledger = self.ports.ledger
        return {
            "build_id": self.build_id,
            "status": session.status.value,
            "phase": session.phase,
            "error": session.error,
            "contract_hash": session.contract_hash,
            "components": dict(self.component_phase),
            "merged": [c for c, e in self.state.merged.items() if e.is_set()],
            "slots": [s.model_dump(mode="json") for s in self.store.list_slots(self.build_id)],
            "checkpoints": len(session.checkpoint_ids),
            "budget": {
                "spent_usd": round(ledger.spent(), 6),
                "max_usd": ledger.budget.max_usd,
                "status": ledger.status().value,
            },
            "preview_url": self.state.preview_url,
        }
