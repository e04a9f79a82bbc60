import pytest

from coordinator.heartbeat import MissedHeartbeats
from sandbox_agents.errors import InvalidInputError


def test_a_single_timeout_does_not_count_as_a_wedge():
    watch = MissedHeartbeats(limit=3)
    assert watch.missed("b1") is False
    assert watch.missed("b1") is False
    assert watch.count("b1") == 2


def test_limit_timeouts_in_a_row_are_a_wedge_and_the_count_starts_again():
    watch = MissedHeartbeats(limit=3)
    assert [watch.missed("b1") for _ in range(3)] == [False, False, True]
    assert watch.count("b1") == 0
    assert watch.missed("b1") is False


def test_an_answer_between_timeouts_resets_the_count():
    watch = MissedHeartbeats(limit=2)
    assert watch.missed("b1") is False
    watch.answered("b1")
    assert watch.missed("b1") is False
    assert watch.missed("b1") is True


def test_builds_are_counted_apart():
    watch = MissedHeartbeats(limit=2)
    assert watch.missed("b1") is False
    assert watch.missed("b2") is False
    assert watch.missed("b1") is True
    assert watch.count("b2") == 1


def test_limit_one_restarts_at_the_first_timeout():
    assert MissedHeartbeats(limit=1).missed("b1") is True


def test_a_limit_below_one_is_refused():
    with pytest.raises(InvalidInputError):
        MissedHeartbeats(limit=0)
