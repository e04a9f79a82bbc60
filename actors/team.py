"""SandboxTeam: the Ray actor that runs one component's team in one sandbox.

Thin over :class:`coordinator.team.TeamRunner`: it starts the team's Agent actors, hands
the runner its ports — the agents' handles, checks run through the SandboxProxy, an
:class:`~coordinator.team.LLMPlanner`, events and errors to the context bus, the unified
context from the bus — and serves the sandbox's per-file lock service to its agents
(``acquire(path, holder)``/``release(path, holder)``), so two agents in one sandbox never
clobber one file. Named ``build:{id}:team:{sid}`` in namespace ``kriptik``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from actors.agent import NAMESPACE, AgentConfig, start_agent, stop_agent
from coordinator.bus import BusConfig, ContextBus
from coordinator.bus_models import ErrorReport
from coordinator.team import ComponentWork, FileLockService, LLMPlanner, TeamReport, TeamRunner, prompt_context
from sandbox_agents.agent_models import AgentLimits, AgentOutcome, AgentTask
from sandbox_agents.backends.base import ExecResult, SandboxSpec
from sandbox_agents.errors import InvalidInputError, SandboxTimeoutError
from sandbox_agents.llm.config import LLMConfig, make_provider

logger = logging.getLogger(__name__)

_LLM_CONFIG: TypeAdapter[Any] = TypeAdapter(LLMConfig)


def team_name(build_id: str, sid: str) -> str:
    """The actor name of a sandbox's team: ``build:{id}:team:{sid}``."""
    return f"build:{build_id}:team:{sid}"


class TeamConfig(BaseModel):
    """What a SandboxTeam needs; crosses the actor boundary as a dict."""

    model_config = ConfigDict(extra="forbid")

    build_id: str = Field(min_length=1)
    sid: str = Field(min_length=1)
    """The sandbox's id within the build (its proxy is ``build:{id}:sbx:{sid}``)."""
    work: ComponentWork
    """The component's tasks, check and team size."""
    llm: dict[str, Any]
    """Provider config of the agents (replay: ``{"type": "replay", "cassettes": [...]}``)."""
    planner_llm: dict[str, Any] | None = None
    """Provider config of the planner (level 3); the agents' when unset."""
    redis_url: str
    bus_prefix: str = "kriptik"
    spec: SandboxSpec = Field(default_factory=SandboxSpec)
    """The sandbox's spec (workdir, env) as it was created."""
    limits: AgentLimits = Field(default_factory=AgentLimits)
    detached_agents: bool = False
    """Start the agents detached (production); tests leave them owned by the team."""
    model: str | None = None
    """Model of every agent's requests (a tournament candidate's strategy); None keeps the provider's."""
    temperature: float | None = Field(default=None, ge=0, le=2)
    """Sampling temperature of every agent's requests (a candidate's strategy); None keeps the provider's."""


class _AgentPort:
    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self.handle = handle

    async def run_task(self, task: AgentTask) -> AgentOutcome:
        return await self.handle.run_task.remote(task)


class _ProxyChecks:
    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy

    async def run_check(self, command: list[str] | str, timeout_s: float) -> ExecResult:
        try:
            return await self.proxy.exec.remote(command, None, None, timeout_s)
        except SandboxTimeoutError as exc:  # a hung check is a failed check, not a crashed team
            return ExecResult(exit_code=124, stdout=exc.stdout, stderr=f"{exc.stderr}\n[timed out after {timeout_s}s]")


class _BusEvents:
    def __init__(self, bus: ContextBus, build_id: str, log: list[dict[str, Any]]) -> None:
        self.bus = bus
        self.build_id = build_id
        self.log = log

    async def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.log.append({"kind": kind, **data})
        await self.bus.publish_event(self.build_id, kind, data)

    async def report_error(self, key: str, message: str, *, resolved: bool = False) -> None:
        await self.bus.publish(self.build_id, ErrorReport(source=key, message=message, resolved=resolved))


