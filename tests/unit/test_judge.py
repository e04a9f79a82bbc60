"""The judge: fixed weights, normalised size and budget, tie-break, and an LLM that is never decisive alone."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from coordinator.judge import WEIGHTS, Evidence, judge, score
from sandbox_agents.errors import InvalidInputError
from sandbox_agents.llm.base import AssistantTurn, LLMRequest
from sandbox_agents.llm.cassette import Cassette
from sandbox_agents.llm.replay import ReplayProvider


def ev(name: str, **kw: Any) -> Evidence:
    base: dict[str, Any] = dict(
        swarm_score=0.8,
        criteria_passed=4,
        criteria_total=5,
        tests_passed=8,
        tests_total=10,
        build_size_bytes=100_000,
        budget_spent_usd=1.0,
    )
    return Evidence(candidate=name, **{**base, **kw})


def llm(answer: dict[str, Any] | str, component: str = "web") -> ReplayProvider:
    text = answer if isinstance(answer, str) else json.dumps(answer)
    usage = {"input_tokens": 700, "output_tokens": 40}
    turns = [{"role": "judge", "task": f"judge:{component}", "turn": 0, "text": text, "usage": usage}]
    return ReplayProvider.from_cassette(Cassette.loads(yaml.safe_dump({"version": 1, "turns": turns})))


def test_weights_are_fixed_and_sum_to_one() -> None:
    assert WEIGHTS == {"criteria": 0.4, "swarm": 0.25, "tests": 0.2, "size": 0.05, "budget": 0.05, "llm": 0.05}
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)


def test_score_without_llm_renormalises() -> None:
    perfect = ev("a", swarm_score=1.0, criteria_passed=5, tests_passed=10)
    [ranked] = score([perfect])
    assert ranked.score == pytest.approx(1.0)
    assert "llm" not in ranked.terms
    assert sum(t.weight for t in ranked.terms.values()) == pytest.approx(1.0)
    assert ranked.terms["criteria"].weight == pytest.approx(0.4 / 0.95)


def test_size_and_budget_are_relative() -> None:
    small, big = score([ev("small", build_size_bytes=1024), ev("big", build_size_bytes=3 * 1024)])
    assert small.candidate == "small" and small.terms["size"].value == 1.0
    assert big.terms["size"].value == pytest.approx(0.5)
    cheap, dear = score([ev("cheap", budget_spent_usd=0.99), ev("dear", budget_spent_usd=1.99)])
    assert cheap.candidate == "cheap" and dear.terms["budget"].value == pytest.approx(0.5)


def test_tie_break_criteria_then_swarm_then_name() -> None:
    # Equal scores by construction: identical evidence → name decides.
    assert [r.candidate for r in score([ev("b"), ev("a")])] == ["a", "b"]
    # Same total score, more criteria passed wins: trade 0.4*0.2=0.08 of criteria for 0.08 of tests.
    more_criteria = ev("z", criteria_passed=5, tests_passed=4)
    more_tests = ev("y", criteria_passed=4, tests_passed=8)
    ranked = score([more_tests, more_criteria])
    assert ranked[0].score == pytest.approx(ranked[1].score)
    assert ranked[0].candidate == "z"


def test_invalid_evidence_refused() -> None:
    with pytest.raises(ValueError):
        ev("a", criteria_passed=6)
    with pytest.raises(InvalidInputError):
        score([])
    with pytest.raises(InvalidInputError):
        score([ev("a"), ev("a")])


async def test_evidence_alone_decides_without_provider() -> None:
    decision = await judge([ev("web~minimal", criteria_passed=5), ev("web~polished")], component="web")
    assert decision.winner == "web~minimal" and not decision.llm_used
    assert "most on criteria" in decision.reasons[1]
    event = decision.to_event()
    assert event.kind == "judge.decision" and event.data["winner"] == "web~minimal"
    assert event.data["ranking"][0]["terms"]["criteria"]["weight"] > 0


async def test_llm_signal_breaks_near_ties() -> None:
    provider = llm({"scores": {"a": {"score": 0.2, "reasons": "meh"}, "b": {"score": 0.9, "reasons": "clean"}}})
    decision = await judge([ev("a"), ev("b")], provider, component="web")
    assert decision.llm_used and decision.winner == "b"
    assert decision.ranking[0].llm_reasons == "clean"
    # what the signal cost travels with the decision, for the build's ledger
    assert [(c.role, c.model, c.usage.total_tokens) for c in decision.usage] == [("judge", "replay", 740)]


async def test_llm_signal_not_decisive_against_a_clear_evidence_gap() -> None:
    provider = llm({"scores": {"good": {"score": 0.0, "reasons": "ugly"}, "bad": {"score": 1.0, "reasons": "lovely"}}})
    good = ev("good", criteria_passed=5, swarm_score=0.9)
    bad = ev("bad", criteria_passed=3, swarm_score=0.8)
    decision = await judge([good, bad], provider, component="web")
    assert decision.llm_used and decision.winner == "good"
    assert decision.ranking[1].terms["llm"].value == 1.0


async def test_llm_list_answer_and_fenced_json() -> None:
    text = 'Scores:\n```json\n[{"candidate": "a", "score": 1}, {"candidate": "b", "score": 0}]\n```'
    decision = await judge([ev("a"), ev("b")], llm(text), component="web")
    assert decision.llm_used and decision.winner == "a"


@pytest.mark.parametrize("answer", ["not json at all", '{"scores": {"a": {"score": 2}}}', '{"scores": {"a": 0.5}}'])
async def test_bad_llm_answer_falls_back_to_evidence(answer: str) -> None:
    decision = await judge([ev("a"), ev("b", criteria_passed=5)], llm(answer), component="web")
    assert not decision.llm_used and decision.winner == "b"
    assert [c.usage.total_tokens for c in decision.usage] == [740]  # an unusable answer still cost its tokens
    assert any("LLM signal unavailable" in r for r in decision.reasons)


async def test_missing_cassette_turn_falls_back_and_request_is_keyed() -> None:
    seen: list[LLMRequest] = []

    class Spy:
        name = "spy"

        async def complete(self, request: LLMRequest) -> AssistantTurn:
            seen.append(request)
            return await llm({}, component="other").complete(request)

        async def aclose(self) -> None: ...

    decision = await judge([ev("a")], Spy(), component="api")
    assert decision.winner == "a" and not decision.llm_used
    assert (seen[0].key.role, seen[0].key.task, seen[0].key.turn) == ("judge", "judge:api", 0)
    assert "swarm_score" in seen[0].messages[0].content
