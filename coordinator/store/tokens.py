"""API tokens: the hashes of the tokens users call the HTTP API with.

A mixin of :class:`~coordinator.store.store.Store` (which owns the connection and ``transaction()``);
``serve/auth.py`` registers, finds and revokes tokens through it. Only hashes are stored.
"""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from coordinator.store.schema import ApiToken
from sandbox_agents.errors import InvalidInputError

if TYPE_CHECKING:
    from coordinator.clock import Clock


class ApiTokenQueries:
    """API-token rows of :class:`~coordinator.store.store.Store` (a mixin)."""

    if TYPE_CHECKING:
        clock: Clock

        def _db(self) -> sqlite3.Connection: ...

        def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def add_api_token(self, user_id: str, token_hash: str) -> ApiToken:
        """Store the hash of a new API token of ``user_id``."""
        token = ApiToken(id=uuid.uuid4().hex[:16], user_id=user_id, token_hash=token_hash, created_at=self.clock.now())
        with self.transaction() as conn:
            try:
                conn.execute(
                    "INSERT INTO api_tokens (id, user_id, token_hash, created_at) VALUES (?, ?, ?, ?)",
                    (token.id, user_id, token_hash, token.created_at),
                )
            except sqlite3.IntegrityError as exc:
                raise InvalidInputError("that token is already registered", field="token_hash") from exc
        return token

    def find_api_token(self, token_hash: str) -> ApiToken | None:
        """The unrevoked token with this hash, or ``None``."""
        row = (
            self._db()
            .execute("SELECT * FROM api_tokens WHERE token_hash = ? AND revoked = 0", (token_hash,))
            .fetchone()
        )
        return None if row is None else ApiToken(**dict(row))

    def revoke_api_token(self, token_id: str, user_id: str | None = None) -> bool:
        """Revoke a token (of ``user_id`` when given); False when there was none to revoke."""
        sql, args = "UPDATE api_tokens SET revoked = 1 WHERE id = ? AND revoked = 0", [token_id]
        if user_id is not None:
            sql, args = sql + " AND user_id = ?", [token_id, user_id]
        with self.transaction() as conn:
            return conn.execute(sql, args).rowcount == 1
