"""How local sandboxes are limited on this host, as status pages report it (fail closed, issue 14)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.store.store import Store
from sandbox_agents.backends.local import backend, cgroup
from serve.app import ApiSettings, create_app
from serve.control_port import MemoryControl


@pytest.fixture
def no_cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cgroup root with no controllers at all (what a container without cgroups sees)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    monkeypatch.setattr(cgroup, "CGROUP_ROOT", root)
    monkeypatch.delenv(backend.ALLOW_UNLIMITED_ENV, raising=False)
    return root


def test_without_cgroups_and_without_opt_in_sandboxes_are_refused(no_cgroups: Path) -> None:
    assert backend.host_sandbox_limits() == "refused"


def test_without_cgroups_the_opt_in_makes_sandboxes_unlimited(
    no_cgroups: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert backend.host_sandbox_limits(allow_unlimited=True) == "unlimited"
    monkeypatch.setenv(backend.ALLOW_UNLIMITED_ENV, "1")
    assert backend.host_sandbox_limits() == "unlimited"


def test_writable_v2_controllers_limit_sandboxes(no_cgroups: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (no_cgroups / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    monkeypatch.setenv(backend.ALLOW_UNLIMITED_ENV, "1")  # the opt-in changes nothing where limits work
    assert backend.host_sandbox_limits() == "cgroups"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = Store(tmp_path / "store.db").start()
    app: Any = create_app(MemoryControl(), lambda: None, store, ApiSettings())  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        yield c
    store.close()


async def test_health_reports_unlimited_sandboxes_where_the_operator_opted_in(
    client: httpx.AsyncClient, no_cgroups: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await client.get("/api/health")).json()["sandbox_limits"] == "refused"
    monkeypatch.setenv(backend.ALLOW_UNLIMITED_ENV, "1")
    assert (await client.get("/api/health")).json()["sandbox_limits"] == "unlimited"
