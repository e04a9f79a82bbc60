"""The replica's store fast path for build status (serve/store_status.py).

Control runs here as the plain class (no Ray): with no active builds it makes no Ray call, so
its ``status()`` can be compared with the fast path's answer over the same store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from coordinator.api_models import BuildStatus
from coordinator.control import status_view
from coordinator.store.schema import SessionStatus
from coordinator.store.store import Store
from sandbox_agents.errors import BuildNotFoundError
from serve.app import ApiSettings, create_app
from serve.auth import create_token
from serve.control_port import ControlPort, MemoryControl
from serve.limits import RateLimiter
from serve.store_status import StoreFirstControl


class CountingControl(MemoryControl):
    """A Control double that counts status calls and answers from the store like Control."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.status_calls = 0

    async def status(self, user_id: str, build_id: str) -> BuildStatus:
        self.status_calls += 1
        session = self.store.get_session(build_id, user_id)  # BuildNotFoundError: a 404
        return status_view(self.store, session)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store.db").start()
    yield s
    s.close()


@pytest.fixture
def inner(store: Store) -> CountingControl:
    return CountingControl(store)


@pytest.fixture
async def client(inner: CountingControl, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(StoreFirstControl(inner, store), lambda: None, store, ApiSettings(),
                     limiter=RateLimiter(1000.0, 1000))  # fmt: skip
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        yield c


def auth(store: Store, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_token(store, user)}"}


def test_it_is_a_control_port(store: Store) -> None:
    assert isinstance(StoreFirstControl(MemoryControl(), store), ControlPort)


async def test_running_and_final_builds_are_answered_from_the_store_and_stay_current(
    client: httpx.AsyncClient, inner: CountingControl, store: Store
) -> None:
    alice = auth(store, "alice")
    build = store.create_session("alice", "a todo app", budget={"max_usd": 2.0}).id
    store.update_session(build, status=SessionStatus.RUNNING, phase="preview", preview_url="http://preview")
    r = await client.get(f"/api/build/status/{build}", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "running" and r.json()["preview_url"] == "http://preview"
    store.update_session(build, status=SessionStatus.COMPLETED, phase="done", finished_at=123.0)
    r = await client.get(f"/api/build/status/{build}", headers=alice)
    assert r.status_code == 200 and inner.status_calls == 0  # never a Control call for the caller's own build
    body = r.json()
    assert body["status"] == "completed" and body["phase"] == "done" and body["user_id"] == "alice"
    assert body["budget"] == {
        "limit_usd": 2.0,
        "spent_usd": 0.0,
        "llm_tokens": 0,
        "compute_seconds": 0.0,
        "status": "ok",
        "warn_fraction": 0.8,
    }
    store.add_cost(build, source="llm:late", estimated_cost=0.25, llm_tokens=900)  # seen at once: no cache
    budget = (await client.get(f"/api/build/status/{build}", headers=alice)).json()["budget"]
    assert budget["spent_usd"] == 0.25 and budget["llm_tokens"] == 900
    assert (await client.get(f"/api/build/budget/{build}", headers=alice)).json()["spent_usd"] == 0.25


async def test_another_users_final_build_is_still_404(
    client: httpx.AsyncClient, inner: CountingControl, store: Store
) -> None:
    alice, bob = auth(store, "alice"), auth(store, "bob")
    build = store.create_session("alice", "x", status=SessionStatus.FAILED).id
    assert (await client.get(f"/api/build/status/{build}", headers=alice)).status_code == 200
    for who in (bob,):
        r = await client.get(f"/api/build/status/{build}", headers=who)
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert (await client.get("/api/build/status/nope", headers=alice)).status_code == 404
    assert inner.status_calls == 2  # bob's and the unknown id were decided by Control, not the store
    assert (await client.get(f"/api/build/budget/{build}", headers=bob)).status_code == 404


async def test_the_fast_path_answers_exactly_what_control_answers(store: Store) -> None:
    from actors.control import ControlActor

    actor = ControlActor({"redis_url": "redis://127.0.0.1:1", "store_path": str(store.path)})
    try:
        build = store.create_session("alice", "a todo app", budget={"max_usd": 1.0}).id
        store.add_cost(build, source="compute:local:s1", estimated_cost=0.125)
        for status in (SessionStatus.RUNNING, SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.CANCELLED):
            store.update_session(build, status=status, phase="done", error=None, finished_at=99.0)
            fast = StoreFirstControl(MemoryControl(), store).stored_status("alice", build)
            assert fast is not None and fast == await actor.status("alice", build)
        assert StoreFirstControl(MemoryControl(), store).stored_status("bob", build) is None
        with pytest.raises(BuildNotFoundError):
            await actor.status("bob", build)
    finally:
        for task in [actor._revived, *actor._loops]:
            task.cancel()
        await asyncio.gather(actor._revived, *actor._loops, return_exceptions=True)
        actor.store.close()


async def test_other_routes_go_to_control(client: httpx.AsyncClient, inner: CountingControl, store: Store) -> None:
    alice = auth(store, "alice")
    r = await client.post("/api/builds", json={"prompt": "a todo app"}, headers=alice)
    assert r.status_code == 202
    assert [b["id"] for b in (await client.get("/api/builds", headers=alice)).json()] == [r.json()["id"]]


async def test_a_build_with_no_usable_llm_is_refused_at_submit_with_the_fix(store: Store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """KRIPTIK_LLM=replay without cassettes: a 422-style error naming the remedy, not a failure deep in the build."""
    from actors.control import ControlActor
    from sandbox_agents.errors import InvalidInputError

    monkeypatch.delenv("KRIPTIK_CASSETTES", raising=False)
    actor = ControlActor({"redis_url": "redis://127.0.0.1:1", "store_path": str(store.path)})
    try:
        with pytest.raises(InvalidInputError) as info:
            await actor.submit("alice", {"prompt": "a todo app"})
        assert info.value.field == "llm" and "KRIPTIK_CASSETTES" in str(info.value)
        assert store.list_sessions("alice") == []  # nothing half-registered
    finally:
        for task in [actor._revived, *actor._loops]:
            task.cancel()
        await asyncio.gather(actor._revived, *actor._loops, return_exceptions=True)
        actor.store.close()
