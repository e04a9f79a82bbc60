"""The fleet plan: which sandboxes a build needs, who works in each, and the merge order.

From a (locked) intent contract, deterministically:

* components in dependency order (topological; ties broken by name, so a plan never depends
  on the order a planner LLM happened to list them);
* one *slot* (a sandbox and its team) per component, or one per candidate when the
  component runs a tournament: slot ids ``frontend`` or ``frontend~minimal``;
* a team of 3–5 agents per slot (the component's wish or one per task, clamped), its tasks
  dealt round-robin in dependency order, so a dependent task never precedes its dependency
  in any agent's queue;
* a :class:`SandboxSpec` per slot: tags ``build``/``component``/``candidate``/``slot``, the
  dev-server port, no network at all (dependencies come through the install phase);
* merge order = dependency order (a tournament's winner merges in its component's place).

The plan is a pure function of the contract and settings: a restarted coordinator recomputes
the same plan and finds its sandboxes again by their tags.
"""

from __future__ import annotations

import json
import logging

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coordinator.contracts import Component, ContractTask, IntentContract, find_cycle
from coordinator.team import ComponentWork, TeamTask
from coordinator.tournament import CandidateStrategy, Tournament, resolve_strategies
from sandbox_agents.backends.base import InstallRequest, NetworkPolicy, SandboxSpec
from sandbox_agents.errors import ContractError, InvalidInputError

logger = logging.getLogger(__name__)

SLOT_SEPARATOR = "~"


class PlanSettings(BaseModel):
    """Knobs of the planner that are not part of the intent (they do not change the lock)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    build_id: str = ""
    """Tagged on every sandbox (``build``), so a restarted coordinator finds its fleet."""
    min_agents: int = Field(default=3, ge=1, le=5)
    max_agents: int = Field(default=5, ge=1, le=5)
    profile: str = "default"
    """Sandbox profile of components that name none."""
    cpu: float = Field(default=1.0, gt=0, le=64)
    memory_mb: int = Field(default=2048, ge=16)
    timeout_s: float = Field(default=4 * 3600.0, gt=0, le=86400)
    idle_timeout_s: float | None = Field(default=1800.0, gt=0, le=86400)

    @model_validator(mode="after")
    def _bounds(self) -> PlanSettings:
        if self.min_agents > self.max_agents:
            raise ValueError(f"min_agents {self.min_agents} > max_agents {self.max_agents}")
        return self


class SlotPlan(BaseModel):
    """One sandbox of the fleet and the team that works in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slot_id: str
    """``{component}`` or, in a tournament, ``{component}~{strategy}``."""
    component: str
    candidate: CandidateStrategy | None = None
    """The strategy of a tournament candidate; None outside tournaments."""
    agents: int = Field(ge=1, le=5)
    queues: tuple[tuple[str, ...], ...]
    """Task ids per agent, in the order each agent runs them."""
    tasks: tuple[ContractTask, ...]
    check_command: list[str] | str | None = None
    packages: tuple[InstallRequest, ...] = ()
    """The component's dependency manifests (the install phase runs before each check)."""
    interfaces: str = ""
    """The locked interfaces the team keeps to: what it provides and what it builds against."""
    brief: str = ""
    """The app and this component's part of it (:func:`app_brief`), in every agent's system prompt."""
    depends_on: tuple[str, ...] = ()
    """The component's providers (the contract's ``depends_on``)."""
    spec: SandboxSpec

    @property
    def team_name(self) -> str:
        """The slot id in the team's charset (``~`` → ``.``): agents play ``agent:{team_name}:{n}``."""
        return self.slot_id.replace(SLOT_SEPARATOR, ".")

    def work(self) -> ComponentWork:
        """The team's work for this slot: tasks with their agent fixed, the interfaces and strategy suffix appended."""
        agent_of = {tid: n for n, queue in enumerate(self.queues) for tid in queue}
        suffix = "\n\n".join(
            part for part in (self.interfaces, self.candidate.prompt_suffix if self.candidate else "") if part
        )
        tasks = tuple(
            TeamTask(
                id=t.id,
                title=t.title,
                instructions=(t.instructions + (f"\n\n{suffix}" if suffix else "")).strip(),
                acceptance=t.acceptance,
                check_command=t.check_command,
                files=t.files,
                depends_on=t.depends_on,
                agent=agent_of[t.id],
            )
            for t in self.tasks
        )
        return ComponentWork(
            component=self.team_name,
            tasks=tasks,
            check_command=self.check_command,
            agents=self.agents,
            packages=self.packages,
            brief=self.brief,
        )


