"""What the build store keeps: its versioned migrations and one typed row model per table.

Migrations are append-only: version ``n`` is applied once, in order, inside one
transaction together with its ``schema_version`` row, so a store opened by an older or a
crashed process is either at version ``n-1`` or at ``n``, never in between. To change the
schema, add a migration; never edit one that has shipped.

JSON columns (``*_json`` and the id lists) are decoded into the row models' fields, so
callers never see JSON text.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from sandbox_agents.backends.base import SnapshotRef
from sandbox_agents.errors import InvalidInputError

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "build sessions, checkpoints, costs, resumption state, api tokens",
        (
            """CREATE TABLE build_sessions (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                status TEXT NOT NULL,
                phase TEXT NOT NULL DEFAULT '',
                prompt TEXT NOT NULL DEFAULT '',
                contract_json TEXT,
                contract_hash TEXT,
                sandbox_ids TEXT NOT NULL DEFAULT '[]',
                checkpoint_ids TEXT NOT NULL DEFAULT '[]',
                budget_json TEXT,
                started_at REAL NOT NULL,
                last_activity_at REAL NOT NULL,
                finished_at REAL,
                error TEXT
            )""",
            "CREATE INDEX build_sessions_user ON build_sessions (user_id, started_at)",
            "CREATE INDEX build_sessions_status ON build_sessions (status)",
            """CREATE TABLE sandbox_checkpoints (
                id TEXT PRIMARY KEY,
                session_id TEXT NOT NULL REFERENCES build_sessions (id) ON DELETE CASCADE,
                sandbox_id TEXT NOT NULL,
                slot TEXT NOT NULL,
                snapshot_id TEXT NOT NULL,
                snapshot_json TEXT NOT NULL,
                phase TEXT NOT NULL DEFAULT '',
                created_at REAL NOT NULL
            )""",
            "CREATE INDEX sandbox_checkpoints_slot ON sandbox_checkpoints (session_id, slot, created_at)",
            """CREATE TABLE build_costs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                session_id TEXT NOT NULL REFERENCES build_sessions (id) ON DELETE CASCADE,
                compute_seconds REAL NOT NULL DEFAULT 0,
                llm_tokens INTEGER NOT NULL DEFAULT 0,
                estimated_cost REAL NOT NULL DEFAULT 0,
                source TEXT NOT NULL,
                created_at REAL NOT NULL
            )""",
            "CREATE INDEX build_costs_session ON build_costs (session_id)",
            """CREATE TABLE bus_offsets (
                session_id TEXT NOT NULL REFERENCES build_sessions (id) ON DELETE CASCADE,
                stream TEXT NOT NULL,
                consumer_group TEXT NOT NULL,
                last_acked_id TEXT NOT NULL,
                updated_at REAL NOT NULL,
                PRIMARY KEY (session_id, stream, consumer_group)
            )""",
            """CREATE TABLE pending_merges (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                session_id TEXT NOT NULL REFERENCES build_sessions (id) ON DELETE CASCADE,
                component TEXT NOT NULL,
                ref_json TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT 'pending',
                created_at REAL NOT NULL,
                resolved_at REAL
            )""",
            "CREATE INDEX pending_merges_session ON pending_merges (session_id, status)",
            """CREATE TABLE processed_messages (
                session_id TEXT NOT NULL REFERENCES build_sessions (id) ON DELETE CASCADE,
                message_id TEXT NOT NULL,
                processed_at REAL NOT NULL,
                PRIMARY KEY (session_id, message_id)
            ) WITHOUT ROWID""",
            """CREATE TABLE slots (
                session_id TEXT NOT NULL REFERENCES build_sessions (id) ON DELETE CASCADE,
                slot TEXT NOT NULL,
                component TEXT NOT NULL,
                candidate INTEGER NOT NULL DEFAULT 0,
                sandbox_id TEXT,
                proxy_name TEXT,
                status TEXT NOT NULL,
                updated_at REAL NOT NULL,
                PRIMARY KEY (session_id, slot)
            )""",
            """CREATE TABLE api_tokens (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                token_hash TEXT NOT NULL UNIQUE,
                created_at REAL NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX api_tokens_user ON api_tokens (user_id)",
        ),
    ),
    (
        2,
        "the build's preview URL, so status is answered from the store alone",
        ("ALTER TABLE build_sessions ADD COLUMN preview_url TEXT",),
    ),
    (
        3,
        "each resolved merge's commit or rejection reason, so status lists the build's merges",
        (
            "ALTER TABLE pending_merges ADD COLUMN commit_id TEXT",
            "ALTER TABLE pending_merges ADD COLUMN reason TEXT NOT NULL DEFAULT ''",
        ),
    ),
    (
        4,
        "each user's ghost-mode notification defaults, for builds that bring none of their own",
        (
            """CREATE TABLE notify_defaults (
                user_id TEXT PRIMARY KEY,
                url TEXT NOT NULL,
                secret TEXT,
                events_json TEXT NOT NULL,
                updated_at REAL NOT NULL
            )""",
        ),
    ),
    (
        5,
        "each slot's agents, swarm score and last sandbox, so status shows the fleet after the build too",
        (
            "ALTER TABLE slots ADD COLUMN agents_json TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE slots ADD COLUMN swarm_score REAL",
            "ALTER TABLE slots ADD COLUMN last_sandbox_id TEXT",
        ),
    ),
)
"""(version, description, statements), in the order they are applied."""


