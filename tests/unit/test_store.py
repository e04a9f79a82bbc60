"""The build store: migrations, WAL, user scoping, atomic writes, crash safety and resumption state."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.clock import FakeClock
from coordinator.store import store as store_module
from coordinator.store.schema import MIGRATIONS
from coordinator.store.store import SessionStatus, Slot, Store, StoreConfig, StoreError
from sandbox_agents.backends.base import SandboxSpec, SnapshotRef
from sandbox_agents.errors import BuildNotFoundError, InvalidInputError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    with Store(tmp_path / "store.db", clock=clock) as opened:
        yield opened


def _snapshot(snapshot_id: str, sandbox_id: str = "sbx-1") -> SnapshotRef:
    return SnapshotRef(backend="fake", id=snapshot_id, sandbox_id=sandbox_id, spec=SandboxSpec(), created_at=1.0)


def test_migrations_are_applied_once_and_reopen_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with Store(path) as store:
        assert store.schema_version() == MIGRATIONS[-1][0]
        session = store.create_session("alice", "a todo app")
    for _ in range(2):
        with Store(path) as store:
            assert store.schema_version() == MIGRATIONS[-1][0]
            assert store.get_session(session.id).prompt == "a todo app"
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == len(MIGRATIONS)


def test_schema_newer_than_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    Store(path).start().close()
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    with pytest.raises(StoreError, match="newer"):
        Store(path).start()


def test_wal_and_durability_pragmas(store: Store, tmp_path: Path) -> None:
    assert store.pragma("journal_mode") == "wal"
    assert store.pragma("synchronous") == 1  # NORMAL
    assert store.pragma("foreign_keys") == 1
    assert store.pragma("busy_timeout") == 5000
    with Store(tmp_path / "full.db", config=StoreConfig(synchronous="FULL", busy_timeout_ms=250)) as full:
        assert full.pragma("synchronous") == 2
        assert full.pragma("busy_timeout") == 250


def test_store_path_defaults_to_kriptik_home(kriptik_home: Path) -> None:
    assert Store().path == kriptik_home / "store.db"


def test_sessions_are_scoped_to_their_user(store: Store) -> None:
    mine = store.create_session("alice", "a blog")
    store.create_session("bob", "a shop")
    assert store.get_session(mine.id, user_id="alice").id == mine.id
    with pytest.raises(BuildNotFoundError):
        store.get_session(mine.id, user_id="bob")
    with pytest.raises(BuildNotFoundError):
        store.update_session(mine.id, owner="bob", status=SessionStatus.CANCELLED)
    assert [s.id for s in store.list_sessions("alice")] == [mine.id]
    assert store.get_session(mine.id).status is SessionStatus.QUEUED


def test_update_session_validates_and_touches(store: Store, clock: FakeClock) -> None:
    session = store.create_session("alice", "p", session_id="b1", budget={"max_usd": 5.0})
    clock.advance(30)
    updated = store.update_session("b1", status="running", phase="build", sandbox_ids=["s1", "s2"])
    assert updated.last_activity_at == session.started_at + 30
    again = store.get_session("b1")
    assert again == updated and again.sandbox_ids == ["s1", "s2"] and again.budget == {"max_usd": 5.0}
    with pytest.raises(InvalidInputError):
        store.update_session("b1", status="exploded")
    with pytest.raises(InvalidInputError):
        store.update_session("b1", user_id="mallory")
    with pytest.raises(InvalidInputError):
        store.update_session("b1", no_such_field=1)
    with pytest.raises(InvalidInputError):
        store.create_session("alice", "dup", session_id="b1")
    assert store.get_session("b1") == updated


def test_list_and_active_sessions(store: Store, clock: FakeClock) -> None:
    ids = []
    for status in SessionStatus:
        clock.advance(1)
        ids.append(store.create_session("alice", status.value, status=status).id)
    assert [s.id for s in store.list_sessions("alice")] == ids[::-1]
    assert [s.prompt for s in store.list_sessions("alice", status=SessionStatus.PAUSED)] == ["paused"]
    assert [s.prompt for s in store.active_sessions()] == ["queued", "running", "paused"]


def test_exception_inside_a_transaction_persists_nothing(store: Store) -> None:
    session = store.create_session("alice", "p")
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction():
            store.update_session(session.id, status="running", sandbox_ids=["s1"])
            store.add_cost(session.id, source="compute:local:a", estimated_cost=1.0, compute_seconds=5)
            store.set_offset(session.id, "merge", "coordinator", "5-0")
            assert store.mark_processed(session.id, "m1")
            raise RuntimeError("boom")
    assert store.get_session(session.id).status is SessionStatus.QUEUED
    assert store.cost_totals(session.id).entries == 0
    assert store.get_offsets(session.id) == {}
    assert store.mark_processed(session.id, "m1")  # the mark was rolled back with the rest


def test_nested_transaction_failure_undoes_only_the_inner_block(store: Store) -> None:
    session = store.create_session("alice", "p")
    with store.transaction():
        store.add_cost(session.id, source="a", estimated_cost=1.0)
        with pytest.raises(ValueError):
            with store.transaction():
                store.add_cost(session.id, source="b", estimated_cost=2.0)
                raise ValueError("inner")
    totals = store.cost_totals(session.id)
    assert (totals.entries, totals.estimated_cost) == (1, 1.0)


async def test_transaction_held_across_an_await_is_refused(store: Store) -> None:
    import asyncio

    session = store.create_session("alice", "p")
    entered, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        with store.transaction():
            entered.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await entered.wait()
    with pytest.raises(StoreError, match="await"):
        store.mark_processed(session.id, "m")
    release.set()
    await task
    assert store.mark_processed(session.id, "m")


def test_mark_processed_is_idempotent(store: Store) -> None:
    a, b = store.create_session("u", "a"), store.create_session("u", "b")
    assert store.mark_processed(a.id, "1-0") is True
    assert store.mark_processed(a.id, "1-0") is False
    assert store.mark_processed(b.id, "1-0") is True  # per build
    with pytest.raises(BuildNotFoundError):
        store.mark_processed("nope", "1-0")


def test_offsets_only_move_forward(store: Store) -> None:
    s = store.create_session("u", "p")
    store.set_offset(s.id, "merge", "coordinator", "100-1")
    store.set_offset(s.id, "errors", "coordinator", "7-0")
    assert store.set_offset(s.id, "merge", "coordinator", "99-5").last_acked_id == "100-1"
    store.set_offset(s.id, "merge", "coordinator", "100-2")
    assert store.get_offsets(s.id) == {("merge", "coordinator"): "100-2", ("errors", "coordinator"): "7-0"}


def test_pending_merges(store: Store) -> None:
    s = store.create_session("u", "p")
    first = store.add_pending_merge(s.id, "api", {"candidate": 0, "sandbox_id": "s1"})
    second = store.add_pending_merge(s.id, "web", {"candidate": 1})
    assert [m.component for m in store.pending_merges(s.id)] == ["api", "web"]
    resolved = store.resolve_pending_merge(first.id, "merged")
    assert resolved.status == "merged" and resolved.resolved_at is not None
    assert store.resolve_pending_merge(first.id, "merged").status == "merged"  # idempotent
    with pytest.raises(InvalidInputError):
        store.resolve_pending_merge(first.id, "rejected")
    with pytest.raises(InvalidInputError):
        store.resolve_pending_merge(second.id, "pending")
    with pytest.raises(BuildNotFoundError):
        store.resolve_pending_merge(12345, "merged")
    assert [(m.id, m.ref) for m in store.pending_merges(s.id)] == [(second.id, {"candidate": 1})]


def test_resolved_merges_keep_their_commit_or_reason_in_the_builds_merge_history(store: Store) -> None:
    s = store.create_session("u", "p")
    rejected = store.add_pending_merge(s.id, "api", {"slot": "api"})
    store.resolve_pending_merge(rejected.id, "rejected", reason="1 finding(s): criterion api-ok failed")
    merged = store.add_pending_merge(s.id, "api", {"slot": "api"})
    assert store.resolve_pending_merge(merged.id, "merged", commit="c1").commit == "c1"
    waiting = store.add_pending_merge(s.id, "web", {"slot": "web"})
    history = [(m.id, m.component, m.status, m.commit, m.reason) for m in store.merges(s.id)]
    assert history == [
        (rejected.id, "api", "rejected", None, "1 finding(s): criterion api-ok failed"),
        (merged.id, "api", "merged", "c1", ""),
        (waiting.id, "web", "pending", None, ""),
    ]
    assert [m.id for m in store.pending_merges(s.id)] == [waiting.id]


def test_latest_checkpoint_per_slot(store: Store, clock: FakeClock) -> None:
    s = store.create_session("u", "p")
    assert store.latest_checkpoint(s.id, "api#0") is None
    c1 = store.add_checkpoint(s.id, "sbx-1", "api#0", _snapshot("snap-1"), phase="build")
    store.add_checkpoint(s.id, "sbx-2", "web#0", _snapshot("snap-w", "sbx-2"))
    c3 = store.add_checkpoint(s.id, "sbx-1", "api#0", _snapshot("snap-2"), phase="verify")  # same instant
    clock.advance(300)
    latest = store.latest_checkpoint(s.id, "api#0")
    assert latest is not None and latest.id == c3.id and latest.snapshot.id == "snap-2"
    c4 = store.add_checkpoint(s.id, "sbx-1", "api#0", _snapshot("snap-3"))
    assert store.latest_checkpoint(s.id, "api#0") == c4
    assert store.get_session(s.id).checkpoint_ids[0] == c1.id
    assert len(store.get_session(s.id).checkpoint_ids) == 4 == len(store.list_checkpoints(s.id))
    with pytest.raises(BuildNotFoundError):
        store.add_checkpoint("nope", "sbx", "x", _snapshot("s"))


def test_costs_and_totals(store: Store) -> None:
    s = store.create_session("u", "p")
    store.add_cost(s.id, source="compute:local:api#0", estimated_cost=0.5, compute_seconds=60)
    store.add_cost(s.id, source="llm:m:agent", estimated_cost=0.25, llm_tokens=1000)
    totals = store.cost_totals(s.id)
    assert (totals.compute_seconds, totals.llm_tokens, totals.estimated_cost, totals.entries) == (60, 1000, 0.75, 2)
    with pytest.raises(InvalidInputError):
        store.add_cost(s.id, source="x", estimated_cost=-1)
    with pytest.raises(BuildNotFoundError):
        store.add_cost("nope", source="x", estimated_cost=1)


def test_slots_upsert(store: Store, clock: FakeClock) -> None:
    s = store.create_session("u", "p")
    store.upsert_slot(Slot(session_id=s.id, slot="web#1", component="web", candidate=1, status="creating"))
    store.upsert_slot(Slot(session_id=s.id, slot="api#0", component="api", status="creating"))
    clock.advance(5)
    store.upsert_slot(
        Slot(session_id=s.id, slot="api#0", component="api", sandbox_id="sbx-9", proxy_name="p", status="ready")
    )
    slots = store.list_slots(s.id)
    assert [(x.slot, x.status, x.sandbox_id) for x in slots] == [
        ("api#0", "ready", "sbx-9"),
        ("web#1", "creating", None),
    ]
    assert slots[0].updated_at == clock.now()


def test_a_slot_keeps_its_agents_swarm_score_and_last_sandbox(store: Store) -> None:
    s = store.create_session("u", "p")
    slot = Slot(session_id=s.id, slot="api", component="api", status="built", agents=["api:coder", "api:tester"])
    store.upsert_slot(slot.model_copy(update={"swarm_score": 0.75, "last_sandbox_id": "sbx-1"}))
    [read] = store.list_slots(s.id)
    assert (read.agents, read.swarm_score, read.last_sandbox_id) == (["api:coder", "api:tester"], 0.75, "sbx-1")


def test_slots_of_a_store_made_before_migration_5_read_with_no_agents_score_or_last_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.db"
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:4])
    with Store(path) as old:
        session = old.create_session("u", "p")
        with old.transaction() as conn:
            conn.execute(
                "INSERT INTO slots (session_id, slot, component, candidate, sandbox_id, proxy_name, status, updated_at)"
                " VALUES (?, 'api', 'api', 0, 'sbx-1', NULL, 'ready', 0)",
                (session.id,),
            )
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with Store(path) as store:
        assert store.schema_version() == 5
        [slot] = store.list_slots(session.id)
    assert (slot.sandbox_id, slot.agents, slot.swarm_score, slot.last_sandbox_id) == ("sbx-1", [], None, None)


def test_api_tokens(store: Store) -> None:
    token = store.add_api_token("alice", "ab" * 32)
    found = store.find_api_token("ab" * 32)
    assert found is not None and found.user_id == "alice"
    with pytest.raises(InvalidInputError):
        store.add_api_token("bob", "ab" * 32)
    assert store.revoke_api_token(token.id, user_id="bob") is False
    assert store.revoke_api_token(token.id, user_id="alice") is True
    assert store.find_api_token("ab" * 32) is None


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from coordinator.store.store import Store

    store = Store(sys.argv[1]).start()
    with store.transaction():
        for i in range(3000):  # ~6 MB, past the page cache: pages spill into the WAL before commit
            store.create_session("crasher", "x" * 2000, session_id=f"new-{i}")
        store.update_session("old", status="failed", error="should never be seen")
        Path(sys.argv[2]).write_text("ready")
        time.sleep(60)
    """
)


@pytest.mark.timeout(60)
def test_writer_killed_mid_transaction_leaves_old_data(tmp_path: Path) -> None:
    path, ready = tmp_path / "store.db", tmp_path / "ready"
    with Store(path) as store:
        store.create_session("alice", "keep me", session_id="old", status=SessionStatus.RUNNING)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(ready)], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():  # bounded poll: the writer signals from inside its transaction
            assert writer.poll() is None, "writer exited early"
            assert time.monotonic() < deadline, "writer never became ready"
            time.sleep(0.02)
        assert Path(f"{path}-wal").stat().st_size > 1_000_000  # uncommitted frames really are on disk
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(timeout=10)
    assert writer.returncode == -signal.SIGKILL
    with Store(path) as store:
        assert store.pragma("integrity_check") == "ok"
        old = store.get_session("old")
        assert (old.status, old.prompt, old.error) == (SessionStatus.RUNNING, "keep me", None)
        assert store.list_sessions("crasher") == []
        store.create_session("alice", "still writable")  # the dead writer's lock is gone
