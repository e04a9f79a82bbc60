"""MeteredProvider: every answered turn's usage goes to the sink, with who asked and which model."""

from __future__ import annotations

import pytest
import yaml

from sandbox_agents.errors import LLMError
from sandbox_agents.llm.base import LLMRequest, Message, TurnKey
from sandbox_agents.llm.cassette import Cassette
from sandbox_agents.llm.metered import MeteredProvider, collector
from sandbox_agents.llm.replay import ReplayProvider


def provider() -> ReplayProvider:
    turns = [
        {
            "role": "planner",
            "task": "intent",
            "turn": 0,
            "text": "a plan",
            "usage": {"input_tokens": 90, "output_tokens": 9},
        },
        {"role": "planner", "task": "intent", "turn": 1, "text": "again", "model": "claude-haiku-4"},
    ]
    return ReplayProvider.from_cassette(Cassette.loads(yaml.safe_dump({"version": 1, "turns": turns})))


def request(turn: int, task: str = "intent") -> LLMRequest:
    return LLMRequest(key=TurnKey(role="planner", task=task, turn=turn), messages=[Message(role="user", content="x")])


async def test_each_answered_turn_is_reported_with_role_model_and_usage() -> None:
    charges, sink = collector()
    metered = MeteredProvider(provider(), sink)
    assert (await metered.complete(request(0))).text == "a plan"
    await metered.complete(request(1))
    assert [(c.role, c.model, c.usage.input_tokens, c.usage.output_tokens) for c in charges] == [
        ("planner", "replay", 90, 9),
        ("planner", "claude-haiku-4", 0, 0),
    ]


async def test_a_turn_that_fails_reports_nothing() -> None:
    charges, sink = collector()
    with pytest.raises(LLMError):
        await MeteredProvider(provider(), sink).complete(request(0, task="not-in-the-cassette"))
    assert charges == []
