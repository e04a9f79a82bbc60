"""Our Ray actors run on asyncio's own event loop, and start subprocesses from many threads safely.

uvloop, Ray's default for async actors, runs Python's at-fork handlers in the child it forks to exec
a subprocess; in a Ray worker full of threads that child can deadlock before it execs (a merge gate
waited for ever on Playwright's driver). ``RAY_ENV`` (``RAY_USE_UVLOOP=0``) is in every Ray we start.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import ray

from actors.ray_local import RAY_ENV

pytestmark = pytest.mark.timeout(120)


@ray.remote(num_cpus=0)
class _Spawner:
    async def loop_module(self) -> str:
        return type(asyncio.get_running_loop()).__module__

    async def spawn_while_threads_take_locks(self, count: int) -> list[int]:
        """``count`` subprocesses started one after another while other threads take and drop locks."""
        stop = threading.Event()
        lock = threading.Lock()

        def churn() -> None:
            while not stop.is_set():
                with lock:
                    pass

        threads = [threading.Thread(target=churn, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        codes = []
        try:
            for _ in range(count):
                proc = await asyncio.create_subprocess_exec("/bin/true")
                codes.append(await asyncio.wait_for(proc.wait(), 20))
        finally:
            stop.set()
        return codes


async def test_actors_run_on_asyncios_own_loop_and_start_subprocesses(ray_cluster: Any) -> None:
    assert RAY_ENV == {"RAY_USE_UVLOOP": "0"}
    spawner = _Spawner.remote()
    try:
        assert await spawner.loop_module.remote() == "asyncio.unix_events"  # not uvloop
        assert await spawner.spawn_while_threads_take_locks.remote(50) == [0] * 50
    finally:
        ray.kill(spawner)
