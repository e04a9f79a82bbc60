"""Replay: answer each turn from cassettes by its (role, task, turn) key, never inventing one.

Because the key is part of the request, the answer does not depend on the order in which actors
happen to ask: a whole multi-sandbox build replays identically however its turns interleave.
After loading, the cassette is only read, so one provider may serve many tasks and threads.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from sandbox_agents.errors import CassetteMissError
from sandbox_agents.llm.base import AssistantTurn, LLMRequest, TurnKey
from sandbox_agents.llm.cassette import Cassette, load_many
from sandbox_agents.llm.config import ReplayConfig

logger = logging.getLogger(__name__)


def describe_miss(cassette: Cassette, key: TurnKey, *, sources: str = "") -> str:
    """Why there is no turn for ``key``, naming the nearest keys the cassette does have."""
    where = f" in {sources}" if sources else ""
    head = f"no recorded turn for role={key.role!r}, task={key.task!r}, turn={key.turn}{where}"
    keys = cassette.keys()
    same_task = [k.turn for k in keys if k.role == key.role and k.task == key.task]
    if same_task:
        return f"{head}; recorded turns for this role and task: {_ranges(same_task)}"
    tasks = sorted({k.task for k in keys if k.role == key.role})
    if tasks:
        return f"{head}; role {key.role!r} has turns for tasks: {', '.join(map(repr, tasks[:20]))}"
    roles = sorted({k.role for k in keys})
    if roles:
        return (
            f"{head}; the cassette has no turns for role {key.role!r}; it has roles: {', '.join(map(repr, roles[:20]))}"
        )
    return f"{head}; the cassette is empty"


def _ranges(turns: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2, 5``."""
    out: list[str] = []
    start = prev = turns[0]
    for t in turns[1:] + [None]:  # type: ignore[list-item]
        if t is not None and t == prev + 1:
            prev = t
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if t is not None:
            start = prev = t
    return ", ".join(out)


class ReplayProvider:
    """An LLM provider that answers from cassettes.

    Args:
        config: The cassette files to read (lazily, on the first turn: constructors do no I/O).
        cassette: An already loaded cassette instead of files (tests, the replay server).

    Raises:
        ValueError: Neither ``config`` nor ``cassette`` is given.
    """

    name = "replay"

    def __init__(self, config: ReplayConfig | None = None, *, cassette: Cassette | None = None) -> None:
        if config is None and cassette is None:
            raise ValueError("ReplayProvider needs a ReplayConfig or a Cassette")
        self.config = config
        self._cassette = cassette
        self._sources = ", ".join(str(p) for p in config.cassettes) if config else ""
        self._default_model = config.model if config else "replay"
        self._load_lock = threading.Lock()
        self._served: Counter[TurnKey] = Counter()
        self._served_lock = threading.Lock()

    @classmethod
    def from_cassette(cls, cassette: Cassette) -> ReplayProvider:
        """A provider over a cassette already in memory."""
        return cls(cassette=cassette)

    @property
    def cassette(self) -> Cassette:
        """The merged cassette, loaded on first use (once, even when threads race for it)."""
        if self._cassette is None:
            with self._load_lock:
                if self._cassette is None:
                    assert self.config is not None
                    self._cassette = load_many(list(self.config.cassettes))
                    logger.info("replay: loaded %d turns from %s", len(self._cassette), self._sources)
        return self._cassette

    def lookup(self, key: TurnKey) -> AssistantTurn:
        """The recorded answer for ``key``.

        Raises:
            CassetteMissError: Nothing is recorded for ``key``; the message names the nearest keys.
        """
        entry = self.cassette.lookup(key)
        if entry is None:
            message = describe_miss(self.cassette, key, sources=self._sources)
            raise CassetteMissError(message, role=key.role, task=key.task, turn=key.turn)
        with self._served_lock:
            self._served[key] += 1
            if self._served[key] == 2:
                # Asking twice is legal (a restarted actor re-asks), but worth knowing when debugging a build.
                logger.info("replay: turn %s served more than once", key)
        return entry.to_assistant_turn(self._default_model)

    async def complete(self, request: LLMRequest) -> AssistantTurn:
        """The recorded answer for ``request.key`` (the request's messages are not consulted).

        Raises:
            CassetteMissError: Nothing is recorded for the key.
            CassetteFormatError: A cassette file is unreadable or invalid (on the first call).
        """
        return self.lookup(request.key)

    def unserved(self) -> list[TurnKey]:
        """Recorded keys no request has asked for yet: a replayed build that leaves some has diverged."""
        with self._served_lock:
            return [k for k in self.cassette.keys() if k not in self._served]

    async def aclose(self) -> None:
        """Nothing to close; present for the protocol."""
