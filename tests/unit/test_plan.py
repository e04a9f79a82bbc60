"""The fleet plan: dependency order, slots and tournaments, team sizes, task queues, sandbox specs."""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.contracts import IntentContract, load_contract, parse_contract
from coordinator.plan import PlanSettings, assign_tasks, dependency_order, plan_fleet
from coordinator.resources import examples_dir
from sandbox_agents.backends.base import NetworkPolicy
from sandbox_agents.errors import ContractError

TODO = examples_dir() / "intents" / "todo-fullstack.yaml"


def comp(name: str, deps: list[str] = (), tasks: int = 1, **extra: Any) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "name": name,
        "kind": "other",
        "description": name,
        "depends_on": list(deps),
        "tasks": [{"id": f"{name}{i}", "title": f"t{i}"} for i in range(tasks)],
        **extra,
    }


def contract(*components: dict[str, Any]) -> IntentContract:
    return parse_contract(
        {
            "name": "x",
            "summary": "x",
            "components": list(components),
            "success_criteria": [{"type": "file", "path": "a"}],
        }
    )


def test_dependency_order_breaks_ties_by_name() -> None:
    c = contract(comp("web", ["api"]), comp("zeta"), comp("api", ["db"]), comp("db"), comp("auth"))
    assert dependency_order(c) == ["auth", "db", "api", "web", "zeta"]
    plan = plan_fleet(c)
    assert plan.order == plan.merge_order == ("auth", "db", "api", "web", "zeta")


def test_cycle_in_an_unvalidated_contract_is_refused() -> None:
    c = contract(comp("a"), comp("b"))
    broken = IntentContract.model_construct(
        **{
            **dict(c),
            "components": (
                c.components[0].model_copy(update={"depends_on": ("b",)}),
                c.components[1].model_copy(update={"depends_on": ("a",)}),
            ),
        }
    )
    with pytest.raises(ContractError, match="a -> b -> a"):
        dependency_order(broken)


def test_todo_example_plan_has_tournament_slots() -> None:
    plan = plan_fleet(load_contract(TODO), PlanSettings(build_id="b1"))
    assert [s.slot_id for s in plan.slots] == ["database", "backend", "frontend~minimal", "frontend~polished"]
    assert plan.merge_order == ("database", "backend", "frontend")
    minimal = plan.slot("frontend~minimal")
    assert minimal.candidate is not None and minimal.candidate.name == "minimal"
    assert minimal.spec.tags == {
        "build": "b1",
        "component": "frontend",
        "kind": "frontend",
        "slot": "frontend~minimal",
        "candidate": "minimal",
    }
    assert minimal.spec.ports == (5173,) and minimal.spec.network is NetworkPolicy.NONE
    assert plan.slot("backend").spec.ports == (8000,)
    assert plan.tournaments()[0].threshold == 0.1  # the contract's halving_threshold (default)
    [tournament] = plan.tournaments(threshold=0.2)
    assert tournament.component == "frontend" and tournament.alive == ["frontend~minimal", "frontend~polished"]
    assert tournament.threshold == 0.2


def test_team_size_is_clamped() -> None:
    c = contract(comp("one", tasks=1), comp("many", tasks=8), comp("asked", tasks=2, agents=4))
    plan = plan_fleet(c)
    assert {s.slot_id: s.agents for s in plan.slots} == {"asked": 4, "many": 5, "one": 3}
    small = plan_fleet(c, PlanSettings(min_agents=1, max_agents=2))
    assert {s.slot_id: s.agents for s in small.slots} == {"asked": 2, "many": 2, "one": 1}
    with pytest.raises(ValueError):
        PlanSettings(min_agents=4, max_agents=3)


def test_round_robin_respects_task_dependencies() -> None:
    c = parse_contract(
        {
            "name": "x",
            "summary": "x",
            "success_criteria": [{"type": "file", "path": "a"}],
            "components": [
                {
                    "name": "api",
                    "kind": "backend",
                    "description": "api",
                    "tasks": [
                        {"id": "tests", "title": "tests", "depends_on": ["server"]},
                        {"id": "server", "title": "server", "depends_on": ["models"]},
                        {"id": "models", "title": "models"},
                        {"id": "docs", "title": "docs"},
                    ],
                }
            ],
        }
    )
    queues = assign_tasks(c.components[0].tasks, 3)
    assert queues == (("models", "docs"), ("server",), ("tests",))
    flat = [t for q in zip(*[q + ("",) for q in queues], strict=False) for t in q if t]
    assert flat.index("models") < flat.index("server") < flat.index("tests")


