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
    import asyncio

    from sandbox_agents.backends.config import LocalBackendConfig
    from sandbox_agents.backends.local import LocalBackend
    from sandbox_agents.backends.local_sandbox_state import default_root

    root = default_root(_HOME)
    if root.exists():
        asyncio.run(LocalBackend(LocalBackendConfig(root=root)).purge())
    shutil.rmtree(_HOME, ignore_errors=True)


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