class SessionStatus(enum.StrEnum):
    """Life of a build session; the first three are *active* and revived after a restart."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    """Waiting for the user (budget exhausted, or paused by hand); its sandboxes are kept."""
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES: frozenset[SessionStatus] = frozenset(
    {SessionStatus.QUEUED, SessionStatus.RUNNING, SessionStatus.PAUSED}
)
"""Sessions the Control actor revives on start."""


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BuildSession(_Row):
    """One build: who asked for what, where it is, and what it runs on."""

    id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=256)
    """Owner; every lookup from the API is scoped to it."""
    status: SessionStatus = SessionStatus.QUEUED
    phase: str = ""
    """Phase of the flow (``intent``, ``fleet``, ``build``, ``verify``, ``merge``, ``preview``, ``done``)."""
    prompt: str = ""
    contract: dict[str, Any] | None = None
    """The locked IntentContract, as JSON (stored in ``contract_json``)."""
    contract_hash: str | None = None
    """Digest of the locked contract, to detect drift."""
    sandbox_ids: list[str] = Field(default_factory=list)
    """Sandboxes the build owns, so a new coordinator reconnects to them by id."""
    checkpoint_ids: list[str] = Field(default_factory=list)
    """Checkpoints taken, oldest first (appended by ``add_checkpoint``)."""
    budget: dict[str, Any] | None = None
    """Budget settings (``budget.Budget`` as JSON, stored in ``budget_json``)."""
    started_at: float
    last_activity_at: float
    finished_at: float | None = None
    error: str | None = None
    preview_url: str | None = None
    """The build's stable preview URL once the preview serves merged code."""


SESSION_UPDATABLE: frozenset[str] = frozenset(BuildSession.model_fields) - {"id", "user_id", "started_at"}
"""Fields ``update_session`` may change; identity and origin never change."""


class Checkpoint(_Row):
    """A snapshot of one slot's sandbox, from which the slot can be respawned."""

    id: str
    session_id: str
    sandbox_id: str
    slot: str
    snapshot: SnapshotRef
    phase: str = ""
    created_at: float


class CostEntry(_Row):
    """One charge against a build's budget."""

    id: int
    session_id: str
    compute_seconds: float = Field(default=0.0, ge=0)
    llm_tokens: int = Field(default=0, ge=0)
    estimated_cost: float = Field(default=0.0, ge=0)
    """US dollars, priced by the budget ledger's rates."""
    source: str
    """What was charged: ``compute:{backend}:{slot}`` (a Modal one ends ``;basis=wall*rate``: wall time
    priced at the list rates, as Modal reports no cost) or ``llm:{model}:{role}``."""
    created_at: float


class CostTotals(_Row):
    """Sums over a build's cost entries."""

    compute_seconds: float = 0.0
    llm_tokens: int = 0
    estimated_cost: float = 0.0
    entries: int = 0


class BusOffset(_Row):
    """The last bus entry a consumer group acknowledged, to resume reading after it."""

    session_id: str
    stream: str
    group: str
    last_acked_id: str
    updated_at: float


MergeStatus = Literal["pending", "merged", "rejected", "abandoned"]


class PendingMerge(_Row):
    """One admission of a component to the merge gate: pending (re-verified after a restart) until resolved.

    Resolved rows stay: they are the build's merge history that status shows.
    """

    id: int
    session_id: str
    component: str
    ref: dict[str, Any]
    """What to merge (candidate, sandbox, snapshot, commit…), as the merge gate describes it."""
    status: MergeStatus = "pending"
    created_at: float
    resolved_at: float | None = None
    commit: str | None = None
    """``main``'s commit once merged (None while pending, when rejected, or when recovered without it)."""
    reason: str = ""
    """The gate's reason: why it rejected the merge, or how it was resolved."""


