"""Tournament candidates really build differently: own roles, the strategy's prompt suffix, model and temperature.

The chain, end to end without Ray: the plan gives each candidate its own team name (so its
agents play their own cassette roles) and appends the strategy's ``prompt_suffix`` to every
task; the coordinator's team config carries the strategy's model and temperature; the team
hands them to each agent's config; the agent loop puts them on every ``LLMRequest``.
"""

from __future__ import annotations

from actors.agent import AgentConfig
from actors.build.adapters import RayFleet, RayTeams
from actors.build.config import CoordinatorConfig
from actors.team import TeamConfig
from coordinator.contracts import load_contract
from coordinator.placement import Placement
from coordinator.plan import PlanSettings, plan_fleet
from coordinator.resources import examples_dir
from coordinator.team import agent_role
from coordinator.tournament import BUILTIN_STRATEGIES
from sandbox_agents.agent_loop import AgentLoop
from sandbox_agents.agent_models import AgentTask
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.backends.fake import FakeBackend
from sandbox_agents.llm.base import AssistantTurn, LLMRequest
from sandbox_agents.tools import AgentTools

TODO = examples_dir() / "intents" / "todo-fullstack.yaml"


def todo_plan():  # type: ignore[no-untyped-def]
    return plan_fleet(load_contract(TODO), PlanSettings(build_id="b1"))


def test_each_candidate_has_its_own_roles() -> None:
    plan = todo_plan()
    minimal, polished = plan.slot("frontend~minimal"), plan.slot("frontend~polished")
    assert (minimal.team_name, polished.team_name) == ("frontend.minimal", "frontend.polished")
    assert minimal.work().component == "frontend.minimal"
    roles = {agent_role(slot.work().component, n) for slot in (minimal, polished) for n in range(slot.agents)}
    assert len(roles) == minimal.agents + polished.agents
    assert "agent:frontend.minimal:1" in roles and "agent:frontend.polished:1" in roles


def test_the_strategy_suffix_ends_every_task_of_its_candidate_only() -> None:
    plan = todo_plan()
    for name in ("minimal", "polished"):
        suffix = BUILTIN_STRATEGIES[name].prompt_suffix
        work = plan.slot(f"frontend~{name}").work()
        assert work.tasks and all(t.instructions.endswith("\n\n" + suffix) for t in work.tasks)
    backend = plan.slot("backend").work()
    assert not any(s.prompt_suffix in t.instructions for t in backend.tasks for s in BUILTIN_STRATEGIES.values())


def test_the_team_config_carries_the_strategy_model_and_temperature() -> None:
    plan = todo_plan()
    inline = plan.slot("frontend~polished").model_copy(
        update={"candidate": BUILTIN_STRATEGIES["polished"].model_copy(update={"model": "big-model"})}
    )
    teams = RayTeams(
        CoordinatorConfig(build_id="b1", redis_url="redis://x"),
        RayFleet("b1", Placement.single({"type": "fake"}), None),
    )
    minimal = teams.team_config(plan.slot("frontend~minimal"), plan.slot("frontend~minimal").work())
    assert (minimal.model, minimal.temperature) == (None, BUILTIN_STRATEGIES["minimal"].temperature)
    polished = teams.team_config(inline, inline.work())
    assert (polished.model, polished.temperature) == ("big-model", BUILTIN_STRATEGIES["polished"].temperature)
    plain = teams.team_config(plan.slot("backend"), plan.slot("backend").work())
    assert (plain.model, plain.temperature) == (None, None)
    # The config survives the actor boundary (a dict), and AgentConfig takes the same fields.
    again = TeamConfig.model_validate(polished.model_dump(mode="json"))
    assert (again.model, again.temperature) == ("big-model", 0.5)
    agent = AgentConfig(build_id="b1", sid="s", index=0, llm={}, redis_url="redis://x", model="m", temperature=0.5)
    assert (agent.model, agent.temperature) == ("m", 0.5)


class _Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.requests: list[LLMRequest] = []

    async def complete(self, request: LLMRequest) -> AssistantTurn:
        self.requests.append(request)
        return AssistantTurn(text="done")

    async def aclose(self) -> None:
        return None


async def test_the_agent_loop_puts_model_and_temperature_on_every_request() -> None:
    backend = FakeBackend()
    sandbox = await backend.create(SandboxSpec())
    provider = _Recorder()
    loop = AgentLoop(provider, AgentTools(sandbox), role="agent:frontend.polished:0", model="m1", temperature=0.5)
    outcome = await loop.run(AgentTask(id="web-page", title="page", instructions="write it"))
    assert outcome.status == "done"
    [request] = provider.requests
    assert (request.model, request.temperature) == ("m1", 0.5)
    assert request.key.role == "agent:frontend.polished:0"
    default = _Recorder()
    await AgentLoop(default, AgentTools(sandbox), role="agent:backend:0").run(
        AgentTask(id="t", title="t", instructions="x")
    )
    assert (default.requests[0].model, default.requests[0].temperature) == (None, None)
