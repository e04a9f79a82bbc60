"""Helpers shared by the benchmarks: percentiles, a private Ray, the JSON last line."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def emit(result: dict[str, Any], as_json: bool) -> None:
    """Print a human summary, then (with --json) the one JSON object as the last line."""
    if not as_json:
        for key, value in result.items():
            print(f"{key:>28}: {value}")
        return
    print(json.dumps(result), flush=True)
    sys.stdout.flush()


@contextmanager
def private_ray(num_cpus: int = 4) -> Iterator[Any]:
    """A single-node Ray of our own, with its session files in a temp dir."""
    import ray

    from actors.ray_local import start_local_ray

    tmp = tempfile.mkdtemp(prefix="kriptik-bench-ray-")
    own_home = "KRIPTIK_HOME" not in os.environ
    if own_home:
        os.environ["KRIPTIK_HOME"] = tempfile.mkdtemp(prefix="kriptik-bench-home-")
    start_local_ray(tmp, num_cpus=num_cpus, env={"KRIPTIK_HOME": os.environ["KRIPTIK_HOME"]})
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        if own_home:
            _purge_home(os.environ.pop("KRIPTIK_HOME"))


def _purge_home(home: str) -> None:
    """End the local sandboxes a private home left behind and delete it."""
    import asyncio
    from pathlib import Path

    from sandbox_agents.backends.config import LocalBackendConfig
    from sandbox_agents.backends.local import LocalBackend
    from sandbox_agents.backends.local_sandbox_state import default_root

    root = default_root(Path(home))
    if root.exists():
        asyncio.run(LocalBackend(LocalBackendConfig(root=root)).purge())
    shutil.rmtree(home, ignore_errors=True)
