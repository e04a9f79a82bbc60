"""Durable build state in SQLite: sessions, checkpoints, costs, and what a restarted actor resumes from.

One file, ``KRIPTIK_HOME/store.db``, shared by the processes of one head node (the Control
actor, each BuildCoordinator, the HTTP app). Choices, and why:

* **WAL journal**: readers never block the one writer and a writer never blocks readers, so
  the API can list builds while coordinators write. A process killed mid-transaction
  leaves only uncommitted WAL frames, which the next opener ignores: the old data stays.
* **synchronous=NORMAL** (default; ``FULL`` is a config switch): in WAL mode NORMAL never
  corrupts the database and survives any *process* crash (SIGKILL, actor restart, the
  failures we design for), because a commit is in the OS page cache once ``COMMIT``
  returns. Only an OS crash or power loss may drop the last few commits, and resumption
  tolerates that by design: bus offsets only replay a little more (``mark_processed``
  makes replay idempotent), sandboxes are tagged with their build and are found again,
  and the managed Redis (AOF ``everysec``) has the same loss window anyway. FULL would add
  an fsync to each of the many small commits (offsets, processed ids) for no gain in
  that model.
* **busy timeout** (5 s) and ``BEGIN IMMEDIATE`` for every write transaction: the write
  lock is taken up front, so two writers queue on the busy handler instead of deadlocking
  on a read-to-write upgrade (which SQLite answers with an immediate ``SQLITE_BUSY``).
* **versioned migrations** (``coordinator.store.schema.MIGRATIONS``), each applied once inside a
  transaction with its ``schema_version`` row; re-opening is a no-op.

The store is a plain synchronous class used directly from async code, not wrapped in
``asyncio.to_thread``: every call is one or a few indexed statements on a local file
(tens of microseconds; a commit without fsync), cheaper than a thread hop, and a
``transaction()`` spanning several calls (``mark_processed`` plus the effects it guards)
needs them all on one connection in one thread. Hence the one rule: **never ``await``
inside ``with store.transaction():``** — another task's writes would join the open
transaction; the store detects that and raises :class:`StoreError`.

The checkpoint and resumption queries are in ``coordinator/store/resume.py``, the API-token
queries in ``coordinator/store/tokens.py`` and the users' notification defaults in
``coordinator/store/notify.py``, as mixins :class:`Store` inherits.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from coordinator.clock import Clock, SystemClock
from coordinator.store.notify import NotifyDefaultsQueries
from coordinator.store.resume import ResumeQueries
from coordinator.store.schema import (
    ACTIVE_STATUSES,
    MIGRATIONS,
    SESSION_UPDATABLE,
    ApiToken,
    BuildSession,
    BusOffset,
    Checkpoint,
    CostEntry,
    CostTotals,
    PendingMerge,
    SessionStatus,
    Slot,
    session_columns,
    session_from_row,
    validated,
)
from coordinator.store.tokens import ApiTokenQueries
from sandbox_agents.errors import BuildNotFoundError, InvalidInputError, StoreError
from sandbox_agents.settings import get_settings

logger = logging.getLogger(__name__)

STORE_FILENAME = "store.db"

__all__ = [
    "ApiToken",
    "BuildSession",
    "BusOffset",
    "Checkpoint",
    "CostEntry",
    "CostTotals",
    "PendingMerge",
    "SessionStatus",
    "Slot",
    "Store",
    "StoreConfig",
    "StoreError",
]


class StoreConfig(BaseModel):
    """Durability and locking settings of the store."""

    model_config = ConfigDict(extra="forbid")

    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """SQLite ``synchronous``: NORMAL survives process crashes; FULL also the last commit on power loss."""
    busy_timeout_ms: int = Field(default=5000, ge=0, le=600_000)
    """How long a writer waits for another process's write lock before failing."""


