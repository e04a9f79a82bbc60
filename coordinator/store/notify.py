"""Users' ghost-mode notification defaults: one webhook per user, for builds that bring none.

A mixin of :class:`~coordinator.store.store.Store` (which owns the connection and ``transaction()``);
Control sets, reads and clears them for the API (``/api/notify``) and reads them at each submit.
The signing secret is stored as given (the sender needs it to sign), in the store file that also
holds the builds' state; no read of the API returns it.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from coordinator.store.schema import NotifyDefaults, validated

if TYPE_CHECKING:
    from coordinator.clock import Clock


class NotifyDefaultsQueries:
    """Notification-default rows of :class:`~coordinator.store.store.Store` (a mixin)."""

    if TYPE_CHECKING:
        clock: Clock

        def _db(self) -> sqlite3.Connection: ...

        def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def set_notify_defaults(self, user_id: str, url: str, secret: str | None, events: list[str]) -> NotifyDefaults:
        """Make ``url`` (signed with ``secret``, for ``events``) the webhook of ``user_id``'s builds, replacing any."""
        row = validated(
            NotifyDefaults, user_id=user_id, url=url, secret=secret, events=events, updated_at=self.clock.now()
        )
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO notify_defaults (user_id, url, secret, events_json, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET url = excluded.url, secret = excluded.secret,"
                " events_json = excluded.events_json, updated_at = excluded.updated_at",
                (user_id, url, secret, json.dumps(row.events), row.updated_at),
            )
        return row

    def notify_defaults(self, user_id: str) -> NotifyDefaults | None:
        """``user_id``'s webhook defaults, or ``None`` when they have none."""
        row = self._db().execute("SELECT * FROM notify_defaults WHERE user_id = ?", (user_id,)).fetchone()
        if row is None:
            return None
        data = dict(row)
        data["events"] = json.loads(data.pop("events_json"))
        return NotifyDefaults(**data)

    def clear_notify_defaults(self, user_id: str) -> bool:
        """Drop ``user_id``'s defaults; False when there were none."""
        with self.transaction() as conn:
            return conn.execute("DELETE FROM notify_defaults WHERE user_id = ?", (user_id,)).rowcount == 1
