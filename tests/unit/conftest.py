"""Unit tests test floors 1-2 directly: starting Ray here is a mistake, so it fails loudly."""

from __future__ import annotations

import pytest

REFUSAL = "unit tests must not start Ray; move this test to tests/integration"


def _refuse_ray_init(*args: object, **kwargs: object) -> None:
    raise RuntimeError(REFUSAL)


@pytest.fixture(autouse=True)
def _forbid_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace ``ray.init`` for the test, importing Ray first if nothing has yet.

    Patching only an already-imported Ray let a test that imports Ray itself start a cluster. Ray's
    APIs that start Ray on first use (``ray.put``, ``ray.get``, ...) call ``ray.init`` through the
    module, so they are refused too.
    """
    import ray

    monkeypatch.setattr(ray, "init", _refuse_ray_init)
