"""Agent: one Ray actor per agent, thin over an AgentLoop on AgentTools on its sandbox's proxy.

Named ``build:{id}:agent:{sid}:{n}`` in namespace ``kriptik``. It builds its LLM provider
from a config dict inside the actor (a replay config with cassette paths in tests), reaches
its sandbox only through the SandboxProxy handle it is given (``ProxySandbox``), and talks
to the build through the context bus:

- before every LLM turn it reads the build's unified context (``context_source``) from its
  node's ContextHub (:mod:`actors.hub`: the node's one subscriber of the build's bus, holding the
  context live), so an error any sandbox published is in its next system prompt;
- after every task it publishes a ``FileChange`` per file it changed and, when the run
  failed, an ``ErrorReport``; what the model ``publish``-es goes out at once as an
  ``ErrorReport`` (kind ``error``) or a ``ContextUpdate`` (``discovery``/``decision``).

File writes go through the team's per-file lock service (``acquire/release`` on the team
actor) when one is given. Its name, start and stop go through :mod:`actors.handles`.

Warm agents (:func:`start_warm_agent`) are started unbound as ``kriptik:agent:{uuid}`` by a
pool, configured by ``bind`` and aliased ``build:{id}:agent:{sid}:{n}`` (:func:`bind_agent`,
:func:`get_agent` resolves either).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from actors import handles
from actors.actor_args import validated_arg
from actors.handles import RayActorError, agent_name
from actors.hub import node_context
from actors.pools.warm import Warm, WarmBound, aliased, bind_warm, forget_alias, named_actor
from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.bus.events import AgentStepEvent
from coordinator.bus.models import ContextUpdate, ErrorReport, Event, FileChange
from coordinator.team import agent_role
from sandbox_agents.agent_loop import AgentLoop
from sandbox_agents.agent_models import AgentLimits, AgentOutcome, AgentStep, AgentTask, PublishedItem
from sandbox_agents.agent_prompt import DEFAULT_CONTEXT_CAP
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.errors import InvalidInputError
from sandbox_agents.llm.base import AssistantTurn, LLMProvider, LLMRequest, ToolCall, ToolResult
from sandbox_agents.llm.config import LLMConfig
from sandbox_agents.llm.factory import make_provider
from sandbox_agents.proxy_sandbox import ProxySandbox
from sandbox_agents.tools import AgentTools

logger = logging.getLogger(__name__)


class AgentConfig(BaseModel):
    """Everything an Agent actor needs to build its loop; crosses the actor boundary as a dict."""

    model_config = ConfigDict(extra="forbid")

    build_id: str = Field(min_length=1)
    """The build the agent works for (its bus keys)."""
    sid: str = Field(min_length=1)
    """The sandbox's id within the build (the proxy is ``build:{id}:sbx:{sid}``)."""
    index: int = Field(ge=0, le=63)
    """The agent's number in its team."""
    component: str | None = None
    """Component the team builds; the role is ``agent:{component}:{n}`` (``sid`` when unset)."""
    llm: dict[str, Any]
    """Provider config (``{"type": "replay", "cassettes": [...]}``, anthropic, openai)."""
    redis_url: str
    """The context bus's Redis."""
    bus_prefix: str = "kriptik"
    """Key prefix of the bus (``REDIS_SANDBOX_PREFIX``)."""
    spec: SandboxSpec = Field(default_factory=SandboxSpec)
    """The sandbox's spec (its workdir is where paths resolve)."""
    limits: AgentLimits = Field(default_factory=AgentLimits)
    """Bounds of one run of the loop."""
    context_cap: int = Field(default=DEFAULT_CONTEXT_CAP, ge=200)
    """Most characters of rendered context in each system prompt."""
    model: str | None = None
    """Model override (tournament strategies)."""
    temperature: float | None = Field(default=None, ge=0, le=2)
    """Sampling temperature override (tournament strategies); None keeps the provider's."""
    prompt_history: int = Field(default=64, ge=0, le=10_000)
    """Recent requests (key and system prompt) kept for ``recent_prompts``."""

    @property
    def role(self) -> str:
        return agent_role(self.component or self.sid, self.index)

    @property
    def name(self) -> str:
        return agent_name(self.build_id, self.sid, self.index)