def test_slots_with_packages_stay_offline_and_work_converts() -> None:
    c = contract(
        comp(
            "web",
            tasks=2,
            packages=[{"manager": "npm", "dir": "web"}],
            profile="node",
            check_command="npm test",
            tournament={"candidates": 2, "strategies": ["robust", "minimal"]},
        )
    )
    plan = plan_fleet(c)
    slot = plan.slot("web~robust")
    assert slot.spec.network is NetworkPolicy.NONE and slot.spec.profile == "node"
    work = slot.work()
    assert work.component == "web.robust" and work.agents == 3 and work.check_command == "npm test"
    assert all("robustness first" in t.instructions for t in work.tasks)
    assert [t.agent for t in work.tasks] == [0, 1]
    assert plan.slot("web~minimal").work().roles()[0] == "agent:web.minimal:0"
    assert plan_fleet(c) == plan  # deterministic
    with pytest.raises(ValueError, match="no slot"):
        plan.slot("web")


def test_the_old_install_commands_field_is_refused_with_the_new_name() -> None:
    with pytest.raises(ContractError, match="replaced by `packages`"):
        contract(comp("web", tasks=1, install=["npm ci"]))


def _with_interfaces(**web: Any) -> IntentContract:
    api = comp("api", tasks=1)
    api["provides"] = {
        "http": [
            {"method": "GET", "path": "/api/cards", "response": [{"id": 1, "title": "t"}]},
            {
                "method": "POST",
                "path": "/api/cards",
                "request": {"title": "t"},
                "status": 201,
                "errors": {400: "no title"},
            },
        ],
        "tables": {"cards": {"id": "INTEGER PRIMARY KEY", "title": "TEXT NOT NULL"}},
    }
    return contract(api, comp("web", tasks=1, depends_on=["api"], **web))


def test_a_dependent_is_told_the_interfaces_it_uses_and_a_provider_the_one_it_keeps() -> None:
    plan = plan_fleet(_with_interfaces(uses=["api"]))
    [provider] = plan.slot("api").work().tasks
    [dependent] = plan.slot("web").work().tasks
    assert "Interface api provides (locked" in provider.instructions
    assert "Interface of api, which this component uses:" in dependent.instructions
    assert '- POST /api/cards → 201; body {"title": "t"}; errors 400 (no title)' in dependent.instructions
    assert "- table cards(id INTEGER PRIMARY KEY, title TEXT NOT NULL)" in dependent.instructions
    assert "Interface" not in plan_fleet(_with_interfaces()).slot("web").work().tasks[0].instructions


def test_interfaces_are_checked_with_the_contract() -> None:
    with pytest.raises(ContractError, match="uses 'db' but does not depend on it"):
        _with_interfaces(uses=["db"])
    with pytest.raises(ContractError, match="declares no interface"):
        contract(comp("api", tasks=1), comp("web", tasks=1, depends_on=["api"], uses=["api"]))
    twice = comp("api", tasks=1)
    twice["provides"] = {"http": [{"method": "GET", "path": "/a"}, {"method": "GET", "path": "/a"}]}
    with pytest.raises(ContractError, match="declared twice: GET /a"):
        contract(twice)
    outside = comp("api", tasks=1)
    outside["provides"] = {"modules": {"../x.js": ["f"]}}
    with pytest.raises(ContractError, match="inside the workspace"):
        contract(outside)


def test_every_agents_system_prompt_carries_the_app_its_component_port_neighbours_and_criteria() -> None:
    from sandbox_agents.agent_prompt import build_system_prompt

    contract = load_contract(examples_dir() / "intents" / "todo-fullstack.yaml")
    plan = plan_fleet(contract)
    web = next(s for s in plan.slots if s.component == "frontend")
    work = web.work()
    prompt = build_system_prompt("agent:frontend:0", work.tasks[0].agent_task("t1", brief=work.brief))
    app = prompt.split("# The app you are building\n", 1)[1].split("# Your task", 1)[0]
    assert contract.summary.strip() in app and all(c in app for c in contract.constraints)
    assert "frontend (frontend)" in app and "port 5173" in app  # its component, its dev server's port
    assert "builds on backend (backend, its server on port 8000)" in app  # its neighbour and how to reach it
    own = {c.id for c in contract.success_criteria if c.component in (None, "frontend")}
    others = {c.id for c in contract.success_criteria} - own
    assert own and all(f"- {i} (" in app for i in own) and not any(f"- {i} (" in app for i in others)
    backend = next(s for s in plan.slots if s.component == "backend")
    assert "built on by: frontend" in backend.brief


def test_the_agent_prompt_stays_within_its_budget_on_the_largest_example() -> None:
    from sandbox_agents.agent_prompt import build_system_prompt

    contract = load_contract(examples_dir() / "intents" / "kanban-vite.yaml")
    budget_tokens = 12_000  # issue 19's p95 target; ~4 characters a token (docs/agents.md)
    for slot in plan_fleet(contract).slots:
        work = slot.work()
        for task in work.tasks:
            prompt = build_system_prompt("agent:x:0", task.agent_task(task.id, brief=work.brief))
            assert len(prompt) / 4 <= budget_tokens, (slot.slot_id, task.id, len(prompt))
