"""SandboxTeam: the Ray actor that runs one component's team in one sandbox.

Thin over :class:`coordinator.team.runner.TeamRunner`: it starts the team's Agent actors, hands
the runner its ports — the agents' handles, checks run through the SandboxProxy, an
:class:`~coordinator.team.runner.LLMPlanner`, events and errors to the context bus (and, on its
``progress`` channel, a line as each task starts and ends: :class:`~coordinator.team.progress.TaskProgress`),
the unified context from the bus — and serves the sandbox's per-file lock service to its agents
(``acquire(path, holder)``/``release(path, holder)``), so two agents in one sandbox never
clobber one file. Named ``build:{id}:team:{sid}`` in namespace ``kriptik`` — or, when it came
from a warm pool, ``kriptik:team:{uuid}`` with that name as its alias (:func:`get_team`).

Warm teams and agents: :func:`launch_team` takes a team and its agents from a
:class:`~actors.pools.warm.WarmSource` (the Control actor's pools) and binds them, starting cold
only what the pool lacks. Neither is restartable (``max_restarts=0``): the team's runner state
and the agents' conversations (keyed cassette turns, the loop's messages) live in their
processes, so a restarted one could not go on where it stopped. A dead agent's attempt fails;
the coordinator (``RayTeams.run``) then stops the whole team — :func:`stop_team` finds a pooled
one by its alias and kills its pooled agents too — and runs a fresh team (fresh warm agents).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from actors import handles
from actors.actor_args import validated_arg
from actors.agent import AgentConfig, bind_agent, start_agent, stop_agent, stop_stray_agents
from actors.handles import team_name
from actors.hub import node_context, stop_build_hubs
from actors.pools.warm import Warm, WarmBound, WarmSource, aliased, bind_warm, forget_alias, named_actor, take_bound
from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.bus.events import EventPayload
from coordinator.bus.models import ErrorReport, Event, Progress
from coordinator.team import ComponentWork, FileLockService, LLMPlanner, TeamReport, TeamRunner
from coordinator.team.progress import TaskProgress
from sandbox_agents.agent_models import AgentLimits, AgentOutcome, AgentTask
from sandbox_agents.backends.base import ExecResult, InstallRequest, InstallResult, SandboxSpec
from sandbox_agents.errors import SandboxPathError, SandboxTimeoutError
from sandbox_agents.llm.config import LLMConfig
from sandbox_agents.llm.factory import make_provider
from sandbox_agents.llm.metered import MeteredProvider, collector

logger = logging.getLogger(__name__)


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

    @property
    def name(self) -> str:
        """The team's actor name (its alias when it came from a pool)."""
        return team_name(self.build_id, self.sid)


class _AgentPort:
    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self.handle = handle

    async def run_task(self, task: AgentTask) -> AgentOutcome:
        return await self.handle.run_task.remote(task)


