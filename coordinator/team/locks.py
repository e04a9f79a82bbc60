"""The per-file lock service of one sandbox: one holder per workspace path at a time.

Every agent of a sandbox's team writes through it (the SandboxTeam actor serves
``acquire``/``release`` to its Agent actors), and :class:`~coordinator.team.runner.TeamRunner`
drops an agent's locks when its attempt ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sandbox_agents.errors import InvalidInputError


class FileLockService:
    """One holder per workspace path at a time, shared by every agent of a sandbox.

    An agent's tools take the lock of a path around each write, edit and remove, so two
    agents never interleave a read-modify-write of one file. A holder's locks are dropped
    when its attempt ends (:meth:`release_all`), so a crashed agent cannot wedge a file.
    """

    def __init__(self) -> None:
        self._held: dict[str, str] = {}
        self._freed: dict[str, asyncio.Event] = {}

    async def acquire(self, path: str, holder: str) -> None:
        """Wait until ``path`` is free, then hold it for ``holder``.

        Raises:
            InvalidInputError: ``holder`` already holds ``path`` (the lock is not re-entrant).
        """
        if not path or not holder:
            raise InvalidInputError("path and holder must be non-empty", field="path")
        while path in self._held:
            if self._held[path] == holder:
                raise InvalidInputError(f"{holder} already holds the lock of {path}", field="path")
            await self._freed.setdefault(path, asyncio.Event()).wait()
        self._held[path] = holder

    def release(self, path: str, holder: str) -> None:
        """Free ``path``. Raises InvalidInputError when ``holder`` does not hold it."""
        if self._held.get(path) != holder:
            raise InvalidInputError(f"{holder} does not hold the lock of {path}", field="path")
        del self._held[path]
        event = self._freed.pop(path, None)
        if event is not None:
            event.set()

    def release_all(self, holder: str) -> list[str]:
        """Free every path ``holder`` holds; returns them."""
        paths = [p for p, h in self._held.items() if h == holder]
        for path in paths:
            self.release(path, holder)
        return paths

    @contextlib.asynccontextmanager
    async def lock(self, path: str, holder: str) -> AsyncIterator[None]:
        await self.acquire(path, holder)
        try:
            yield
        finally:
            if self._held.get(path) == holder:
                self.release(path, holder)

    def held(self) -> dict[str, str]:
        return dict(self._held)
