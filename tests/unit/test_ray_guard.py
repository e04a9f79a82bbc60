"""The unit tier's guard (tests/unit/conftest.py): no test here starts Ray, however it tries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.conftest import REFUSAL

ROOT = Path(__file__).resolve().parents[2]


def _no_cluster_in_this_process() -> None:
    """In a whole-suite run the integration tier's session cluster is up in this process: ``ray.put``
    then needs no ``ray.init`` and ``is_initialized`` is true. The fresh-process test below runs
    these two tests where no cluster exists, and requires that they pass there (not skip)."""
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray cluster of the integration tier is up in this process; checked in a fresh process")


def test_ray_init_is_refused_in_unit_tests() -> None:
    import ray

    _no_cluster_in_this_process()
    with pytest.raises(RuntimeError, match=REFUSAL):
        ray.init(address="local", num_cpus=1, include_dashboard=False)
    assert not ray.is_initialized()


def test_a_ray_api_that_starts_ray_on_first_use_is_refused_too() -> None:
    import ray

    _no_cluster_in_this_process()
    with pytest.raises(RuntimeError, match=REFUSAL):
        ray.put(1)
    assert not ray.is_initialized()


@pytest.mark.timeout(120)
def test_ray_init_is_refused_in_a_process_that_had_not_imported_ray() -> None:
    """A fresh pytest where this module's tests are the first thing to import Ray (the old guard's gap)."""
    tests = [
        f"{__file__}::test_ray_init_is_refused_in_unit_tests",
        f"{__file__}::test_a_ray_api_that_starts_ray_on_first_use_is_refused_too",
    ]
    probe = (
        "import sys, pytest\n"
        "assert 'ray' not in sys.modules\n"
        f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *{tests!r}]))\n"
    )
    env = {**os.environ, "RAY_ENABLE_AUTO_CONNECT": "1"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout and "skipped" not in done.stdout, done.stdout