class Store(ResumeQueries, ApiTokenQueries, NotifyDefaultsQueries):
    """Typed access to the build store.

    Args:
        path: Database file; ``KRIPTIK_HOME/store.db`` when ``None``.
        clock: Timestamps of rows (injected in tests).
        config: Durability and locking settings.

    The constructor does no I/O; :meth:`start` opens the file and migrates it. The store is
    also a context manager (``with Store(path) as store:``).
    """

    def __init__(
        self, path: Path | str | None = None, *, clock: Clock | None = None, config: StoreConfig | None = None
    ):
        self._path = Path(path) if path is not None else None
        self.clock: Clock = clock or SystemClock()
        self.config = config or StoreConfig()
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._depth = 0
        self._owner: object = None

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path if self._path is not None else get_settings().home() / STORE_FILENAME

    def start(self) -> Store:
        """Open the database, set WAL and the durability pragmas, apply pending migrations.

        Returns:
            The store itself, so ``store = Store(path).start()`` reads well.

        Raises:
            StoreError: The file cannot be opened, or its schema is newer than this code.
        """
        if self._conn is not None:
            return self
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                path, timeout=self.config.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute(f"PRAGMA synchronous={self.config.synchronous}")
            conn.execute(f"PRAGMA busy_timeout={self.config.busy_timeout_ms}")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from exc
        if str(mode).lower() != "wal":
            logger.warning("store %s: journal mode is %s, not wal (file system without shared memory?)", path, mode)
        self._conn = conn
        self._migrate()
        return self

    def close(self) -> None:
        """Close the connection; uncommitted work was already rolled back by ``transaction()``."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        """The highest migration applied to this database."""
        row = self._db().execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        return int(row[0])

    def pragma(self, name: str) -> Any:
        """The value of a read-only pragma (``journal_mode``, ``synchronous``…), for checks and tests."""
        if not name.isidentifier():
            raise InvalidInputError(f"not a pragma name: {name!r}", field="name")
        return self._db().execute(f"PRAGMA {name}").fetchone()[0]

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is not started; call start() first")
        return self._conn

    def _migrate(self) -> None:
        conn = self._db()
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        latest = MIGRATIONS[-1][0]
        for version, description, statements in MIGRATIONS:
            with self.transaction():  # the version is re-read under the write lock: concurrent openers agree
                current = self.schema_version()
                if current > latest:
                    raise StoreError(f"store schema v{current} is newer than this code (v{latest})")
                if version <= current:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                    (version, description, self.clock.now()),
                )
                logger.info("store %s: migrated to v%d (%s)", self.path, version, description)

    # --- transactions ------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes inside commit together or not at all.

        Nested use joins the outer transaction through a savepoint: an exception inside
        the inner block undoes only the inner block's writes (if the caller catches it).

        Raises:
            StoreError: The write lock stayed busy past the busy timeout, or another
                asyncio task is inside an open transaction (an ``await`` in a transaction).
        """
        owner = _current_owner()
        with self._lock:
            conn = self._db()
            if self._depth and owner is not self._owner:
                raise StoreError("a store transaction is open across an await in another task")
            savepoint = f"sp{self._depth}"
            try:
                conn.execute("BEGIN IMMEDIATE" if self._depth == 0 else f"SAVEPOINT {savepoint}")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"store is busy: {exc}") from exc
            if self._depth == 0:
                self._owner = owner
            self._depth += 1
            try:
                yield conn
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    conn.execute("ROLLBACK")
                    self._owner = None
                else:
                    conn.execute(f"ROLLBACK TO {savepoint}")
                    conn.execute(f"RELEASE {savepoint}")
                raise
            self._depth -= 1
            if self._depth:
                conn.execute(f"RELEASE {savepoint}")
                return
            self._owner = None
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise StoreError(f"commit failed: {exc}") from exc

    # --- build sessions ----------------------------------------------------------------

    def create_session(
        self,
        user_id: str,
        prompt: str,
        *,
        session_id: str | None = None,
        status: SessionStatus = SessionStatus.QUEUED,
        phase: str = "",
        budget: dict[str, Any] | None = None,
    ) -> BuildSession:
        """Record a new build for ``user_id``.

        Raises:
            InvalidInputError: A field is invalid, or ``session_id`` is taken.
        """
        now = self.clock.now()
        session = validated(
            BuildSession,
            id=session_id or uuid.uuid4().hex[:16],
            user_id=user_id,
            prompt=prompt,
            status=status,
            phase=phase,
            budget=budget,
            started_at=now,
            last_activity_at=now,
        )
        columns = session_columns(session)
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        with self.transaction() as conn:
            try:
                conn.execute(f"INSERT INTO build_sessions ({names}) VALUES ({marks})", tuple(columns.values()))
            except sqlite3.IntegrityError as exc:
                raise InvalidInputError(f"build {session.id} already exists", field="session_id") from exc
        return session

    def get_session(self, session_id: str, user_id: str | None = None) -> BuildSession:
        """The build ``session_id``; with ``user_id``, only if that user owns it.

        Raises:
            BuildNotFoundError: No such build, or it belongs to another user (the two look the same).
        """
        sql, args = "SELECT * FROM build_sessions WHERE id = ?", [session_id]
        if user_id is not None:
            sql, args = sql + " AND user_id = ?", [session_id, user_id]
        row = self._db().execute(sql, args).fetchone()
        if row is None:
            raise BuildNotFoundError(f"no build {session_id!r}")
        return session_from_row(row)

    def delete_session(self, session_id: str) -> None:
        """Delete the build and every row of it (checkpoints, costs, merges, slots, bus offsets).

        Raises:
            BuildNotFoundError: No such build.
        """
        with self.transaction() as conn:
            if conn.execute("DELETE FROM build_sessions WHERE id = ?", (session_id,)).rowcount == 0:
                raise BuildNotFoundError(f"no build {session_id!r}")

    def list_sessions(
        self, user_id: str, status: SessionStatus | None = None, *, limit: int = 100
    ) -> list[BuildSession]:
        """A user's builds, newest first."""
        sql, args = "SELECT * FROM build_sessions WHERE user_id = ?", [user_id]
        if status is not None:
            sql, args = sql + " AND status = ?", [*args, SessionStatus(status).value]
        rows = self._db().execute(sql + " ORDER BY started_at DESC, rowid DESC LIMIT ?", [*args, limit]).fetchall()
        return [session_from_row(row) for row in rows]

    def active_sessions(self) -> list[BuildSession]:
        """Builds that were queued, running or paused: what the Control actor revives on start."""
        marks = ", ".join("?" for _ in ACTIVE_STATUSES)
        rows = (
            self._db()
            .execute(
                f"SELECT * FROM build_sessions WHERE status IN ({marks}) ORDER BY started_at, rowid",
                sorted(s.value for s in ACTIVE_STATUSES),
            )
            .fetchall()
        )
        return [session_from_row(row) for row in rows]

    def update_session(self, session_id: str, *, owner: str | None = None, **fields: Any) -> BuildSession:
        """Change some fields of a build; ``last_activity_at`` moves to now unless given.

        Args:
            session_id: The build.
            owner: When given, the build must belong to this user.
            **fields: New values, validated as :class:`BuildSession` fields.

        Raises:
            InvalidInputError: An unknown or immutable field, or an invalid value.
            BuildNotFoundError: No such build (for ``owner``).
        """
        unknown = sorted(set(fields) - SESSION_UPDATABLE)
        if unknown:
            raise InvalidInputError(f"cannot update build field(s) {unknown}", field=unknown[0])
        with self.transaction() as conn:
            current = self.get_session(session_id, owner)
            data = current.model_dump() | {"last_activity_at": self.clock.now()} | fields
            session = validated(BuildSession, **data)
            columns = session_columns(session)
            assignments = ", ".join(f"{name} = ?" for name in columns)
            conn.execute(f"UPDATE build_sessions SET {assignments} WHERE id = ?", (*columns.values(), session_id))
        return session

    # --- costs -------------------------------------------------------------------------

    def add_cost(
        self,
        session_id: str,
        *,
        source: str,
        estimated_cost: float,
        compute_seconds: float = 0.0,
        llm_tokens: int = 0,
    ) -> CostEntry:
        """Charge a build; the budget ledger prices the charge before it gets here."""
        entry = validated(
            CostEntry,
            id=0,
            session_id=session_id,
            compute_seconds=compute_seconds,
            llm_tokens=llm_tokens,
            estimated_cost=estimated_cost,
            source=source,
            created_at=self.clock.now(),
        )
        with self.transaction() as conn:
            try:
                cursor = conn.execute(
                    "INSERT INTO build_costs (session_id, compute_seconds, llm_tokens, estimated_cost, source,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (session_id, compute_seconds, llm_tokens, estimated_cost, source, entry.created_at),
                )
            except sqlite3.IntegrityError as exc:
                raise BuildNotFoundError(f"no build {session_id!r}") from exc
        entry.id = int(cursor.lastrowid or 0)
        return entry

    def cost_totals(self, session_id: str) -> CostTotals:
        """Sums of a build's charges."""
        row = (
            self._db()
            .execute(
                "SELECT COALESCE(SUM(compute_seconds), 0), COALESCE(SUM(llm_tokens), 0),"
                " COALESCE(SUM(estimated_cost), 0), COUNT(*) FROM build_costs WHERE session_id = ?",
                (session_id,),
            )
            .fetchone()
        )
        return CostTotals(compute_seconds=row[0], llm_tokens=row[1], estimated_cost=row[2], entries=row[3])


# --- helpers -----------------------------------------------------------------------------


def _current_owner() -> object:
    """The asyncio task running now (or None outside one): who owns an open transaction."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
