"""A managed Redis that dies comes back (issue 18): same URL, its event log reloaded from the AOF.

Real ``redis-server`` processes, killed with SIGKILL from outside as the OOM killer would.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.bus.redis_server import ManagedRedis

pytestmark = [pytest.mark.timeout(60)]


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_killed_managed_redis_is_restarted_on_its_url_with_its_events(tmp_path: Path) -> None:
    server = ManagedRedis(tmp_path / "redis", appendfsync="always")
    server.start()
    server.keep_alive(interval_s=0.05)
    url, first = server.url, server.pid
    assert first is not None
    bus = ContextBus(url, BusConfig(prefix="keep"), sender="test")
    try:
        for n in range(5):
            await bus.publish_event("b1", "test.event", {"n": n})
        await bus.flush()
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: server.restarts == 1 and server.running)
        assert server.url == url and server.pid != first
        events = await bus.read_events("b1", count=100)  # the same client reconnects to the same URL
        assert [env.message.data["n"] for _, env in events] == list(range(5))
    finally:
        await bus.aclose()
        server.stop()
    pid = server.pid
    assert pid is None and not alive(first)


def test_a_stopped_server_is_not_brought_back(tmp_path: Path) -> None:
    server = ManagedRedis(tmp_path / "redis")
    server.start()
    server.keep_alive(interval_s=0.05)
    pid = server.pid
    assert pid is not None
    server.stop()
    time.sleep(0.3)  # several watch intervals: nothing may start again
    assert not server.running and server.restarts == 0 and not alive(pid)
