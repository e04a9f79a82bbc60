"""The per-sandbox uid pool: atomic claims across processes, release by the holder only."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import pytest

from sandbox_agents.backends.local.uids import UNSTARTED_GRACE_S, UidPool, uids_in_use
from sandbox_agents.errors import ConfigError, SandboxLimitError

FIRST = 3_900_000  # far from any account or process on a test host


def _pool(tmp_path: Path, count: int = 8, gone: bool = True) -> UidPool:
    return UidPool(first=FIRST, count=count, claims_dir=tmp_path / "uids", is_gone=lambda record: gone)


def _claim_in_child(claims_dir: str, name: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    pool = UidPool(first=FIRST, count=64, claims_dir=Path(claims_dir), is_gone=lambda record: False)
    out.put(pool.claim(name, Path(claims_dir) / name))


def test_claims_from_concurrent_processes_never_share_a_uid(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_claim_in_child, args=(str(tmp_path / "uids"), f"sbx-{i}", out)) for i in range(24)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    uids = [out.get(timeout=5) for _ in procs]
    assert len(set(uids)) == 24 and all(FIRST <= uid < FIRST + 64 for uid in uids)


def test_a_uid_is_released_only_by_its_holder(tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    uid = pool.claim("sbx-a", tmp_path / "a.json")
    assert not pool.release(uid, "sbx-b")
    assert pool.holder(uid) is not None
    assert pool.release(uid, "sbx-a")
    assert pool.holder(uid) is None


def test_a_full_range_answers_a_limit_error(tmp_path: Path) -> None:
    pool = _pool(tmp_path, count=2, gone=False)
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.json").write_text("{}")
    pool.claim("sbx-a", tmp_path / "a.json")
    pool.claim("sbx-b", tmp_path / "b.json")
    with pytest.raises(SandboxLimitError):
        pool.claim("sbx-c", tmp_path / "c.json")


def test_stale_claims_of_ended_sandboxes_are_taken_back(tmp_path: Path) -> None:
    pool = _pool(tmp_path, count=2, gone=True)
    (tmp_path / "a.json").write_text("{}")
    uid = pool.claim("sbx-a", tmp_path / "a.json")
    assert pool.reclaim_stale() == 1 and pool.holder(uid) is None


def test_a_claim_whose_sandbox_never_started_waits_out_its_grace(tmp_path: Path) -> None:
    pool = _pool(tmp_path, count=2)
    uid = pool.claim("sbx-a", tmp_path / "never-written.json")
    assert pool.reclaim_stale() == 0  # still being set up, perhaps
    record = {
        "sandbox": "sbx-a",
        "state": str(tmp_path / "never-written.json"),
        "at": time.time() - UNSTARTED_GRACE_S - 1,
    }
    (tmp_path / "uids" / str(uid)).write_text(json.dumps(record))
    assert pool.reclaim_stale() == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="starts a process as another uid")
def test_a_uid_some_process_runs_as_is_never_handed_out(tmp_path: Path) -> None:
    busy = FIRST + 100
    proc = subprocess.Popen(["setpriv", f"--reuid={busy}", f"--regid={busy}", "--clear-groups", "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while busy not in uids_in_use() and time.monotonic() < deadline:
            time.sleep(0.01)
        pool = UidPool(first=busy, count=1, claims_dir=tmp_path / "uids", is_gone=lambda record: True)
        with pytest.raises(SandboxLimitError):
            pool.claim("sbx-a", tmp_path / "a.json")
        assert (pool.holder(busy) or {}).get("sandbox") is None  # kept as a marker, not handed out
    finally:
        proc.kill()
        proc.wait()


def test_uid_zero_is_refused() -> None:
    with pytest.raises(ConfigError):
        UidPool(first=0, count=10, claims_dir=Path("/nonexistent"), is_gone=lambda record: True)
