"""What a build run knows as it goes: the locked contract, the plan, each slot's record, merges.

One :class:`BuildState` is shared by the run's phase machine (``coordinator/build/run.py``) and
its components' pipelines (``coordinator/build/steps.py``): the phase machine fills in the
contract and the plan, both record slots through :meth:`BuildState.save_slot`, and a pipeline
marks its component merged so that its dependents start. Each step persists the slot's status
before it returns, so a restarted run knows where every slot was:

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

import asyncio
from typing import Any

from coordinator.intent import LockedContract
from coordinator.plan import FleetPlan
from coordinator.store.schema import Slot
from coordinator.store.store import Store

LIVE = frozenset({"pending", "ready", "building", "built", "won", "merging"})
"""Slot statuses that need a sandbox."""


class BuildState:
    """The state of one build run, persisted step by step in ``store``.

    Args:
        build_id: The session id in the store.
        store: Where slots, checkpoints, pending merges and the session are persisted.
    """

    def __init__(self, build_id: str, store: Store) -> None:
        self.build_id = build_id
        self.store = store
        self.locked: LockedContract | None = None
        """The contract locked in phase 0."""
        self.plan: FleetPlan | None = None
        """The fleet planned in phase 1 (slots per component, dependency order)."""
        self.slots: dict[str, Slot] = {}
        """Slot id → its record as last persisted."""
        self.merged: dict[str, asyncio.Event] = {}
        """Component → set once it is in main (its dependents wait on it)."""
        self.preview_url: str | None = None
        """The preview's URL since the last refresh (also in the session)."""

    def save_slot(self, slot_id: str, **fields: Any) -> Slot:
        """Persist a slot's new status/sandbox and keep the session's ``sandbox_ids`` in step."""
        if fields.get("sandbox_id"):
            fields["last_sandbox_id"] = fields["sandbox_id"]
        slot = self.store.upsert_slot(self.slots[slot_id].model_copy(update=fields))
        self.slots[slot_id] = slot
        if "sandbox_id" in fields:
            ids = sorted({s.sandbox_id for s in self.slots.values() if s.sandbox_id})
            self.store.update_session(self.build_id, sandbox_ids=ids)
        return slot
