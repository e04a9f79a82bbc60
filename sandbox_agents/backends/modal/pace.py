"""The fleet's pace for Modal creates: a token bucket that answers "wait this long", never waits itself.

Modal limits how fast a workspace creates sandboxes, and every proxy of a fleet creates its own, so
the rate offered to Modal must be bounded where all of them meet: one bucket for the cluster (the
actor in ``actors/modal_pace.py`` holds it). The bucket reserves: each :meth:`TokenBucket.reserve`
takes a token at once, going into debt when none is left, and answers how long the caller must
wait until that token exists. The caller sleeps, the bucket never blocks, so one event loop serves
any number of waiting creates. A rate of 0 is no limit.

Time is an injected monotonic clock, so tests step it instead of sleeping.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from sandbox_agents.errors import InvalidInputError

#: Grants kept for :meth:`TokenBucket.grants` (how the pace is seen, in tests and by an operator).
GRANTS_KEPT = 1000


class Grant(BaseModel):
    """One reserved token: when it was asked for and when its create may start (the bucket's clock)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    asked_at: float
    start_at: float

    @property
    def wait_s(self) -> float:
        return self.start_at - self.asked_at


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` per second; a reservation may drive it below zero.

    Args:
        rate: Tokens per second; 0 grants every reservation at once (no limit).
        burst: Most tokens it holds (it starts full): creates that may start together after a quiet spell.
        monotonic: The clock reservations are made on.

    Raises:
        InvalidInputError: a negative or infinite rate, or a burst below 1.
    """

    def __init__(self, rate: float, burst: int, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._rate, self._burst = _checked(rate, burst)
        self._tokens = float(self._burst)
        self._updated = monotonic()
        self._grants: collections.deque[Grant] = collections.deque(maxlen=GRANTS_KEPT)

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> int:
        return self._burst

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self._burst), self._tokens + (now - self._updated) * self._rate)
        self._updated = now

    def configure(self, rate: float, burst: int) -> None:
        """Change rate and burst from now on: what accrued so far accrued at the old rate.

        A debt (reservations not yet due) is repaid at the new rate; a smaller burst caps the tokens held.

        Raises:
            InvalidInputError: a negative or infinite rate, or a burst below 1.
        """
        rate, burst = _checked(rate, burst)
        if (rate, burst) == (self._rate, self._burst):
            return
        self._refill(self._monotonic())
        if self._rate == 0:  # an unlimited bucket kept no count: it starts full
            self._tokens = float(burst)
        self._rate, self._burst = rate, burst
        self._tokens = min(self._tokens, float(burst))

    def reserve(self) -> float:
        """Take one token now; returns the seconds until it exists (0: go at once)."""
        now = self._monotonic()
        if self._rate == 0:
            wait = 0.0
        else:
            self._refill(now)
            self._tokens -= 1.0
            wait = max(0.0, -self._tokens / self._rate)
        self._grants.append(Grant(asked_at=now, start_at=now + wait))
        return wait

    def backlog_s(self) -> float:
        """How long from now until the bucket is out of debt (the last reservation's wait, if made now)."""
        if self._rate == 0:
            return 0.0
        self._refill(self._monotonic())
        return max(0.0, -self._tokens / self._rate)

    def grants(self) -> list[Grant]:
        """The last :data:`GRANTS_KEPT` reservations, oldest first."""
        return list(self._grants)


def _checked(rate: float, burst: int) -> tuple[float, int]:
    if not (math.isfinite(rate) and rate >= 0):
        raise InvalidInputError(
            f"a create pace's rate must be a finite number >= 0 per second, not {rate!r}", field="rate"
        )
    if burst < 1:
        raise InvalidInputError(f"a create pace's burst must be >= 1, not {burst!r}", field="burst")
    return float(rate), int(burst)