class Slot(_Row):
    """One component candidate's place in the fleet: its sandbox and its proxy actor."""

    session_id: str
    slot: str = Field(min_length=1)
    component: str
    candidate: int = Field(default=0, ge=0)
    """Index of the candidate in a tournament (0 without one)."""
    sandbox_id: str | None = None
    proxy_name: str | None = None
    """Ray actor name of the slot's SandboxProxy."""
    status: str = "pending"
    updated_at: float = 0.0
    agents: list[str] = Field(default_factory=list)
    """Names of the agents that ran a task in the slot (stored in ``agents_json``)."""
    swarm_score: float | None = Field(default=None, ge=0, le=1)
    """The verification swarm's last score of the slot's sandbox."""
    last_sandbox_id: str | None = None
    """The last sandbox the slot had: still named once the slot is released (``sandbox_id`` is then None)."""


class ApiToken(_Row):
    """An API token of a user; only its hash is stored."""

    id: str
    user_id: str
    token_hash: str
    """Hex SHA-256 of the token; the token itself is shown once and never stored."""
    created_at: float
    revoked: bool = False


class NotifyDefaults(_Row):
    """A user's ghost-mode webhook, used by each of their builds that brings no ``notify`` of its own."""

    user_id: str = Field(min_length=1, max_length=256)
    url: str
    secret: SecretStr | None = None
    """The signing key: the sender needs it as given, so it cannot be hashed. Never shown again."""
    events: list[str] = Field(default_factory=list)
    """Event names (``coordinator.webhooks.NotifyEvent``), stored in ``events_json``."""
    updated_at: float


# --- row conversion: JSON columns in and out ----------------------------------------------

M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], **data: Any) -> M:
    """Build a row model, refusing bad input with our InvalidInputError instead of pydantic's error."""
    try:
        return model(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidInputError(f"invalid {model.__name__}: {exc}", field=field) from exc


def session_columns(session: BuildSession) -> dict[str, Any]:
    """A session as its table's column values (JSON fields encoded)."""
    data = session.model_dump(mode="json")
    return {
        "id": data["id"],
        "user_id": data["user_id"],
        "status": data["status"],
        "phase": data["phase"],
        "prompt": data["prompt"],
        "contract_json": None if data["contract"] is None else json.dumps(data["contract"]),
        "contract_hash": data["contract_hash"],
        "sandbox_ids": json.dumps(data["sandbox_ids"]),
        "checkpoint_ids": json.dumps(data["checkpoint_ids"]),
        "budget_json": None if data["budget"] is None else json.dumps(data["budget"]),
        "started_at": data["started_at"],
        "last_activity_at": data["last_activity_at"],
        "finished_at": data["finished_at"],
        "error": data["error"],
        "preview_url": data["preview_url"],
    }


def slot_columns(slot: Slot) -> dict[str, Any]:
    """A slot as its table's column values (its agents as ``agents_json``)."""
    data = slot.model_dump()
    data["agents_json"] = json.dumps(data.pop("agents"))
    return data


def slot_from_row(row: sqlite3.Row) -> Slot:
    data = dict(row)
    data["agents"] = json.loads(data.pop("agents_json"))
    return Slot(**data)


def session_from_row(row: sqlite3.Row) -> BuildSession:
    data = dict(row)
    contract, budget = data.pop("contract_json"), data.pop("budget_json")
    data["contract"] = None if contract is None else json.loads(contract)
    data["budget"] = None if budget is None else json.loads(budget)
    data["sandbox_ids"] = json.loads(data["sandbox_ids"])
    data["checkpoint_ids"] = json.loads(data["checkpoint_ids"])
    return BuildSession(**data)


def checkpoint_from_row(row: sqlite3.Row) -> Checkpoint:
    data = dict(row)
    data.pop("snapshot_id")
    data["snapshot"] = SnapshotRef.model_validate_json(data.pop("snapshot_json"))
    return Checkpoint(**data)


def merge_from_row(row: sqlite3.Row) -> PendingMerge:
    data = dict(row)
    data["ref"] = json.loads(data.pop("ref_json"))
    data["commit"] = data.pop("commit_id")
    return PendingMerge(**data)


def stream_id(value: str) -> tuple[int, int] | None:
    """A Redis stream id ``ms-seq`` as a comparable pair, or None when it is not one."""
    ms, _, seq = value.partition("-")
    if not ms.isdigit() or (seq and not seq.isdigit()):
        return None
    return int(ms), int(seq or 0)


def older(new: str, stored: str) -> bool:
    a, b = stream_id(new), stream_id(stored)
    return a is not None and b is not None and a < b
