"""Shared fixtures: a real single-node Ray for the tiers that need it, a state home per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.integration.conftest_bus"]

# A state home of our own, before anything reads settings: never the user's ~/.kriptik.
_HOME = Path(tempfile.mkdtemp(prefix="kriptik-test-home-"))
os.environ.setdefault("KRIPTIK_HOME", str(_HOME))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """End every local sandbox this session left (its own sandboxes root) and drop the home."""
    from sandbox_agents.backends.local.backend import purge_home

    purge_home(_HOME)


@pytest.fixture(scope="session")
def kriptik_home() -> Path:
    return Path(os.environ["KRIPTIK_HOME"])


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """One real single-node Ray for the whole session (``local_mode`` no longer exists)."""
    import ray

    from actors.ray_local import start_local_ray

    tmp = tempfile.mkdtemp(prefix="kriptik-ray-")
    os.environ["RAY_TMPDIR"] = tmp
    start_local_ray(tmp, num_cpus=4, env={"KRIPTIK_HOME": os.environ["KRIPTIK_HOME"]})
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