class SandboxTeamActor:
    """One sandbox's team. Construct through :func:`start_team`.

    Args:
        config: A :class:`TeamConfig` as a dict.
        proxy: The SandboxProxy handle of the team's sandbox (it must own a sandbox).
    """

    def __init__(self, config: dict[str, Any], proxy: Any) -> None:
        try:
            self.config = config if isinstance(config, TeamConfig) else TeamConfig.model_validate(config)
        except ValueError as exc:
            raise InvalidInputError(f"invalid team config: {exc}", field="config") from exc
        self._proxy = proxy
        self._locks = FileLockService()
        name = team_name(self.config.build_id, self.config.sid)
        self._bus = ContextBus(self.config.redis_url, BusConfig(prefix=self.config.bus_prefix), sender=name)
        self._agents: list[tuple[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._report: TeamReport | None = None

    async def start_agents(self) -> list[str]:
        """Start the team's Agent actors (once) and wait until each answers; returns their names."""
        if not self._agents:
            cfg = self.config
            me = ray.get_runtime_context().current_actor
            for n in range(cfg.work.agents):
                agent = AgentConfig(
                    build_id=cfg.build_id,
                    sid=cfg.sid,
                    index=n,
                    component=cfg.work.component,
                    llm=cfg.llm,
                    redis_url=cfg.redis_url,
                    bus_prefix=cfg.bus_prefix,
                    spec=cfg.spec,
                    limits=cfg.limits,
                    model=cfg.model,
                    temperature=cfg.temperature,
                )
                self._agents.append((agent.name, start_agent(agent, self._proxy, me, detached=cfg.detached_agents)))
            for _, handle in self._agents:
                await handle.ping.remote()
        return [name for name, _ in self._agents]

    async def run(self) -> TeamReport:
        """Build the component: every task with escalation, then the component check (see coordinator.team)."""
        await self.start_agents()
        cfg = self.config
        planner = LLMPlanner(make_provider(_LLM_CONFIG.validate_python(cfg.planner_llm or cfg.llm)))
        runner = TeamRunner(
            cfg.work,
            [_AgentPort(name, handle) for name, handle in self._agents],
            checks=_ProxyChecks(self._proxy),
            planner=planner,
            events=_BusEvents(self._bus, cfg.build_id, self._events),
            context=self._context,
            locks=self._locks,
        )
        self._report = await runner.run()
        return self._report

    async def acquire(self, path: str, holder: str) -> None:
        """Hold ``path`` for ``holder`` (an agent's name), waiting while another agent holds it."""
        await self._locks.acquire(path, holder)

    async def release(self, path: str, holder: str) -> None:
        self._locks.release(path, holder)

    async def held_locks(self) -> dict[str, str]:
        return self._locks.held()

    async def agents(self) -> list[tuple[str, Any]]:
        """``(name, handle)`` of each agent."""
        return list(self._agents)

    async def events(self) -> list[dict[str, Any]]:
        """The events this team emitted (they are also on the build's event log)."""
        return list(self._events)

    async def report(self) -> TeamReport | None:
        return self._report

    async def shutdown(self) -> None:
        """Stop the agents and close the bus (the sandbox stays; its owner releases it)."""
        for _, handle in self._agents:
            await stop_agent(handle)
        self._agents = []
        with contextlib.suppress(Exception):
            await self._bus.aclose(flush_timeout=2.0)

    async def _context(self) -> Mapping[str, Any]:
        return prompt_context(await self._bus.unified_context(self.config.build_id))


SandboxTeam = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=256)(SandboxTeamActor)  # type: ignore[call-overload]


def start_team(config: TeamConfig | dict[str, Any], proxy: Any, *, detached: bool = False) -> Any:
    """Start a named SandboxTeam actor in namespace ``kriptik``."""
    if not isinstance(config, TeamConfig):
        try:
            config = TeamConfig.model_validate(config)
        except ValueError as exc:
            raise InvalidInputError(f"invalid team config: {exc}", field="config") from exc
    options: dict[str, Any] = {"name": team_name(config.build_id, config.sid), "namespace": NAMESPACE}
    if detached:
        options["lifetime"] = "detached"
    return SandboxTeam.options(**options).remote(config.model_dump(mode="json"), proxy)


async def stop_team(handle: Any) -> None:
    """Stop a team's agents and kill the team actor for good."""
    with contextlib.suppress(Exception):
        await handle.shutdown.remote()
    ray.kill(handle, no_restart=True)
