"""A private single-node Ray on this machine, for the tests and the benchmarks.

One place for the options both use: a local cluster of ``num_cpus`` in namespace
``kriptik``, no dashboard, workers' logs kept off the driver, session files under a temp dir
of the caller's, and environment variables (``KRIPTIK_HOME``) handed to every worker.
"""

from __future__ import annotations

from collections.abc import Mapping

import ray

from actors.sandbox_proxy import NAMESPACE


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
