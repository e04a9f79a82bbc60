"""What a restarted actor resumes from: checkpoints, bus offsets, pending merges, processed messages, slots.

A mixin of :class:`~coordinator.store.store.Store` (which owns the connection and ``transaction()``):
a respawned sandbox starts from its slot's latest checkpoint, a resumed bus reader from its
group's offset, a restarted coordinator re-verifies its pending merges and skips messages it
already processed, and the fleet's slots say which sandbox plays which part.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from coordinator.store.schema import (
    BusOffset,
    Checkpoint,
    MergeStatus,
    PendingMerge,
    Slot,
    checkpoint_from_row,
    merge_from_row,
    older,
    slot_columns,
    slot_from_row,
)
from sandbox_agents.backends.base import SnapshotRef
from sandbox_agents.errors import BuildNotFoundError, InvalidInputError

if TYPE_CHECKING:
    from coordinator.clock import Clock


class ResumeQueries:
    """Checkpoints and resumption state of :class:`~coordinator.store.store.Store` (a mixin)."""

    if TYPE_CHECKING:
        clock: Clock

        def _db(self) -> sqlite3.Connection: ...

        def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

    # --- checkpoints -------------------------------------------------------------------

    def add_checkpoint(
        self, session_id: str, sandbox_id: str, slot: str, snapshot: SnapshotRef, phase: str = ""
    ) -> Checkpoint:
        """Record a snapshot of a slot's sandbox and append it to the build's ``checkpoint_ids``, atomically."""
        checkpoint = Checkpoint(
            id=f"ckpt-{uuid.uuid4().hex[:16]}",
            session_id=session_id,
            sandbox_id=sandbox_id,
            slot=slot,
            snapshot=snapshot,
            phase=phase,
            created_at=self.clock.now(),
        )
        with self.transaction() as conn:
            updated = conn.execute(
                "UPDATE build_sessions SET checkpoint_ids = json_insert(checkpoint_ids, '$[#]', ?),"
                " last_activity_at = ? WHERE id = ?",
                (checkpoint.id, checkpoint.created_at, session_id),
            ).rowcount
            if updated != 1:
                raise BuildNotFoundError(f"no build {session_id!r}")
            conn.execute(
                "INSERT INTO sandbox_checkpoints (id, session_id, sandbox_id, slot, snapshot_id, snapshot_json, phase,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    checkpoint.id,
                    session_id,
                    sandbox_id,
                    slot,
                    snapshot.id,
                    snapshot.model_dump_json(),
                    phase,
                    checkpoint.created_at,
                ),
            )
        return checkpoint

    def latest_checkpoint(self, session_id: str, slot: str) -> Checkpoint | None:
        """The newest checkpoint of a slot (to respawn its sandbox from), or ``None``."""
        row = (
            self._db()
            .execute(
                "SELECT * FROM sandbox_checkpoints WHERE session_id = ? AND slot = ?"
                " ORDER BY created_at DESC, rowid DESC LIMIT 1",
                (session_id, slot),
            )
            .fetchone()
        )
        return None if row is None else checkpoint_from_row(row)

    def list_checkpoints(self, session_id: str) -> list[Checkpoint]:
        """Every checkpoint of a build, oldest first."""
        rows = self._db().execute(
            "SELECT * FROM sandbox_checkpoints WHERE session_id = ? ORDER BY created_at, rowid", (session_id,)
        )
        return [checkpoint_from_row(row) for row in rows]

    # --- resumption: bus offsets, pending merges, processed messages, slots -------------

    def set_offset(self, session_id: str, stream: str, group: str, last_acked_id: str) -> BusOffset:
        """Remember the last bus entry a group acknowledged; an older id than the stored one is ignored.

        Acks may be recorded out of order (replay after a restart); the offset only moves
        forward so a resumed reader never re-reads from further back than needed.
        """
        now = self.clock.now()
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT last_acked_id FROM bus_offsets WHERE session_id = ? AND stream = ? AND consumer_group = ?",
                (session_id, stream, group),
            ).fetchone()
            if row is not None and older(last_acked_id, row[0]):
                last_acked_id = row[0]
            try:
                conn.execute(
                    "INSERT INTO bus_offsets (session_id, stream, consumer_group, last_acked_id, updated_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (session_id, stream, consumer_group)"
                    " DO UPDATE SET last_acked_id = excluded.last_acked_id, updated_at = excluded.updated_at",
                    (session_id, stream, group, last_acked_id, now),
                )
            except sqlite3.IntegrityError as exc:
                raise BuildNotFoundError(f"no build {session_id!r}") from exc
        return BusOffset(session_id=session_id, stream=stream, group=group, last_acked_id=last_acked_id, updated_at=now)

    def get_offsets(self, session_id: str) -> dict[tuple[str, str], str]:
        """``{(stream, group): last_acked_id}`` of a build."""
        rows = self._db().execute(
            "SELECT stream, consumer_group, last_acked_id FROM bus_offsets WHERE session_id = ?", (session_id,)
        )
        return {(row[0], row[1]): row[2] for row in rows}

    def add_pending_merge(self, session_id: str, component: str, ref: dict[str, Any]) -> PendingMerge:
        """Record a merge the gate has started, so a restarted coordinator re-verifies it."""
        now = self.clock.now()
        with self.transaction() as conn:
            try:
                cursor = conn.execute(
                    "INSERT INTO pending_merges (session_id, component, ref_json, created_at) VALUES (?, ?, ?, ?)",
                    (session_id, component, json.dumps(ref), now),
                )
            except sqlite3.IntegrityError as exc:
                raise BuildNotFoundError(f"no build {session_id!r}") from exc
        return PendingMerge(
            id=int(cursor.lastrowid or 0), session_id=session_id, component=component, ref=ref, created_at=now
        )

    def resolve_pending_merge(
        self, merge_id: int, status: MergeStatus, *, commit: str | None = None, reason: str = ""
    ) -> PendingMerge:
        """Close a pending merge; resolving it again with the same status is a no-op.

        Args:
            commit: ``main``'s commit after an accepted merge.
            reason: Why the gate rejected it (or how it was resolved).

        Raises:
            InvalidInputError: ``status`` is ``pending``, or the merge was resolved differently.
            LookupError: No such merge (a :class:`BuildNotFoundError`).
        """
        if status == "pending":
            raise InvalidInputError("a merge is resolved as merged, rejected or abandoned", field="status")
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM pending_merges WHERE id = ?", (merge_id,)).fetchone()
            if row is None:
                raise BuildNotFoundError(f"no pending merge {merge_id}")
            merge = merge_from_row(row)
            if merge.status == status:
                return merge
            if merge.status != "pending":
                raise InvalidInputError(f"merge {merge_id} is already {merge.status}", field="status")
            merge.status, merge.resolved_at, merge.commit, merge.reason = status, self.clock.now(), commit, reason
            conn.execute(
                "UPDATE pending_merges SET status = ?, resolved_at = ?, commit_id = ?, reason = ? WHERE id = ?",
                (status, merge.resolved_at, commit, reason, merge_id),
            )
        return merge

    def pending_merges(self, session_id: str) -> list[PendingMerge]:
        """A build's merges still pending, oldest first."""
        rows = self._db().execute(
            "SELECT * FROM pending_merges WHERE session_id = ? AND status = 'pending' ORDER BY id", (session_id,)
        )
        return [merge_from_row(row) for row in rows]

    def merges(self, session_id: str) -> list[PendingMerge]:
        """Every admission of a build to the merge gate, resolved or pending, oldest first."""
        rows = self._db().execute("SELECT * FROM pending_merges WHERE session_id = ? ORDER BY id", (session_id,))
        return [merge_from_row(row) for row in rows]

    def mark_processed(self, session_id: str, message_id: str) -> bool:
        """Claim a bus message for processing: True the first time, False ever after.

        Inside a caller's ``transaction()`` the mark commits or rolls back together with
        the effects it guards, so a crash between the two never loses or doubles an effect.
        """
        with self.transaction() as conn:
            try:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO processed_messages (session_id, message_id, processed_at) VALUES (?, ?, ?)",
                    (session_id, message_id, self.clock.now()),
                )
            except sqlite3.IntegrityError as exc:
                raise BuildNotFoundError(f"no build {session_id!r}") from exc
            return cursor.rowcount == 1

    def upsert_slot(self, slot: Slot) -> Slot:
        """Insert or replace a slot of the fleet (keyed by build and slot name); stamps ``updated_at``."""
        stored = slot.model_copy(update={"updated_at": self.clock.now()})
        data = slot_columns(stored)
        names = ", ".join(data)
        marks = ", ".join("?" for _ in data)
        updates = ", ".join(f"{name} = excluded.{name}" for name in data if name not in ("session_id", "slot"))
        with self.transaction() as conn:
            try:
                conn.execute(
                    f"INSERT INTO slots ({names}) VALUES ({marks})"
                    f" ON CONFLICT (session_id, slot) DO UPDATE SET {updates}",
                    tuple(data.values()),
                )
            except sqlite3.IntegrityError as exc:
                raise BuildNotFoundError(f"no build {slot.session_id!r}") from exc
        return stored

    def list_slots(self, session_id: str) -> list[Slot]:
        """A build's slots, by component then candidate."""
        rows = self._db().execute(
            "SELECT * FROM slots WHERE session_id = ? ORDER BY component, candidate, slot", (session_id,)
        )
        return [slot_from_row(row) for row in rows]
