"""Busy intervals: when at least one piece of some kind of work was running, as wall-clock intervals.

A SandboxProxy keeps a :class:`BusyIntervals` for the commands it runs (exec, install) and an agent
loop one for its model calls. They travel on ``busy.report`` events, and ``kriptik demo`` subtracts
the union of a component's intervals from the component's pipeline time (:func:`covered`): what
is left is time in which none of its real work ran, the pipeline's own overhead. Intervals use the
wall clock (seconds since the epoch), the clock the event log's timestamps use, so a reader can
lay them over the log.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator

Interval = tuple[float, float]
"""``(start, end)``, seconds since the epoch."""


class BusyIntervals:
    """Records when at least one piece of work was running; overlapping work counts once.

    Args:
        clock: The wall clock (injected in tests).
        keep: Most intervals kept; the oldest go first (a long-lived proxy must not grow forever).
    """

    def __init__(self, clock: Callable[[], float] = time.time, *, keep: int = 20_000) -> None:
        self._clock = clock
        self._keep = keep
        self._running = 0
        self._since = 0.0
        self._done: list[Interval] = []

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Around one piece of work (it may overlap others)."""
        if self._running == 0:
            self._since = self._clock()
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            if self._running == 0:
                self._close(self._since, self._clock())

    def _close(self, start: float, end: float) -> None:
        if self._done and start <= self._done[-1][1]:
            start = min(start, self._done[-1][0])
            self._done[-1] = (start, max(end, self._done[-1][1]))
        else:
            self._done.append((start, end))
        if len(self._done) > self._keep:
            del self._done[: len(self._done) - self._keep]

    def intervals(self, after: float = 0.0) -> list[Interval]:
        """The intervals (the one still running up to now) from ``after`` on, cut at ``after``."""
        found = list(self._done)
        if self._running:
            found.append((self._since, self._clock()))
        return [(max(start, after), end) for start, end in found if end > after]

    def seconds(self, after: float = 0.0) -> float:
        """How long work ran from ``after`` on."""
        return sum(end - start for start, end in self.intervals(after))


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """The intervals merged: sorted, disjoint, covering exactly what the given ones cover."""
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def covered(intervals: Iterable[Interval], start: float, end: float) -> float:
    """How much of ``[start, end]`` the intervals cover (each moment once)."""
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in union(intervals))


def rounded(intervals: Iterable[Interval], digits: int = 3) -> list[Interval]:
    """The intervals with their ends rounded (to milliseconds by default), for an event."""
    return [(round(start, digits), round(end, digits)) for start, end in intervals]
