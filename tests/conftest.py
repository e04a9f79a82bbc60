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

#: What the test cluster's workers get besides KRIPTIK_HOME. The repo root on their path, so that
#: ``tests.fakes`` imports wherever pytest was started from (a whole build runs on the Modal fake with
#: ``ModalBackendConfig(sdk_module="tests.fakes.modal_sdk")``), and fake Modal credentials for that
#: backend's offline check; the real SDK's server URL points at a closed loopback port, so no worker
#: could ever reach Modal with them. The driver's own environment is left alone (``cloud`` tests read it).
WORKER_ENV = {
    "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")) if p),
    "MODAL_TOKEN_ID": "ak-kriptik-test-fake",
    "MODAL_TOKEN_SECRET": "as-kriptik-test-fake",
    "MODAL_SERVER_URL": "http://127.0.0.1:9",
}


#: Warm pools for a test module's Control: the default sizes, filled once when Control starts and not
#: topped up as builds take from them. A refill starts actors (and a standby sandbox and a browser)
#: while the build runs, competing with it for the 2 cores, and the module's last refill is never used;
#: a later build of the module cold-starts what it needs instead. Refills are tested in test_warm_pool.
E2E_POOLS = {"refill": False}


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
    start_local_ray(tmp, num_cpus=4, env={"KRIPTIK_HOME": os.environ["KRIPTIK_HOME"], **WORKER_ENV})
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
