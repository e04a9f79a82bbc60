"""Unit tests test floors 1-2 directly: starting Ray here is a mistake, so it fails loudly."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _forbid_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    if "ray" in sys.modules:

        def refuse(*args: object, **kwargs: object) -> None:
            raise RuntimeError("unit tests must not start Ray; move this test to tests/integration")

        monkeypatch.setattr(sys.modules["ray"], "init", refuse)