class _Watched:
    """A provider wrapper keeping the last requests' keys and system prompts (for tests and debugging)."""

    def __init__(self, inner: LLMProvider, keep: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.seen: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)

    async def complete(self, request: LLMRequest) -> AssistantTurn:
        self.seen.append(
            {
                **request.key.model_dump(),
                "system": request.system,
                "model": request.model,
                "temperature": request.temperature,
            }
        )
        return await self.inner.complete(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class AgentActor(WarmBound[AgentConfig]):
    """One agent. Construct through :func:`start_agent` (cold) or :func:`start_warm_agent` + ``bind``.

    A warm agent is started with no arguments (nothing build-specific: the pool starts it before
    any build exists) and configured by :meth:`bind`; a cold one is bound by its constructor.

    Not restartable (``max_restarts=0``): an agent's conversation (the loop's messages, the
    provider's state, the cassette turn it is at) lives only in this process, so a restarted agent
    could not continue its turn anyway. When an agent dies, its attempt fails; the coordinator
    stops the whole team and runs a fresh one with fresh agents (``RayTeams.run``), so the slot's
    result is what an undisturbed team would have made.

    Args:
        config: An :class:`AgentConfig` as a dict; None for a warm, unbound agent.
        proxy: The SandboxProxy handle of the agent's sandbox.
        locks: An actor with ``acquire(path, holder)``/``release(path, holder)`` shared by the
            sandbox's agents (the SandboxTeam actor); without it, locks are per agent.
    """

    def __init__(self, config: dict[str, Any] | None = None, proxy: Any = None, locks: Any = None) -> None:
        self.config: AgentConfig | None = None
        self._loop: AgentLoop | None = None
        self._tools: AgentTools | None = None
        self._one_task = asyncio.Lock()
        if config is not None:
            self._bind(config, proxy, locks)

    def _bind(self, config: AgentConfig | dict[str, Any], proxy: Any, locks: Any) -> None:
        self.config = validated_arg(AgentConfig, config, "config")
        self._proxy = proxy
        self._locks = locks
        self._provider = _Watched(
            make_provider(validated_arg(LLMConfig, self.config.llm, "llm")), self.config.prompt_history
        )
        bus_config = BusConfig(prefix=self.config.bus_prefix)
        self._bus = ContextBus(self.config.redis_url, bus_config, sender=self.config.name)

    async def bind(self, config: AgentConfig | dict[str, Any], proxy: Any, locks: Any = None) -> str:
        """Configure a warm agent for one build's sandbox (once); returns its build name.

        Raises:
            InvalidInputError: ``config`` is not a valid AgentConfig, or the agent is already bound.
        """
        return self._bind_once(config, proxy, locks)

    KIND = "agent"

    async def run_task(self, task: AgentTask | dict[str, Any]) -> AgentOutcome:
        """Run one task to its end; publishes the files it changed and, on failure, the error.

        Raises:
            InvalidInputError: ``task`` is not a valid AgentTask.
        """
        self._bound()
        checked: AgentTask = validated_arg(AgentTask, task, "task")
        loop = await self._agent_loop()
        async with self._one_task:  # one loop, one conversation at a time
            outcome = await loop.run(checked)
        await self._publish_outcome(checked, outcome)
        return outcome

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> ToolResult:
        """Run one tool call directly, without the model (benchmarks, operators)."""
        if not isinstance(name, str) or not name:
            raise InvalidInputError("tool name must be a non-empty string", field="name")
        self._bound()
        await self._agent_loop()
        assert self._tools is not None
        return await self._tools.call(ToolCall(id="direct", name=name, arguments=dict(arguments or {})))

    async def recent_prompts(self) -> list[dict[str, Any]]:
        """The last requests this agent sent: ``{role, task, turn, system, model, temperature}``, oldest first."""
        return list(self._provider.seen) if self.config is not None else []

    async def close(self) -> None:
        """Flush and close the bus connection and the provider (before the actor is killed)."""
        if self.config is None:
            return
        try:
            await self._bus.aclose(flush_timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - what the bus still held is lost; the provider must close too
            logger.warning("agent %s: closing the bus failed: %r", self.config.name, exc)
        try:
            await self._provider.aclose()
        except Exception as exc:  # noqa: BLE001 - closing is best effort: the actor is killed next
            logger.warning("agent %s: closing the LLM provider failed: %r", self.config.name, exc)

    # --- plumbing -----------------------------------------------------------------------

    async def _agent_loop(self) -> AgentLoop:
        if self._loop is None:
            cfg = self._bound()
            sandbox = await ProxySandbox.connect(self._proxy, cfg.spec)
            lock = self._file_lock if self._locks is not None else None
            self._tools = AgentTools(sandbox, publish=self._publish_item, file_lock=lock)
            self._loop = AgentLoop(
                self._provider,
                self._tools,
                role=cfg.role,
                limits=cfg.limits,
                context_source=self._context,
                context_cap=cfg.context_cap,
                model=cfg.model,
                temperature=cfg.temperature,
                workdir=cfg.spec.workdir,
                on_step=self._publish_step,
            )
        return self._loop

    async def _publish_step(self, step: AgentStep) -> None:
        """Put what the agent just did on the build's event log (the builder view shows it per agent)."""
        cfg = self._bound()
        event = AgentStepEvent(
            component=cfg.component or cfg.sid, sid=cfg.sid, agent=cfg.name, **step.model_dump(mode="json")
        )
        await self._bus.publish(cfg.build_id, Event.of(event))

    async def _context(self) -> Mapping[str, Any]:
        cfg = self._bound()
        return await node_context(cfg.build_id, cfg.redis_url, cfg.bus_prefix)

    @contextlib.asynccontextmanager
    async def _file_lock(self, path: str) -> AsyncIterator[None]:
        holder = self._bound().name
        await self._locks.acquire.remote(path, holder)
        try:
            yield
        finally:
            try:
                await self._locks.release.remote(path, holder)
            except (InvalidInputError, RayActorError) as exc:  # freed already (release_all), or the team is gone
                logger.debug("agent %s: lock of %s not released: %s", holder, path, exc)

    async def _publish_item(self, item: PublishedItem) -> None:
        if item.kind == "error":
            message: Any = ErrorReport(source=item.key, message=item.message, file=item.file, line=item.line)
        else:
            value = item.model_dump(include={"message", "file", "line", "sandbox_id"}, exclude_none=True)
            message = ContextUpdate(key=item.key, value=value, kind=item.kind)
        await self._bus.publish(self._bound().build_id, message)

    async def _publish_outcome(self, task: AgentTask, outcome: AgentOutcome) -> None:
        cfg = self._bound()
        sandbox_id = self._tools.sandbox.id if self._tools else ""
        messages: list[Any] = [
            FileChange(path=path, sha256=digest, sandbox_id=sandbox_id, agent=cfg.role)
            for path, digest in outcome.changed_files.items()
        ]
        if not outcome.ok:
            text = f"task {task.id} ended {outcome.status}: {outcome.error or outcome.final_text}"
            messages.append(ErrorReport(source=f"{cfg.role}:{task.id}", message=text[:4000]))
        if not messages:
            return
        try:
            await self._bus.publish_many(cfg.build_id, messages)
        except Exception:  # the outcome stands even if the bus refuses it; the team reports it too
            logger.warning("agent %s: publishing the outcome of %s failed", cfg.name, task.id, exc_info=True)


Agent = handles.actor_class(AgentActor, restartable=False, max_concurrency=32)


def start_agent(config: AgentConfig | dict[str, Any], proxy: Any, locks: Any = None, *, detached: bool = False) -> Any:
    """Start a named Agent actor in namespace ``kriptik`` (detached when asked), bound at construction (cold)."""
    checked: AgentConfig = validated_arg(AgentConfig, config, "config")
    forget_alias("agent", checked.name)  # this name is the actor's own now
    return handles.start(Agent, checked.name, checked.model_dump(mode="json"), proxy, locks, detached=detached)


def start_warm_agent(name: str) -> Any:
    """Start an unbound, detached Agent actor called ``name`` (``kriptik:agent:{uuid}``) for a warm pool."""
    return handles.start(Agent, name)


async def bind_agent(warm: Warm, config: AgentConfig | dict[str, Any], proxy: Any, locks: Any = None) -> Any:
    """Bind the warm agent ``warm`` to ``config`` and alias it ``build:{id}:agent:{sid}:{n}``; returns its handle."""
    checked: AgentConfig = validated_arg(AgentConfig, config, "config")
    return await bind_warm("agent", warm, checked, checked.name, proxy, locks)


def get_agent(build_id: str, sid: str, index: int) -> Any:
    """The handle of agent ``n`` of a sandbox, pooled or cold; ValueError when there is none."""
    return named_actor("agent", agent_name(build_id, sid, index))


async def stop_agent(handle: Any, name: str | None = None) -> None:
    """Close an agent's connections and kill it for good (``name``: its build name, whose alias goes too)."""
    await handles.stop(handle, handle.close.remote, name=name, timeout_s=10)
    if name:
        forget_alias("agent", name)


async def stop_stray_agents(build_id: str, sid: str) -> list[str]:
    """Kill the pooled agents of a sandbox that outlived their team (a crashed team cannot stop them).

    Pooled agents are detached, so unlike cold ones they do not die with the team that bound them;
    their aliases say which they are. Returns the build names that were stopped.
    """
    stopped = []
    for name in aliased("agent", f"build:{build_id}:agent:{sid}:"):
        try:
            handles.kill(named_actor("agent", name))
        except ValueError:  # dead already
            pass
        forget_alias("agent", name)
        stopped.append(name)
    return stopped
