"""A preview's screenshot series on disk and its schedule (coordinator/screenshots.py), without Ray or Chromium.

The PNGs are stand-in bytes: the series never decodes them. Time is a :class:`FakeClock`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coordinator.clock import FakeClock
from coordinator.screenshots import (
    INDEX,
    ScreenshotNotFoundError,
    ScreenshotSeries,
    ShotSchedule,
    check_name,
    tree_digest,
)
from sandbox_agents.errors import InvalidInputError


def png(n: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + n.to_bytes(4, "big")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_800_000_000.0)


def series(tmp_path: Path, clock: FakeClock, keep: int = 3) -> ScreenshotSeries:
    return ScreenshotSeries(tmp_path / "shots", keep, clock)


def test_the_series_keeps_the_newest_and_drops_the_oldest_past_its_bound(tmp_path: Path, clock: FakeClock) -> None:
    shots = series(tmp_path, clock)
    assert shots.entries() == []
    added = []
    for n in range(5):
        shot = shots.add(png(n), tree=f"tree{n}")
        assert shot is not None
        added.append(shot)
        clock.advance(60)
    kept = shots.entries()
    assert [s.name for s in kept] == [s.name for s in reversed(added[2:])]  # newest first
    assert [s.tree for s in kept] == ["tree4", "tree3", "tree2"]
    assert kept[0].size == len(png(4)) and kept[0].taken_at == added[4].taken_at
    assert shots.read(kept[-1].name) == png(2)
    on_disk = sorted(p.name for p in (tmp_path / "shots").iterdir())
    assert on_disk == sorted([INDEX, *(s.name for s in kept)])  # the dropped PNGs are gone
    with pytest.raises(ScreenshotNotFoundError):
        shots.read(added[0].name)


class SteppingClock(FakeClock):
    """A wall clock that a test may set back (NTP steps it; a FakeClock never goes back)."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.wall = start

    def now(self) -> float:
        return self.wall


def test_names_are_ours_and_strictly_increase(tmp_path: Path) -> None:
    clock = SteppingClock(1_800_000_000.0)
    shots = series(tmp_path, clock)
    first = shots.add(png(1))
    second = shots.add(png(2))  # the same millisecond
    clock.wall -= 5  # the wall clock steps back
    third = shots.add(png(3))
    assert first is not None and second is not None and third is not None
    assert first.name == "shot-1800000000000.png"
    assert first.name < second.name < third.name
    assert all(check_name(s.name) == s.name for s in (first, second, third))


def test_an_unchanged_page_is_not_kept_twice(tmp_path: Path, clock: FakeClock) -> None:
    shots = series(tmp_path, clock)
    assert shots.add(png(1)) is not None
    clock.advance(60)
    assert shots.add(png(1)) is None
    assert len(shots.entries()) == 1
    assert shots.add(png(2)) is not None and shots.add(png(1)) is not None  # back to an earlier look: kept


@pytest.mark.parametrize(
    "name",
    ["../screenshots.json", "screenshots.json", "shot-1.png", "shot-1800000000000.png/..", "/etc/passwd",
     "shot-1800000000000.PNG", "shot-18000000000000.png", "shot-1800000000000.png\n", "", "."],
)  # fmt: skip
def test_a_name_the_series_never_produces_is_refused(tmp_path: Path, clock: FakeClock, name: str) -> None:
    shots = series(tmp_path, clock)
    shots.add(png(1))
    with pytest.raises(InvalidInputError) as info:
        shots.read(name)
    assert info.value.field == "name"


def test_only_names_in_the_index_are_served(tmp_path: Path, clock: FakeClock) -> None:
    shots = series(tmp_path, clock)
    shot = shots.add(png(1))
    assert shot is not None
    planted = tmp_path / "shots" / "shot-1700000000000.png"  # right shape, never produced by the series
    planted.write_bytes(b"not ours")
    with pytest.raises(ScreenshotNotFoundError) as info:
        shots.read(planted.name)
    assert info.value.name == planted.name
    (tmp_path / "shots" / shot.name).unlink()  # listed but lost: not found either, never an OSError
    with pytest.raises(ScreenshotNotFoundError):
        shots.read(shot.name)


def test_a_new_series_reads_what_an_earlier_one_kept(tmp_path: Path, clock: FakeClock) -> None:
    before = series(tmp_path, clock)
    shot = before.add(png(1), tree="abc", path="/about")
    assert shot is not None
    after = series(tmp_path, clock)  # a restarted actor
    assert after.entries() == [shot]
    assert after.read(shot.name) == png(1)


def test_an_add_sweeps_what_a_crash_left_behind(tmp_path: Path, clock: FakeClock) -> None:
    shots = series(tmp_path, clock)
    shots.add(png(1))
    directory = tmp_path / "shots"
    orphan = directory / "shot-1799999999999.png"  # written, then the index was never replaced
    orphan.write_bytes(png(0))
    stray = directory / f".{INDEX}.{os.getpid()}.1.tmp"
    stray.write_bytes(b"[")
    unrelated = directory / "notes.txt"
    unrelated.write_text("kept")
    clock.advance(1)
    shots.add(png(2))
    assert not orphan.exists() and not stray.exists() and unrelated.exists()
    assert len(shots.entries()) == 2


def test_files_are_private_and_clear_removes_them(tmp_path: Path, clock: FakeClock) -> None:
    shots = series(tmp_path, clock)
    shot = shots.add(png(1))
    assert shot is not None
    assert (tmp_path / "shots" / shot.name).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "shots" / INDEX).stat().st_mode & 0o777 == 0o600
    shots.clear()
    assert not (tmp_path / "shots").exists() and shots.entries() == []


def test_a_series_keeps_at_least_one(tmp_path: Path, clock: FakeClock) -> None:
    with pytest.raises(InvalidInputError):
        ScreenshotSeries(tmp_path, 0, clock)


def test_the_tree_digest_tells_trees_apart() -> None:
    files = {"web/index.html": "a" * 64, "api/server.py": "b" * 64}
    assert tree_digest({}) == ""
    assert len(tree_digest(files)) == 12
    assert tree_digest(files) == tree_digest(dict(reversed(files.items())))  # order does not matter
    assert tree_digest(files) != tree_digest({**files, "web/index.html": "c" * 64})
    assert tree_digest(files) != tree_digest({"web/index.html": "a" * 64})


# --- the schedule --------------------------------------------------------------------------------


def test_the_first_screenshot_is_due_at_once_then_one_per_period() -> None:
    schedule = ShotSchedule(every_s=60, min_gap_s=10)
    assert schedule.due(100.0)
    schedule.started(100.0)
    assert not schedule.due(159.0)
    assert schedule.due(160.0)


def test_a_burst_of_refreshes_gets_one_screenshot_after_the_gap() -> None:
    schedule = ShotSchedule(every_s=60, min_gap_s=10)
    schedule.started(100.0)
    for at in (101.0, 102.0, 105.0):  # merges in a burst
        schedule.refreshed()
        assert not schedule.due(at)
    assert schedule.due(110.0)
    schedule.started(110.0)
    assert not schedule.due(125.0)  # that one covered the whole burst
    schedule.refreshed()
    assert schedule.due(125.0)  # a later refresh, past the gap: at once


def test_a_refresh_during_a_screenshot_asks_for_another() -> None:
    schedule = ShotSchedule(every_s=60, min_gap_s=10)
    schedule.started(100.0)
    schedule.refreshed()  # while Chromium is still loading the page
    assert not schedule.due(105.0)
    assert schedule.due(110.0)
