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


def start_local_ray(temp_dir: str, *, num_cpus: int = 4, env: Mapping[str, str] | None = None) -> None:
    """``ray.init`` a new local cluster; the caller ``ray.shutdown()``-s it and removes ``temp_dir``.

    Args:
        temp_dir: Where Ray keeps its session files.
        num_cpus: CPUs the cluster offers to tasks and actors.
        env: Environment variables of every worker process.
    """
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        namespace=NAMESPACE,
        log_to_driver=False,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": dict(env or {})},
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
