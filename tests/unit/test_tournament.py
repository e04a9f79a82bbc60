"""Tournament mode: strategies and successive halving."""

from __future__ import annotations

import pytest

from coordinator.tournament import (
    BUILTIN_STRATEGIES,
    CandidateStrategy,
    Tournament,
    TournamentSettings,
    resolve_strategies,
)
from sandbox_agents.errors import InvalidInputError


def test_builtin_and_inline_strategies() -> None:
    assert {"minimal", "polished", "robust"} <= set(BUILTIN_STRATEGIES)
    assert resolve_strategies(TournamentSettings()) == []
    assert [s.name for s in resolve_strategies(TournamentSettings(candidates=3))] == ["minimal", "polished", "robust"]
    custom = CandidateStrategy(name="fast", prompt_suffix="Be quick.", model="small", temperature=0.9)
    mixed = resolve_strategies(TournamentSettings(candidates=2, strategies=("polished", custom)))
    assert mixed[1] == custom and mixed[0].name == "polished"
    with pytest.raises(ValueError, match="duplicate"):
        TournamentSettings(candidates=2, strategies=("minimal", "minimal"))
    with pytest.raises(ValueError):
        CandidateStrategy(name="Bad Name")


def test_halving_drops_the_clearly_losing_half() -> None:
    t = Tournament(component="web", alive=["a", "b", "c"], threshold=0.1)
    result = t.record_round({"a": 0.9, "b": 0.8, "c": 0.3})
    assert result.kept == ["a", "b"] and result.dropped == ["c"] and result.gap == pytest.approx(0.5)
    assert t.alive == ["a", "b"] and t.pending_termination() == ["c"]
    result = t.record_round({"a": 0.7, "b": 0.75})
    assert result.dropped == [] and t.alive == ["a", "b"]  # within the threshold: both stay
    result = t.record_round({"a": 0.95, "b": 0.6})
    assert result.kept == ["a"] and t.alive == ["a"]
    assert t.record_round({"a": 0.1}).kept == ["a"]  # the last one always stays
    assert t.rounds == 4 and [e.candidate for e in t.eliminated] == ["c", "b"]


def test_ties_keep_by_name_and_zero_threshold() -> None:
    t = Tournament(component="web", alive=["b", "a"], threshold=0.0)
    assert t.record_round({"a": 0.5, "b": 0.5}).dropped == []
    t2 = Tournament(component="web", alive=["b", "a"], threshold=0.0)
    assert t2.record_round({"a": 0.5, "b": 0.5000001}).kept == ["b"]


def test_missing_or_bad_scores_refused() -> None:
    t = Tournament(component="web", alive=["a", "b"])
    with pytest.raises(InvalidInputError, match="no score"):
        t.record_round({"a": 1.0})
    with pytest.raises(InvalidInputError, match="not finite"):
        t.record_round({"a": 1.0, "b": float("nan")})
    assert t.rounds == 0


def test_finish_and_snapshot_bookkeeping() -> None:
    t = Tournament(component="web", alive=["a", "b"])
    with pytest.raises(InvalidInputError):
        t.finish("z")
    lost = t.finish("b", {"a": 0.4, "b": 0.6})
    assert [e.candidate for e in lost] == ["a"] and lost[0].score == 0.4
    assert t.winner == "b" and t.alive == ["b"] and t.pending_termination() == ["a"]
    t.record_snapshot("a", "snap-1")
    assert t.pending_termination() == []
    with pytest.raises(InvalidInputError):
        t.record_snapshot("b", "snap-2")
    restored = Tournament.model_validate_json(t.model_dump_json())
    assert restored == t
