"""Recording: wrap a live provider and write every turn it answers to a cassette file.

The file is rewritten atomically after each turn (see :meth:`Cassette.save`), so a crash at any
moment leaves a valid cassette holding every turn answered so far, and a restarted recorder
carries on from it. Replaying that file answers the same keys with the same turns.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Any

from sandbox_agents.llm.base import AssistantTurn, LLMProvider, LLMRequest
from sandbox_agents.llm.cassette import Cassette, CassetteTurn

logger = logging.getLogger(__name__)


class RecordingProvider:
    """A provider that answers through ``inner`` and records each answer under the request's key.

    Args:
        inner: The live provider (anthropic, openai) whose answers are recorded.
        path: The cassette file; if it exists, its turns are kept and new ones added.
        meta: Notes stored in the cassette's ``meta`` (the provider and a timestamp are added).
    """

    def __init__(self, inner: LLMProvider, path: str | Path, *, meta: dict[str, Any] | None = None) -> None:
        self.inner = inner
        self.path = Path(path)
        self.name = f"recording:{inner.name}"
        self._meta = dict(meta or {})
        self._cassette: Cassette | None = None
        # One writer at a time: turns of many tasks may finish together, and each save rewrites the file.
        self._lock = asyncio.Lock()

    def _open(self) -> Cassette:
        if self._cassette is None:
            if self.path.exists():
                self._cassette = Cassette.load(self.path)
                logger.info("recorder: continuing %s (%d turns)", self.path, len(self._cassette))
            else:
                self._cassette = Cassette()
            self._cassette.meta.setdefault("recorded_with", self.inner.name)
            self._cassette.meta.setdefault("recorded_at", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
            self._cassette.meta.update(self._meta)
        return self._cassette

    async def complete(self, request: LLMRequest) -> AssistantTurn:
        """Answer through the live provider, then record the answer before returning it.

        Raises:
            LLMError: Whatever the live provider raised; failed turns are not recorded.
        """
        turn = await self.inner.complete(request)
        entry = CassetteTurn.from_assistant_turn(request.key, turn)
        async with self._lock:
            cassette = self._open()
            if cassette.put(entry):
                logger.warning("recorder: turn %s recorded again; the newer answer replaces the older", request.key)
            await asyncio.to_thread(cassette.save, self.path)
        return turn

    async def aclose(self) -> None:
        """Close the live provider (the cassette is already on disk after every turn)."""
        await self.inner.aclose()
