"""Every example's cassette answers the plan of its intent, and nothing else.

Replay never invents an answer: a turn key the cassette lacks fails the build at that turn, and a
recorded turn nobody asks for means the cassette was written against another plan. Both are
caught here from the files alone (no Ray, no sandbox): the plan's queues against ``meta.slots``,
a first attempt for every task, escalation keys on the agent the team would give them to
(docs/agents.md: ``#retry1`` the same agent, ``#handoff`` agent (i+1) mod N), and every run
ending with a turn without tool calls.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from coordinator.contracts import load_contract
from coordinator.plan import FleetPlan, plan_fleet
from coordinator.resources import examples_dir
from sandbox_agents.llm.cassette import Cassette, CassetteTurn

INTENTS = sorted((examples_dir() / "intents").glob("*.yaml"))


def plan_and_cassette(intent: Path) -> tuple[FleetPlan, Cassette]:
    plan = plan_fleet(load_contract(intent))
    return plan, Cassette.load(examples_dir() / "cassettes" / intent.name)


def expected_roles(plan: FleetPlan) -> dict[tuple[str, str], set[str]]:
    """(role, task key) → the attempts that may be asked of that role: where each suffix would go."""
    allowed: dict[tuple[str, str], set[str]] = defaultdict(set)
    for slot in plan.slots:
        for n, queue in enumerate(slot.queues):
            for task in queue:
                allowed[(f"agent:{slot.team_name}:{n}", task)].update({"", "#retry1"})
                allowed[(f"agent:{slot.team_name}:{(n + 1) % slot.agents}", task)].add("#handoff")
    return allowed


def test_there_are_example_intents() -> None:
    assert {p.stem for p in INTENTS} >= {"hello-calc", "todo-fullstack", "kanban-vite"}


@pytest.mark.parametrize("intent", INTENTS, ids=[p.stem for p in INTENTS])
def test_meta_slots_are_the_plan_of_the_intent(intent: Path) -> None:
    plan, cassette = plan_and_cassette(intent)
    slots = {s.slot_id: {"agents": s.agents, "queues": [list(q) for q in s.queues]} for s in plan.slots}
    assert cassette.meta.get("slots") == slots


@pytest.mark.parametrize("intent", INTENTS, ids=[p.stem for p in INTENTS])
def test_every_task_has_a_first_attempt_on_its_agent(intent: Path) -> None:
    plan, cassette = plan_and_cassette(intent)
    keys = {(t.role, t.task) for t in cassette.turns}
    missing = [
        (f"agent:{slot.team_name}:{n}", task)
        for slot in plan.slots
        for n, queue in enumerate(slot.queues)
        for task in queue
        if (f"agent:{slot.team_name}:{n}", task) not in keys
    ]
    assert not missing


@pytest.mark.parametrize("intent", INTENTS, ids=[p.stem for p in INTENTS])
def test_every_agent_turn_is_one_the_team_would_ask_for(intent: Path) -> None:
    plan, cassette = plan_and_cassette(intent)
    allowed = expected_roles(plan)
    stray = []
    for turn in cassette.turns:
        if not turn.role.startswith("agent:"):
            continue
        task, _, attempt = turn.task.partition("#")
        if ("#" + attempt if attempt else "") not in allowed.get((turn.role, task), set()):
            stray.append((turn.role, turn.task, turn.turn))
    assert not stray


@pytest.mark.parametrize("intent", INTENTS, ids=[p.stem for p in INTENTS])
def test_every_run_has_consecutive_turns_and_ends_without_tool_calls(intent: Path) -> None:
    _, cassette = plan_and_cassette(intent)
    runs: dict[tuple[str, str], list[CassetteTurn]] = defaultdict(list)
    for turn in cassette.turns:
        runs[(turn.role, turn.task)].append(turn)
    for key, turns in runs.items():
        turns.sort(key=lambda t: t.turn)
        assert [t.turn for t in turns] == list(range(len(turns))), key
        assert not turns[-1].tool_calls, f"{key}: the last turn asks for tools, so the agent would never finish"
