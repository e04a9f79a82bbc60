"""The build store: durable state of every build in SQLite on the head node (floor 2, no Ray).

:class:`Store` keeps sessions, slots, checkpoints, costs, bus offsets, pending merges, API
tokens and users' notification defaults; a restarted actor resumes from what it finds there.
:mod:`.schema` holds the append-only migrations and one typed row model per table, :mod:`.resume`
the checkpoint and resumption queries, :mod:`.tokens` the API-token queries and :mod:`.notify`
the notification defaults (mixins :class:`Store` inherits).
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
    NotifyDefaults,
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
    "NotifyDefaults",
    "PendingMerge",
    "SessionStatus",
    "Slot",
    "Store",
    "StoreConfig",
]
