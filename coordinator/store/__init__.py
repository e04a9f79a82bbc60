"""The build store: durable state of every build in SQLite on the head node (floor 2, no Ray).

:class:`Store` keeps sessions, slots, checkpoints, costs, bus offsets, pending merges and API
tokens; a restarted actor resumes from what it finds there. :mod:`.schema` holds the
append-only migrations and one typed row model per table, :mod:`.resume` the checkpoint and
resumption queries and :mod:`.tokens` the API-token queries (mixins :class:`Store` inherits).
See docs/persistence.md.
"""

from coordinator.store.schema import (
    ACTIVE_STATUSES,
    MIGRATIONS,
    ApiToken,
    BuildSession,
    BusOffset,
    Checkpoint,
    CostEntry,
    CostTotals,
    MergeStatus,
    PendingMerge,
    SessionStatus,
    Slot,
)
from coordinator.store.store import STORE_FILENAME, Store, StoreConfig

__all__ = [
    "ACTIVE_STATUSES",
    "MIGRATIONS",
    "STORE_FILENAME",
    "ApiToken",
    "BuildSession",
    "BusOffset",
    "Checkpoint",
    "CostEntry",
    "CostTotals",
    "MergeStatus",
    "PendingMerge",
    "SessionStatus",
    "Slot",
    "Store",
    "StoreConfig",
]
