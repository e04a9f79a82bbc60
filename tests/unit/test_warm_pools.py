"""A warm pool's fill and refill, with a fake actor start (no Ray)."""

from __future__ import annotations

from typing import Any

from actors.pools.warm import WarmPool


class Starts:
    """A fake actor start: each "actor" is its name; counts how many were started."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def __call__(self, name: str) -> Any:
        self.started.append(name)
        return name


async def ready(handle: Any) -> None:
    return None


async def stop(handle: Any, name: str) -> None:
    return None


async def test_a_pool_tops_itself_up_after_a_take() -> None:
    starts = Starts()
    pool = WarmPool("agent", starts, size=2, ready=ready, stop=stop, refill_delay_s=0.0)
    await pool.fill()
    assert len(pool.take_many(2)) == 2
    assert pool._filling is not None
    await pool._filling
    assert len(pool) == 2 and len(starts.started) == 4
    await pool.close()


async def test_a_pool_that_does_not_refill_is_filled_once() -> None:
    starts = Starts()
    pool = WarmPool("agent", starts, size=2, ready=ready, stop=stop, refill_delay_s=0.0, refill=False)
    await pool.fill()
    assert pool.take() is not None and len(pool.take_many(5)) == 1
    assert len(pool) == 0 and len(starts.started) == 2 and pool._filling is None
    await pool.close()
