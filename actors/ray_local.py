"""A private single-node Ray on this machine, for the tests and the benchmarks.

One place for the options both use: a local cluster of ``num_cpus`` in namespace
``kriptik``, no dashboard, workers' logs kept off the driver, session files under a temp dir
of the caller's, and environment variables (``KRIPTIK_HOME``) handed to every worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping

import ray

from actors.handles import NAMESPACE

#: The environment of every Ray process of ours (``ray start`` and ``ray.init``'s own raylet pass it to
#: their workers): Ray's async actors run on asyncio's own event loop, not on uvloop. uvloop (0.23) runs
#: Python's at-fork handlers in the child it forks to exec a subprocess (Playwright's driver, git), and
#: in a many-threaded Ray worker that child can deadlock on a lock before it execs: a merge gate then
#: waited for ever on its browser (a whole test run hung on it). asyncio starts a subprocess through
#: ``_posixsubprocess``, which runs no Python in the child. uvloop's pipe transports also close their
#: descriptor twice (uvloop issue 763), closing another thread's descriptor now and then.
RAY_ENV: dict[str, str] = {"RAY_USE_UVLOOP": "0"}


def start_local_ray(temp_dir: str, *, num_cpus: int = 4, env: Mapping[str, str] | None = None) -> None:
    """``ray.init`` a new local cluster; the caller ``ray.shutdown()``-s it and removes ``temp_dir``.

    Args:
        temp_dir: Where Ray keeps its session files.
        num_cpus: CPUs the cluster offers to tasks and actors.
        env: Environment variables of every worker process (besides :data:`RAY_ENV`).
    """
    os.environ.update(RAY_ENV)  # the raylet ray.init starts, and each worker it starts, inherit it
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        namespace=NAMESPACE,
        log_to_driver=False,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": {**RAY_ENV, **(env or {})}},
    )


@contextlib.contextmanager
def private_ray(num_cpus: int = 4) -> Iterator[None]:
    """A single-node Ray of our own for a benchmark or the demo, with a temporary state home.

    Session files go to a temp dir; ``KRIPTIK_HOME`` is a temp dir too unless the caller set
    one, and then it is purged at the end (its local sandboxes ended, the dir deleted).
    """
    from sandbox_agents.backends.local.backend import purge_home

    tmp = tempfile.mkdtemp(prefix="kriptik-ray-")
    own_home = "KRIPTIK_HOME" not in os.environ
    if own_home:
        os.environ["KRIPTIK_HOME"] = tempfile.mkdtemp(prefix="kriptik-home-")
    start_local_ray(tmp, num_cpus=num_cpus, env={"KRIPTIK_HOME": os.environ["KRIPTIK_HOME"]})
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        if own_home:
            from pathlib import Path

            purge_home(Path(os.environ.pop("KRIPTIK_HOME")))