class FleetPlan(BaseModel):
    """The whole fleet of one build."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    contract: str
    """Name of the contract planned."""
    order: tuple[str, ...]
    """Components in dependency order."""
    slots: tuple[SlotPlan, ...]
    """Slots in dependency order of their component, candidates in strategy order."""
    merge_order: tuple[str, ...]
    """Components in the order the MergeGate admits them."""
    halving_thresholds: dict[str, float] = Field(default_factory=dict)
    """Component → its tournament's successive-halving threshold (tournament components only)."""

    def slots_of(self, component: str) -> list[SlotPlan]:
        return [s for s in self.slots if s.component == component]

    def slot(self, slot_id: str) -> SlotPlan:
        for s in self.slots:
            if s.slot_id == slot_id:
                return s
        raise InvalidInputError(f"no slot {slot_id!r} in the plan", field="slot_id")

    def tournaments(self, threshold: float | None = None) -> list[Tournament]:
        """A fresh :class:`Tournament` per component with more than one candidate.

        Args:
            threshold: Overrides every component's ``halving_threshold``.
        """
        out = []
        for component in self.order:
            slots = self.slots_of(component)
            if len(slots) > 1:
                gap = self.halving_thresholds.get(component, 0.1) if threshold is None else threshold
                out.append(Tournament(component=component, alive=[s.slot_id for s in slots], threshold=gap))
        return out


def dependency_order(contract: IntentContract) -> list[str]:
    """Component names, each after its dependencies; among ready components, by name.

    Raises:
        ContractError: The dependencies form a cycle (only for a contract built without validation).
    """
    deps = {c.name: set(c.depends_on) for c in contract.components}
    done: list[str] = []
    while len(done) < len(deps):
        ready = sorted(n for n, d in deps.items() if n not in done and d <= set(done))
        if not ready:
            cycle = find_cycle({n: sorted(d) for n, d in deps.items() if n not in done}) or []
            raise ContractError(f"dependency cycle among components: {' -> '.join(cycle)}")
        done.append(ready[0])
    return done


def task_order(tasks: tuple[ContractTask, ...]) -> list[ContractTask]:
    """Tasks in dependency order, keeping the contract's order among ready ones (its author's intent)."""
    done: set[str] = set()
    ordered: list[ContractTask] = []
    pending = list(tasks)
    while pending:
        ready = next((t for t in pending if all(d in done for d in t.depends_on)), None)
        if ready is None:
            raise ContractError(f"dependency cycle among tasks {[t.id for t in pending]}")
        ordered.append(ready)
        done.add(ready.id)
        pending.remove(ready)
    return ordered


def assign_tasks(tasks: tuple[ContractTask, ...], agents: int) -> tuple[tuple[str, ...], ...]:
    """Deal tasks round-robin in dependency order: each agent's queue respects every dependency."""
    queues: list[list[str]] = [[] for _ in range(agents)]
    for n, task in enumerate(task_order(tasks)):
        queues[n % agents].append(task.id)
    return tuple(tuple(q) for q in queues)


def team_size(component: Component, settings: PlanSettings) -> int:
    """The component's wish, or one agent per task, clamped to ``[min_agents, max_agents]``."""
    wanted = component.agents if component.agents is not None else len(component.tasks)
    return max(settings.min_agents, min(settings.max_agents, wanted))


def slot_spec(component: Component, settings: PlanSettings, slot_id: str, candidate: str = "") -> SandboxSpec:
    """The sandbox of one slot: tagged for lookup and offline (installs run in an installer sandbox)."""
    tags = {"component": component.name, "kind": component.kind, "slot": slot_id, "candidate": candidate}
    if settings.build_id:
        tags["build"] = settings.build_id
    return SandboxSpec(
        profile=component.profile or settings.profile,
        cpu=settings.cpu,
        memory_mb=settings.memory_mb,
        timeout_s=settings.timeout_s,
        idle_timeout_s=settings.idle_timeout_s,
        network=NetworkPolicy.NONE,  # dependencies come through the install phase, never the slot's own network
        tags=tags,
        ports=(component.dev_server.port,) if component.dev_server else (),
    )


def interface_note(contract: IntentContract, component: Component) -> str:
    """The locked interfaces a component's agents are told: its own (to keep to) and those it uses."""
    parts = []
    if component.provides is not None:
        parts.append(
            f"Interface {component.name} provides (locked: dependents are built against it, keep to it exactly):\n"
            + component.provides.describe()
            + f"\nIf it must change, `publish` a decision with key `interface.{component.name}` whose message is "
            "the whole new interface as JSON (keys http, tables, modules, as above): its dependents are rebuilt "
            "against it before they merge."
        )
    for used in component.uses:
        provider = contract.component(used)
        if provider.provides is not None:
            parts.append(f"Interface of {used}, which this component uses:\n" + provider.provides.describe())
    return "\n\n".join(parts)


