"""Busy intervals: overlapping work counts once, intervals merge, and a union covers a window once."""

from __future__ import annotations

from sandbox_agents.busy import BusyIntervals, covered, rounded, union


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_overlapping_work_makes_one_interval_from_the_first_start_to_the_last_end() -> None:
    clock = Clock()
    busy = BusyIntervals(clock)
    with busy.busy():
        clock.now = 101.0
        with busy.busy():
            clock.now = 103.0
        clock.now = 104.0
    clock.now = 110.0
    with busy.busy():
        clock.now = 111.0
    assert busy.intervals() == [(100.0, 104.0), (110.0, 111.0)]
    assert busy.seconds() == 5.0


def test_work_still_running_counts_up_to_now_and_a_start_cuts_earlier_intervals() -> None:
    clock = Clock()
    busy = BusyIntervals(clock)
    with busy.busy():
        clock.now = 102.0
    with busy.busy():
        clock.now = 105.0
        assert busy.intervals(after=101.0) == [(101.0, 102.0), (102.0, 105.0)]
        assert busy.intervals(after=102.5) == [(102.5, 105.0)]


def test_work_that_raises_still_ends_its_interval() -> None:
    clock = Clock()
    busy = BusyIntervals(clock)
    try:
        with busy.busy():
            clock.now = 101.0
            raise RuntimeError("failed command")
    except RuntimeError:
        pass
    clock.now = 200.0
    assert busy.intervals() == [(100.0, 101.0)]


def test_only_the_newest_intervals_are_kept() -> None:
    clock = Clock()
    busy = BusyIntervals(clock, keep=2)
    for start in (1.0, 3.0, 5.0):
        clock.now = start
        with busy.busy():
            clock.now = start + 1
    assert busy.intervals() == [(3.0, 4.0), (5.0, 6.0)]


def test_a_union_counts_each_moment_once_and_covered_clips_it_to_the_window() -> None:
    parts = [(5.0, 7.0), (0.0, 2.0), (1.0, 3.0), (9.0, 9.0)]
    assert union(parts) == [(0.0, 3.0), (5.0, 7.0)]
    assert covered(parts, 2.0, 6.0) == 2.0
    assert covered(parts, 10.0, 20.0) == 0.0
    assert rounded([(1.23456, 2.34567)]) == [(1.235, 2.346)]
