"""Injected time: every timeout, TTL, heartbeat, retry backoff and timestamp of floor 2 reads a :class:`Clock`.

Production code gets :class:`SystemClock`; unit tests get :class:`FakeClock` and move time
forward with :meth:`FakeClock.advance` instead of sleeping, so retry and TTL logic is tested
in microseconds and deterministically (Ray Serve's ``MockTimer`` idea).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol, runtime_checkable

from sandbox_agents.errors import InvalidInputError


@runtime_checkable
class Clock(Protocol):
    """The three questions floor-2 code asks about time."""

    def now(self) -> float:
        """Wall-clock time, seconds since the epoch: for timestamps that are stored or shown."""
        ...

    def monotonic(self) -> float:
        """A clock that never goes back: for durations, deadlines and timeouts."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock: ``time.time``, ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when a test says so.

    ``sleep`` parks the caller until :meth:`advance` moves time past its deadline. Sleepers
    are woken in deadline order (ties in the order they started sleeping), so the same test
    always interleaves the same way. ``sleeps`` records every requested duration, which is
    what retry tests assert on.

    Args:
        start: Wall-clock time at creation (seconds since the epoch).
        auto_advance: When true, ``sleep`` moves time forward by itself and returns at once:
            convenient when a test only cares about the durations asked for, not about
            what happens while something sleeps.
    """

    def __init__(self, start: float = 1_700_000_000.0, *, auto_advance: bool = False) -> None:
        self._wall_start = start
        self._elapsed = 0.0
        self._auto = auto_advance
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self.sleeps: list[float] = []
        """Every duration passed to :meth:`sleep`, in call order."""

    def now(self) -> float:
        return self._wall_start + self._elapsed

    def monotonic(self) -> float:
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self.sleeps.append(seconds)
        if self._auto:
            self._elapsed += seconds
            await asyncio.sleep(0)  # still a suspension point, as a real sleep is
            return
        if seconds == 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._seq), future))
        try:
            await future
        finally:
            if not future.done():  # cancelled while sleeping: forget it
                future.cancel()

    def advance(self, seconds: float) -> int:
        """Move time forward and wake every sleeper whose deadline has come.

        The woken coroutines run the next time the event loop gets control (``await
        asyncio.sleep(0)`` or any other await in the test).

        Args:
            seconds: How far to move; never negative (time does not go back).

        Returns:
            How many sleepers were woken.

        Raises:
            InvalidInputError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise InvalidInputError("a clock cannot go back", field="seconds")
        self._elapsed += seconds
        woken = 0
        while self._sleepers and self._sleepers[0][0] <= self._elapsed:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
                woken += 1
        return woken

    @property
    def sleeping(self) -> int:
        """How many coroutines are parked in :meth:`sleep` now."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    async def wait_for_sleepers(self, count: int = 1, *, max_turns: int = 1000) -> None:
        """Let the event loop run until ``count`` coroutines sleep on this clock.

        This is bounded by event-loop turns, not by time, so it never really waits.

        Raises:
            TimeoutError: Fewer than ``count`` sleepers after ``max_turns`` turns.
        """
        for _ in range(max_turns):
            if self.sleeping >= count:
                return
            await asyncio.sleep(0)
        raise TimeoutError(f"expected {count} sleepers on the fake clock, found {self.sleeping}")