BRIEF_CAP = 6000
"""Most characters of an app brief (a whole contract's criteria can be long; the prompt has a budget)."""


def app_brief(contract: IntentContract, component: Component, *, cap: int = BRIEF_CAP) -> str:
    """What a component's agents are told about the app they build, before their task.

    The app's summary and constraints; the component's description, stack (profile, packages, dev
    server and port, check); its neighbours (the providers it builds against and what runs them,
    the dependents built against it) and the one origin the preview serves; and the success
    criteria that concern it, which the merge gate runs against main.
    """
    lines = [f"App {contract.name}: {contract.summary.strip()}"]
    lines += [f"- constraint: {c}" for c in contract.constraints]
    lines.append(f"\nYour component: {component.name} ({component.kind}) — {component.description.strip()}")
    lines.append(f"- sandbox profile: {component.profile or 'default'}")
    for pkg in component.packages:
        lines.append(f"- dependencies: the {pkg.manager} manifest in {pkg.dir} (installed by the install phase)")
    if component.dev_server is not None:
        server = component.dev_server
        command = server.command if isinstance(server.command, str) else " ".join(server.command)
        lines.append(f"- dev server: `{command}` listening on port {server.port} (ready at {server.ready_path})")
    if component.check_command is not None:
        check = component.check_command
        check_text = check if isinstance(check, str) else " ".join(check)
        lines.append(f"- component check (must pass before it merges): `{check_text}`")
    for name in dict.fromkeys((*component.depends_on, *component.uses)):
        provider = contract.component(name)
        port = f", its server on port {provider.dev_server.port}" if provider.dev_server else ""
        lines.append(f"- builds on {name} ({provider.kind}{port}): {provider.description.strip()}")
    dependents = [c.name for c in contract.components if component.name in (*c.depends_on, *c.uses)]
    if dependents:
        lines.append(f"- built on by: {', '.join(dependents)} (they rely on what this component provides)")
    if contract.origin is not None:
        routes = ", ".join(f"{prefix} → {name}" for prefix, name in contract.origin.routes.items())
        lines.append(f"- the preview serves the app on one origin (port {contract.origin.port}): {routes}")
    criteria = [c for c in contract.success_criteria if c.component in (None, component.name)]
    if criteria:
        lines.append("\nSuccess criteria the merge gate checks on main (yours, and the app's):")
        for criterion in criteria:
            exclude = {"component", "id", "type"}
            fields = criterion.model_dump(mode="json", exclude_none=True, exclude_defaults=True, exclude=exclude)
            lines.append(f"- {criterion.id} ({criterion.type}): " + json.dumps(fields, separators=(",", ":")))
    text = "\n".join(lines)
    return text if len(text) <= cap else text[: cap - 20].rstrip() + "\n…(brief cut)"


def plan_fleet(contract: IntentContract, settings: PlanSettings | None = None) -> FleetPlan:
    """Plan the fleet of a contract (pass ``locked.contract`` for a locked one)."""
    settings = settings or PlanSettings()
    order = dependency_order(contract)
    slots: list[SlotPlan] = []
    for name in order:
        component = contract.component(name)
        agents = team_size(component, settings)
        queues = assign_tasks(component.tasks, agents)
        strategies: list[CandidateStrategy | None] = list(resolve_strategies(component.tournament)) or [None]
        for strategy in strategies:
            slot_id = name if strategy is None else f"{name}{SLOT_SEPARATOR}{strategy.name}"
            slots.append(
                SlotPlan(
                    slot_id=slot_id,
                    component=name,
                    candidate=strategy,
                    agents=agents,
                    queues=queues,
                    tasks=component.tasks,
                    check_command=component.check_command,
                    packages=tuple(
                        InstallRequest(manager=p.manager, dir=p.dir, timeout_s=p.timeout_s) for p in component.packages
                    ),
                    interfaces=interface_note(contract, component),
                    brief=app_brief(contract, component),
                    depends_on=component.depends_on,
                    spec=slot_spec(component, settings, slot_id, strategy.name if strategy else ""),
                )
            )
    thresholds = {c.name: c.tournament.halving_threshold for c in contract.components if c.tournament.candidates > 1}
    plan = FleetPlan(
        contract=contract.name,
        order=tuple(order),
        slots=tuple(slots),
        merge_order=tuple(order),
        halving_thresholds=thresholds,
    )
    logger.info("fleet plan for %s: %d slots, merge order %s", contract.name, len(slots), " -> ".join(order))
    return plan