class _ProxyChecks:
    """Checks in the team's sandbox, each after the install phase of the component's manifests.

    A failed install fails the check with the installer's output, so the agent whose change broke
    the manifest sees why (the install itself never runs with this sandbox's network).
    """

    def __init__(
        self, proxy: Any, packages: tuple[InstallRequest, ...] = (), fed: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.proxy = proxy
        self.packages = packages
        self.fed = fed

    async def run_check(self, command: list[str] | str, timeout_s: float) -> ExecResult:
        if self.fed is not None:
            await self.fed()  # a parallel build's dependent: its providers' code is in before a check runs
        for request in self.packages:
            try:
                result: InstallResult = await self.proxy.install.remote(request.model_dump())
            except SandboxPathError as exc:
                return ExecResult(exit_code=1, stdout="", stderr=f"the install phase failed: {exc}")
            if not result.ok:
                return ExecResult(exit_code=1, stdout="", stderr=f"the install phase failed:\n{result.output}")
        try:
            return await self.proxy.exec.remote(command, None, None, timeout_s)
        except SandboxTimeoutError as exc:  # a hung check is a failed check, not a crashed team
            return ExecResult(exit_code=124, stdout=exc.stdout, stderr=f"{exc.stderr}\n[timed out after {timeout_s}s]")


class _BusEvents:
    """The runner's events onto the build's event log, and the progress lines they make onto ``progress``."""

    def __init__(
        self, bus: ContextBus, build_id: str, log: list[dict[str, Any]], progress: TaskProgress | None = None
    ) -> None:
        self.bus = bus
        self.build_id = build_id
        self.log = log
        self.progress = progress

    async def emit(self, event: EventPayload) -> None:
        self.log.append({"kind": event.kind, **event.data})
        line = self.progress.observe(event) if self.progress is not None else None
        if line is not None:
            await self._publish_progress(line)
        await self.bus.publish(self.build_id, Event.of(event))

    async def _publish_progress(self, line: Progress) -> None:
        try:
            await self.bus.publish(self.build_id, line)
        except Exception:  # a progress line only informs: the team's run goes on without it
            logger.warning("team %s: publishing progress of %s failed", line.component, line.phase, exc_info=True)

    async def report_error(self, key: str, message: str, *, resolved: bool = False) -> None:
        await self.bus.publish(self.build_id, ErrorReport(source=key, message=message, resolved=resolved))


FED_POLL_MS = 1000
"""How long one blocking read of the event log waits for a ``component.fed`` (it returns at once on one).

Well under the bus client's socket timeout (5 s): a blocking read as long as that races it and fails."""


class SandboxTeamActor(WarmBound[TeamConfig]):
    """One sandbox's team. Construct through :func:`start_team` (cold), or warm + :meth:`bind`.

    Args:
        config: A :class:`TeamConfig` as a dict; None for a warm, unbound team.
        proxy: The SandboxProxy handle of the team's sandbox (it must own a sandbox).
    """

    def __init__(self, config: dict[str, Any] | None = None, proxy: Any = None) -> None:
        self.config: TeamConfig | None = None
        self._locks = FileLockService()
        self._agents: list[tuple[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._fed: set[str] = set()
        """Providers that fed this team's component (parallel builds)."""
        self._fed_after: str | None = None
        self._report: TeamReport | None = None
        if config is not None:
            self._bind(config, proxy)

    def _bind(self, config: TeamConfig | dict[str, Any], proxy: Any) -> None:
        self.config = validated_arg(TeamConfig, config, "config")
        self._proxy = proxy
        self._fed, self._fed_after = set(), None
        name = self.config.name
        self._bus = ContextBus(self.config.redis_url, BusConfig(prefix=self.config.bus_prefix), sender=name)

    KIND = "team"

    async def bind(self, config: TeamConfig | dict[str, Any], proxy: Any) -> str:
        """Configure a warm team for one sandbox (once); returns its build name.

        Raises:
            InvalidInputError: ``config`` is invalid, or the team is already bound.
        """
        return self._bind_once(config, proxy)

    def _agent_config(self, n: int) -> AgentConfig:
        cfg = self._bound()
        return AgentConfig(
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

    async def start_agents(self, warm: list[Warm] | None = None) -> list[str]:
        """Start the team's Agent actors (once) and wait until each answers; returns their names.

        Args:
            warm: Warm, unbound agents to bind first (from a pool); the rest are started cold.
                Warm ones left over (more than the team needs, or a second call) are stopped; a warm
                agent that fails to bind (it died while warm) is replaced by a cold one.
        """
        cfg = self._bound()
        spare = list(warm or [])
        if not self._agents:
            me = handles.current()
            configs = [self._agent_config(n) for n in range(cfg.work.agents)]
            warm_now, spare = spare[: len(configs)], spare[len(configs) :]
            bound = await asyncio.gather(
                *(bind_agent(w, c, self._proxy, me) for w, c in zip(warm_now, configs, strict=False)),
                return_exceptions=True,
            )
            for (_, refused), result in zip(warm_now, bound, strict=False):
                if isinstance(result, BaseException):
                    handles.kill(refused)
            for agent, handle in itertools.zip_longest(configs, bound):
                if isinstance(handle, BaseException) or handle is None:
                    if handle is not None:  # died while warm (or refused the bind): a cold one instead
                        logger.warning("team %s: a warm agent failed to bind: %s", cfg.sid, handle)
                    handle = start_agent(agent, self._proxy, me, detached=cfg.detached_agents)
                self._agents.append((agent.name, handle))
            for _, handle in self._agents:
                await handle.ping.remote()
        for _, handle in spare:
            await stop_agent(handle)
        return [name for name, _ in self._agents]

    async def _providers_fed(self) -> None:
        """Return once every provider of the team's component has fed it (``component.fed`` on the log).

        The log is read from its start, so a team started (or restarted) after the feed sees it.
        """
        cfg = self._bound()
        wanted = set(cfg.work.providers) - self._fed
        component = cfg.work.component.split(".", 1)[0]  # a candidate's team is `{component}.{strategy}`
        while wanted:
            entries = await self._bus.read_events(
                cfg.build_id,
                after_id=self._fed_after,
                count=500,
                block_ms=None if self._fed_after is None else FED_POLL_MS,
            )
            for entry_id, envelope in entries:
                self._fed_after = entry_id
                message = envelope.message
                if isinstance(message, Event) and message.kind == "component.fed":
                    if message.data.get("component") == component:
                        self._fed.add(str(message.data.get("provider")))
            if not entries and self._fed_after is None:
                self._fed_after = "0-0"  # an empty log: wait on it from its start
            wanted = set(cfg.work.providers) - self._fed

    async def run(self) -> TeamReport:
        """Build the component: every task with escalation, then the component check (see coordinator.team.runner)."""
        await self.start_agents()
        cfg = self._bound()
        replans, charge = collector()
        provider = make_provider(validated_arg(LLMConfig, cfg.planner_llm or cfg.llm, "llm"))
        planner = LLMPlanner(MeteredProvider(provider, charge))
        runner = TeamRunner(
            cfg.work,
            [_AgentPort(name, handle) for name, handle in self._agents],
            checks=_ProxyChecks(self._proxy, cfg.work.packages, self._providers_fed if cfg.work.providers else None),
            planner=planner,
            events=_BusEvents(self._bus, cfg.build_id, self._events, TaskProgress(cfg.work, slot=cfg.sid)),
            context=self._context,
            locks=self._locks,
        )
        report = await runner.run()
        report.usage.extend(replans)
        self._report = report
        return report

    async def acquire(self, path: str, holder: str) -> None:
        """Hold ``path`` for ``holder`` (an agent's name), waiting while another agent holds it."""
        await self._locks.acquire(path, holder)

    async def release(self, path: str, holder: str) -> None:
        self._locks.release(path, holder)

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
        for name, handle in self._agents:
            await stop_agent(handle, name)
        self._agents = []
        if self.config is not None:
            try:
                await self._bus.aclose(flush_timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - the team is killed next: what the bus held is lost
                logger.warning("team %s: closing the bus failed: %r", self.config.sid, exc)

    async def _context(self) -> Mapping[str, Any]:
        cfg = self._bound()
        return await node_context(cfg.build_id, cfg.redis_url, cfg.bus_prefix)  # this node's hub holds it live


SandboxTeam = handles.actor_class(SandboxTeamActor, restartable=False, max_concurrency=256)


def start_team(config: TeamConfig | dict[str, Any], proxy: Any, *, detached: bool = False) -> Any:
    """Start a named SandboxTeam actor in namespace ``kriptik``, bound at construction (cold)."""
    config = validated_arg(TeamConfig, config, "config")
    name = config.name
    forget_alias("team", name)  # this name is the actor's own now
    return handles.start(SandboxTeam, name, config.model_dump(mode="json"), proxy, detached=detached)


def start_warm_team(name: str) -> Any:
    """Start an unbound, detached SandboxTeam called ``name`` (``kriptik:team:{uuid}``) for a warm pool."""
    return handles.start(SandboxTeam, name)


async def bind_team(warm: Warm, config: TeamConfig | dict[str, Any], proxy: Any) -> Any:
    """Bind the warm team ``warm`` and alias it ``build:{id}:team:{sid}``; returns its handle."""
    config = validated_arg(TeamConfig, config, "config")
    return await bind_warm("team", warm, config, config.name, proxy)


async def launch_team(config: TeamConfig | dict[str, Any], proxy: Any, source: WarmSource | None = None) -> Any:
    """A team for ``proxy``'s sandbox with its agents started and answering; from ``source`` where it can.

    Takes one warm team and ``work.agents`` warm agents from ``source``, binds them, and starts
    cold whatever the pool lacked. Returns the team's handle.
    """
    config = validated_arg(TeamConfig, config, "config")
    handle = await take_bound(source, "team", lambda warm: bind_team(warm, config, proxy))
    agents = await source.take("agent", config.work.agents) if source is not None else []
    if handle is None:
        handle = start_team(config, proxy)
    try:
        await handle.start_agents.remote(agents)
    except BaseException:
        for _, spare in agents:  # a bound agent is killed twice: harmless
            handles.kill(spare)
        raise
    return handle


def get_team(build_id: str, sid: str) -> Any:
    """The handle of a sandbox's team, pooled or cold; ValueError when there is none."""
    return named_actor("team", team_name(build_id, sid))


async def stop_team(handle: Any, name: str | None = None) -> None:
    """Stop a team's agents and kill the team actor for good.

    Args:
        handle: The team.
        name: Its build name ``build:{id}:team:{sid}``: the alias goes too, and so do pooled agents
            of that sandbox that outlived a crashed team.
    """
    await handles.stop(handle, handle.shutdown.remote, name=name)
    if name:
        forget_alias("team", name)
        _, build_id, _, sid = name.split(":", 3)
        await stop_stray_agents(build_id, sid)


async def stop_build_teams(build_id: str) -> list[str]:
    """Stop every pooled team of ``build_id`` still alive (with its agents), then the build's hubs; returns the teams.

    A cold team is owned by its coordinator and dies with it; a pooled one is detached, so a
    restarted coordinator calls this first: a team of its previous incarnation must not go on
    writing into a sandbox the new run restores or re-runs. The hubs (detached too) go after the
    teams that read them; the next reader starts a fresh one, seeded.
    """
    stopped = []
    for name in aliased("team", f"build:{build_id}:team:"):
        try:
            await stop_team(named_actor("team", name), name)
        except ValueError:  # dead already
            forget_alias("team", name)
        stopped.append(name)
    await stop_build_hubs(build_id)
    return stopped
