"""The intent contract: whole-contract validation, loading from YAML/JSON, the shipped examples."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.contracts import (
    AgentTask,
    ContractInvalidError,
    HttpCriterion,
    IntentContract,
    dump_contract,
    find_cycle,
    load_contract,
    parse_contract,
)
from coordinator.resources import examples_dir
from sandbox_agents.errors import ContractError

EXAMPLES = sorted((examples_dir() / "intents").glob("*.yaml"))


def base() -> dict[str, Any]:
    """A small valid contract as a mapping; tests break one thing at a time."""
    return {
        "name": "shop",
        "summary": "A tiny shop.",
        "components": [
            {"name": "db", "kind": "database", "description": "schema", "tasks": [{"id": "s", "title": "schema"}]},
            {
                "name": "api",
                "kind": "backend",
                "description": "API",
                "depends_on": ["db"],
                "dev_server": {"command": "python3 api.py", "port": 8000},
                "tasks": [{"id": "a", "title": "api"}, {"id": "b", "title": "tests", "depends_on": ["a"]}],
            },
        ],
        "success_criteria": [
            {"type": "command", "command": "python3 -m unittest", "component": "api"},
            {"type": "http", "path": "/items", "component": "api"},
            {"type": "file", "path": "api.py"},
        ],
    }


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ContractInvalidError) as info:
        parse_contract(data)
    assert isinstance(info.value, ContractError)
    return info.value.problems


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_intent_loads_and_validates(path: Path) -> None:
    contract = load_contract(path)
    assert contract.components and contract.success_criteria
    assert load_contract(dump_contract(contract)) == contract


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"hello-calc.yaml", "todo-fullstack.yaml"}


def test_valid_contract_fills_criterion_ids_and_defaults() -> None:
    contract = parse_contract(base())
    assert [c.id for c in contract.success_criteria] == ["command-1", "http-2", "file-3"]
    assert isinstance(contract.success_criteria[1], HttpCriterion)
    assert contract.success_criteria[1].expected_status == 200
    assert contract.budget.usd > 0 and contract.component("api").tournament.candidates == 1
    assert [c.id for c in contract.criteria_of("api")] == ["command-1", "http-2"]


def test_dependency_cycle_is_named() -> None:
    data = base()
    data["components"][0]["depends_on"] = ["api"]
    problems = problems_of(data)
    assert any("dependency cycle among components: api -> db -> api" in p for p in problems)


def test_three_node_cycle_and_find_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": []}) is None


def test_unknown_dependency_and_duplicate_name_all_reported() -> None:
    data = base()
    data["components"][1]["depends_on"] = ["db", "cache"]
    data["components"].append(copy.deepcopy(data["components"][0]))
    problems = problems_of(data)
    assert "component 'api' depends on unknown component 'cache'" in problems
    assert "duplicate component name 'db'" in problems


def test_self_dependency() -> None:
    data = base()
    data["components"][0]["depends_on"] = ["db"]
    assert "component 'db' depends on itself" in problems_of(data)


def test_criteria_must_reference_existing_components_with_servers() -> None:
    data = base()
    data["success_criteria"].append({"type": "route", "path": "/", "component": "web"})
    data["success_criteria"].append({"id": "ui", "type": "ui", "component": "db"})
    problems = problems_of(data)
    assert "success criterion 'route-4' refers to unknown component 'web'" in problems
    assert any("'ui' needs a served app but component 'db' has no dev_server" in p for p in problems)


def test_duplicate_criterion_ids_ports_and_tasks() -> None:
    data = base()
    data["success_criteria"] = [{"id": "x", "type": "file", "path": "a"}, {"id": "x", "type": "file", "path": "b"}]
    data["components"][0]["dev_server"] = {"command": "x", "port": 8000}
    data["components"][0]["tasks"].append({"id": "s", "title": "again"})
    problems = problems_of(data)
    assert "duplicate success criterion id 'x'" in problems
    assert "components 'db' and 'api' both serve on port 8000" in problems
    assert "component 'db': duplicate task id 's'" in problems


def test_task_dependencies_checked() -> None:
    data = base()
    data["components"][1]["tasks"][0]["depends_on"] = ["b"]
    data["components"][0]["tasks"][0]["depends_on"] = ["nope"]
    problems = problems_of(data)
    assert "component 'api': dependency cycle among tasks: a -> b -> a" in problems
    assert "component 'db': task 's' depends on unknown task 'nope'" in problems


def test_structural_errors_have_locations() -> None:
    data = base()
    data["components"][0]["kind"] = "mainframe"
    data["extra"] = 1
    data["success_criteria"][0]["type"] = "vibes"
    problems = problems_of(data)
    assert any(p.startswith("components.0.kind:") for p in problems)
    assert any(p.startswith("extra:") for p in problems)
    assert any(p.startswith("success_criteria.0:") for p in problems)


def test_tournament_settings_validated() -> None:
    data = base()
    data["components"][1]["tournament"] = {"candidates": 2, "strategies": ["minimal", "flashy"]}
    assert any("unknown strategy 'flashy'" in p for p in problems_of(data))
    data["components"][1]["tournament"] = {"candidates": 3, "strategies": ["minimal", "robust"]}
    assert any("3 candidates but 2 strategies" in p for p in problems_of(data))
    data["components"][1]["tournament"] = {"candidates": 4}
    assert any("candidates" in p for p in problems_of(data))


def test_load_from_json_text_and_bad_inputs(tmp_path: Path) -> None:
    contract = load_contract(json.dumps(base()))
    assert contract.name == "shop"
    path = tmp_path / "c.json"
    path.write_text(dump_contract(contract, fmt="json"))
    assert load_contract(path) == contract
    assert load_contract(str(path)) == contract
    with pytest.raises(ContractInvalidError, match="not a mapping|must be a mapping"):
        load_contract("just words")
    with pytest.raises(ContractInvalidError, match="not YAML"):
        load_contract("a: [1,\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    with pytest.raises(ContractInvalidError, match=str(bad)):
        load_contract(bad)


def test_task_converts_to_agent_task() -> None:
    task = parse_contract(base()).component("api").tasks[1]
    agent_task = task.to_agent_task(note="Be brief.")
    assert isinstance(agent_task, AgentTask)
    assert agent_task.id == "b" and agent_task.instructions == "Be brief."


def test_contract_is_immutable() -> None:
    contract: IntentContract = parse_contract(base())
    with pytest.raises(ValueError):
        contract.name = "other"  # type: ignore[misc]
