"""One component's pipeline in a build run: sandbox, team, verification, tournament, merge, preview.

Split from ``coordinator/build/run.py`` (which owns the phases and the endings). Each step
persists the slot's status before it returns, so a restarted run knows where every slot was:

==========  =========================================================================
status      meaning
==========  =========================================================================
pending     planned; no sandbox yet
ready       a fresh sandbox (a dependent is seeded with main's tree when it starts)
building    its team runs (a restart re-runs the team on the sandbox as it is)
built       the team signalled ready-to-merge
won         the judge picked it (tournaments)
merging     an admission to the gate is in flight (``pending_merges`` has the row)
merged      in main; its sandbox is released
lost        lost a tournament: snapshotted, then terminated
blocked     its team could not finish
==========  =========================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from coordinator.build.ports import SlotVerification, TeamOutcome
from coordinator.bus.events import (
    BuildErrorEvent,
    MergeAccepted,
    MergeRejected,
    PreviewRefreshed,
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
from coordinator.judge import Evidence
from coordinator.plan import SlotPlan
from coordinator.tournament import Tournament
from sandbox_agents.errors import BuildError

if TYPE_CHECKING:
    from coordinator.build.run import BuildRun

logger = logging.getLogger(__name__)

LIVE = frozenset({"pending", "ready", "building", "built", "won", "merging"})
"""Slot statuses that need a sandbox."""
T = TypeVar("T")


class ComponentSteps:
    """The per-component steps of a :class:`~coordinator.build.run.BuildRun` (it holds the state)."""

    def __init__(self, run: BuildRun) -> None:
        self.run = run
        self._metered: dict[str, float] = {}
        self._spent: dict[str, float] = {}
        self._respawns: dict[str, int] = {}

    @property
    def ports(self) -> Any:
        return self.run.ports

    # --- the pipeline ---------------------------------------------------------------------

    async def component(self, name: str) -> None:
        """Build, verify, judge, merge and preview one component, after its dependencies merged."""
        run = self.run
        assert run.plan is not None and run.locked is not None
        if run.merged[name].is_set():
            return
        for dep in run.locked.contract.component(name).depends_on:
            await run.merged[dep].wait()
        run.check_control()
        slots = run.plan.slots_of(name)
        status = {s.slot_id: run.slots[s.slot_id].status for s in slots}
        winner = next((s for s in slots if status[s.slot_id] in ("won", "merging")), None)
        if winner is None:
            await run.set_component_phase(name, "build")
            live = [s for s in slots if status[s.slot_id] in LIVE]
            await run._gather(*(self.build_slot(s) for s in live))
            built = [s for s in live if run.slots[s.slot_id].status == "built"]
            if not built:
                raise BuildError(f"component {name}: no candidate could be built")
            await run.set_component_phase(name, "verify")
            verdicts = {s.slot_id: await self.verify_slot(s) for s in built}
            if len(slots) > 1:
                await run.set_component_phase(name, "judge")
                winner = await self.tournament(name, slots, built, verdicts)
            else:
                winner = built[0]
        await run.set_component_phase(name, "merge")
        await self.merge(winner)
        await run.set_component_phase(name, "preview")
        await self.refresh_preview(name)
        await self.release(winner.slot_id)
        await run.set_component_phase(name, "done")
        run.merged[name].set()

    # --- sandboxes --------------------------------------------------------------------------

    async def ensure_sandbox(self, slot: SlotPlan) -> None:
        """Give the slot a running sandbox: reconnect, respawn from its checkpoint, or acquire one."""
        record = self.run.slots[slot.slot_id]
        if record.sandbox_id and await self.ports.fleet.alive(slot.slot_id):
            return
        await self.respawn(slot, counted=bool(record.sandbox_id))

    async def respawn(self, slot: SlotPlan, *, counted: bool = True) -> None:
        """Restore the slot's sandbox from its newest checkpoint (or start it afresh without one)."""
        run = self.run
        if counted:
            n = self._respawns[slot.slot_id] = self._respawns.get(slot.slot_id, 0) + 1
            if n > run.settings.max_respawns:
                raise BuildError(f"slot {slot.slot_id}: sandbox died {n} times")
        checkpoint = run.store.latest_checkpoint(run.build_id, slot.slot_id)
        record = run.slots[slot.slot_id]
        if checkpoint is not None:
            sandbox_id = await self.ports.fleet.restore(slot, checkpoint.snapshot)
            status = record.status if record.status != "pending" else "ready"
            run.save_slot(slot.slot_id, sandbox_id=sandbox_id, status=status, proxy_name=slot.slot_id)
            restored = SlotRespawned if counted or record.sandbox_id else SlotRestored
            await run.emit(restored(slot=slot.slot_id, checkpoint=checkpoint.id, sandbox_id=sandbox_id))
        else:
            if record.sandbox_id:
                await self.ports.fleet.release(slot.slot_id)
            sandbox_id = await self.ports.fleet.acquire(slot)
            status = "ready" if record.status in ("pending", "ready", "building") else record.status
            run.save_slot(slot.slot_id, sandbox_id=sandbox_id, status=status, proxy_name=slot.slot_id)
            await run.emit(SlotAcquired(slot=slot.slot_id, sandbox_id=sandbox_id, respawn=counted))
        self._metered[slot.slot_id] = 0.0

    async def with_respawn(self, slot: SlotPlan, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` on the slot; if its sandbox turns out dead, respawn it and run ``op`` again."""
        while True:
            error: Exception | None = None
            result: Any = None
            try:
                result = await op()
            except Exception as exc:  # noqa: BLE001 - decided below: a dead sandbox is retried
                error = exc
            if await self.ports.fleet.alive(slot.slot_id):
                if error is not None:
                    raise error
                return result
            logger.warning("build %s: sandbox of %s is dead; respawning", self.run.build_id, slot.slot_id)
            await self.respawn(slot)

    async def release(self, slot_id: str) -> None:
        run = self.run
        await self.meter(slot_id)
        try:
            await self.ports.teams.stop(slot_id)
        except Exception:  # noqa: BLE001 - the team may already be gone
            logger.debug("stopping team %s failed", slot_id, exc_info=True)
        await self.ports.fleet.release(slot_id)
        run.save_slot(slot_id, sandbox_id=None)

    # --- team, verification ------------------------------------------------------------------

    async def build_slot(self, slot: SlotPlan, *, attempt: int = 0, feedback: str | None = None) -> bool:
        """Run the slot's team (seeding a dependent's fresh sandbox with main first); True when built."""
        run = self.run
        assert run.locked is not None
        if feedback is None and run.slots[slot.slot_id].status in ("built", "won", "merging", "merged"):
            return True
        await self.ensure_sandbox(slot)

        async def team() -> TeamOutcome:
            if run.slots[slot.slot_id].status == "ready" and run.locked.contract.component(slot.component).depends_on:
                files = await self.ports.gate.tree()
                await self.ports.fleet.seed(slot.slot_id, files)
                await run.emit(SlotSeeded(slot=slot.slot_id, files=len(files)))
            run.save_slot(slot.slot_id, status="building")
            await run.emit(SlotBuilding(slot=slot.slot_id, attempt=attempt))
            return await self.ports.teams.run(slot, attempt=attempt, feedback=feedback)

        outcome = await self.with_respawn(slot, team)
        for role, model, usage in outcome.usage:
            await run.ports.ledger.record_llm(role, model, usage)
        await self.meter(slot.slot_id)
        report = outcome.report
        status = "built" if report.ready else "blocked"
        run.save_slot(slot.slot_id, status=status)
        ended = SlotBuilt if report.ready else SlotBlocked
        await run.emit(ended(slot=slot.slot_id, done=report.done, blocked=report.blocked, attempt=attempt))
        await run.step()
        return report.ready

    async def verify_slot(self, slot: SlotPlan) -> SlotVerification:
        verdict = await self.with_respawn(slot, lambda: self.ports.verify.verify(slot))
        await self.meter(slot.slot_id)
        await self.run.emit(SlotVerified(slot=slot.slot_id, **verdict.model_dump(mode="json")))
        await self.run.step()
        return verdict

    # --- tournament --------------------------------------------------------------------------

    async def tournament(
        self, name: str, slots: list[SlotPlan], built: list[SlotPlan], verdicts: dict[str, SlotVerification]
    ) -> SlotPlan:
        """Judge the built candidates on evidence; snapshot, then terminate the losers."""
        run = self.run
        assert run.locked is not None and run.plan is not None
        evidence = []
        for slot in built:
            passed, total = await self.ports.satisfaction.check_slot(run.locked, slot)
            verdict = verdicts[slot.slot_id]
            evidence.append(
                Evidence(
                    candidate=slot.slot_id,
                    swarm_score=verdict.score,
                    criteria_passed=passed,
                    criteria_total=total,
                    tests_passed=verdict.tests_passed,
                    tests_total=verdict.tests_total,
                    build_size_bytes=await self.ports.fleet.size_bytes(slot.slot_id),
                    budget_spent_usd=round(self._spent.get(slot.slot_id, 0.0), 6),
                )
            )
        decision = await self.ports.judge.decide(evidence, name)
        for charge in decision.usage:
            await run.ports.ledger.record_llm(charge.role, charge.model, charge.usage)
        await run.emit(TournamentDecision(**{**decision.to_event().data, "component": name}))
        threshold = run.plan.halving_thresholds.get(name, 0.1)
        tournament = Tournament(component=name, alive=[s.slot_id for s in built], threshold=threshold)
        tournament.finish(decision.winner, decision.scores())
        losers = [s for s in slots if s.slot_id != decision.winner]
        for slot in losers:
            record = run.slots[slot.slot_id]
            if record.sandbox_id and slot.slot_id in tournament.pending_termination():
                ref = await self.ports.fleet.snapshot(slot.slot_id)
                run.store.add_checkpoint(run.build_id, record.sandbox_id, slot.slot_id, ref, phase="tournament")
                tournament.record_snapshot(slot.slot_id, ref.id)
            await self.release(slot.slot_id)
            run.save_slot(slot.slot_id, status="lost")
            await run.emit(TournamentEliminated(component=name, slot=slot.slot_id))
        winner = run.plan.slot(decision.winner)
        run.save_slot(winner.slot_id, status="won")
        await run.step()
        return winner

    # --- merge and preview ---------------------------------------------------------------------

    async def merge(self, slot: SlotPlan) -> None:
        """Admit the slot through the gate; a rejection goes back to the team, then again."""
        run = self.run
        name = slot.component
        for pending in run.store.pending_merges(run.build_id):  # in flight when we went down
            if pending.component != name:
                continue
            if name in await self.ports.gate.merged():
                run.store.resolve_pending_merge(pending.id, "merged")
                run.save_slot(slot.slot_id, status="merged")
                await run.emit(MergeAccepted(component=name, slot=slot.slot_id, recovered=True))
                return
            run.store.resolve_pending_merge(pending.id, "abandoned")
        for attempt in range(run.settings.max_merge_attempts):
            await self.ensure_sandbox(slot)
            record = run.slots[slot.slot_id]
            pending = run.store.add_pending_merge(
                run.build_id, name, {"slot": slot.slot_id, "sandbox_id": record.sandbox_id, "attempt": attempt}
            )
            run.save_slot(slot.slot_id, status="merging")
            outcome = await self.with_respawn(
                slot, lambda: self.ports.gate.admit(slot, run.slots[slot.slot_id].sandbox_id or "")
            )
            if outcome.accepted:
                run.store.resolve_pending_merge(pending.id, "merged")
                run.save_slot(slot.slot_id, status="merged")
                await run.emit(MergeAccepted(component=name, slot=slot.slot_id, commit=outcome.commit))
                await run.step()
                return
            run.store.resolve_pending_merge(pending.id, "rejected")
            run.save_slot(slot.slot_id, status="built")
            await run.emit(
                MergeRejected(component=name, slot=slot.slot_id, reason=outcome.reason, findings=outcome.findings)
            )
            await run.step()
            if attempt + 1 >= run.settings.max_merge_attempts:
                break
            await run.set_component_phase(name, "build")
            feedback = "\n".join([outcome.reason, *outcome.findings]).strip() or "the merge gate rejected the merge"
            if not await self.build_slot(slot, attempt=attempt + 1, feedback=feedback):
                raise BuildError(f"component {name}: the team could not fix the rejected merge")
            await self.verify_slot(slot)
            await run.set_component_phase(name, "merge")
        raise BuildError(f"component {name}: merge rejected {run.settings.max_merge_attempts} times")

    async def refresh_preview(self, name: str) -> None:
        run = self.run
        try:
            url = await self.ports.preview.refresh()
        except Exception as exc:  # noqa: BLE001 - a broken preview is reported, the build goes on
            await run.emit(BuildErrorEvent(component=name, error=f"preview: {exc!r}"[:2000], fatal=False))
            return
        run.preview_url = url or run.preview_url
        run.store.update_session(run.build_id, preview_url=run.preview_url)  # status reads it from the store
        await run.emit(PreviewRefreshed(component=name, url=run.preview_url))

    # --- budget ----------------------------------------------------------------------------------

    async def meter(self, slot_id: str) -> None:
        """Charge the compute the slot's sandbox used since the last charge."""
        run = self.run
        try:
            seconds = await self.ports.fleet.compute_seconds(slot_id)
        except Exception:  # noqa: BLE001 - metering is best effort; a dead sandbox has no meter
            return
        delta = seconds - self._metered.get(slot_id, 0.0)
        if delta <= 0:
            return
        self._metered[slot_id] = seconds
        entry = await run.ports.ledger.record_compute(slot_id, delta, run.settings.backend)
        self._spent[slot_id] = self._spent.get(slot_id, 0.0) + entry.estimated_cost
