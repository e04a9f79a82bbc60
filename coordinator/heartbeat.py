"""When a coordinator that does not answer its heartbeat counts as wedged.

A heartbeat that times out once is not proof of a wedge: on a loaded host a coordinator whose
actor is still being created (or re-created after a crash) cannot answer for several seconds,
and restarting it then only throws away the incarnation that is starting. A wedge is
persistent, so Control restarts a coordinator only after ``limit`` heartbeat timeouts in a
row; any answer (or any other outcome of a round) starts the count again.
"""

from __future__ import annotations

from sandbox_agents.errors import InvalidInputError


class MissedHeartbeats:
    """Consecutive heartbeat timeouts per build, and the decision to restart."""

    def __init__(self, limit: int) -> None:
        """Args:
        limit: Timeouts in a row after which a coordinator is wedged (at least 1).
        """
        if limit < 1:
            raise InvalidInputError(f"heartbeat miss limit must be at least 1, got {limit}")
        self.limit = limit
        self._missed: dict[str, int] = {}

    def answered(self, build_id: str) -> None:
        """The coordinator answered (or its round ended otherwise): the count starts again."""
        self._missed.pop(build_id, None)

    def missed(self, build_id: str) -> bool:
        """Count one timeout; True when it makes ``limit`` in a row (the count then starts again)."""
        count = self._missed.get(build_id, 0) + 1
        if count >= self.limit:
            self._missed.pop(build_id, None)
            return True
        self._missed[build_id] = count
        return False

    def count(self, build_id: str) -> int:
        """Timeouts in a row so far for ``build_id``."""
        return self._missed.get(build_id, 0)
