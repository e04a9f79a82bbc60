"""Swarm: the Ray actor ``build:{id}:swarm:{sid}`` that runs the verification swarm on one slot's sandbox.

Thin over :class:`sandbox_agents.verifiers.VerificationSwarm` on a
:class:`~sandbox_agents.proxy_sandbox.ProxySandbox`: each verifier's report goes to the bus as
it completes (``verifier.report`` on the event log, its errors as ``ErrorReport``s on the errors
channel, and a ``resolved`` report for each error that is gone since the last run), then the
whole :class:`SwarmReport` as ``swarm.report``. One warm Chromium serves every run.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from actors import handles
from actors.actor_args import validated_arg
from actors.actor_state import StateFile
from actors.handles import RayError, swarm_name
from actors.pools.proxies import get_proxy
from actors.pools.warm import Warm, WarmBound, WarmSource, bind_warm, forget_alias, named_actor, take_bound
from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.bus.events import BusyReport, SwarmReportEvent, VerifierReportEvent
from coordinator.bus.models import ErrorReport, Event
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.busy import rounded
from sandbox_agents.proxy_sandbox import ProxySandbox
from sandbox_agents.verifiers import (
    Chromium,
    Severity,
    SwarmReport,
    VerificationSwarm,
    VerifierReport,
    VerifyTarget,
    default_verifiers,
)

logger = logging.getLogger(__name__)


class SwarmConfig(BaseModel):
    """What a Swarm actor needs; crosses the actor boundary as a dict."""

    model_config = ConfigDict(extra="forbid")

    build_id: str = Field(min_length=1)
    sid: str = Field(min_length=1)
    """The slot whose sandbox is verified (its proxy is ``build:{id}:sbx:{sid}``)."""
    redis_url: str | None = None
    """The bus; None publishes nothing."""
    bus_prefix: str = "kriptik"
    spec: SandboxSpec = Field(default_factory=SandboxSpec)
    timeout_s: float = Field(default=120.0, gt=0)
    """Per-verifier timeout."""
    max_concurrency: int = Field(default=6, ge=1)

    @property
    def name(self) -> str:
        """The swarm's actor name (its alias when it came from a pool)."""
        return swarm_name(self.build_id, self.sid)


class SwarmBinding(BaseModel):
    """What a bound warm swarm remembers across its own restarts."""

    model_config = ConfigDict(extra="forbid")

    config: SwarmConfig


def _binding_file(actor: str) -> StateFile[SwarmBinding]:
    return StateFile("swarms", actor, SwarmBinding)


class SwarmActor(WarmBound[SwarmConfig]):
    """One slot's verification swarm. Construct through :func:`start_swarm` (cold), or warm + :meth:`bind`.

    Args:
        config: A :class:`SwarmConfig` as a dict; None for a warm swarm (bound later, or rebound
            from its saved binding after a restart).
        proxy: The SandboxProxy handle of the slot's sandbox.
        name: The actor's own name (a warm swarm's binding file is keyed by it).
    """

    def __init__(self, config: dict[str, Any] | None = None, proxy: Any = None, name: str | None = None) -> None:
        self._name = name
        self._chromium = Chromium()
        self._open: dict[str, ErrorReport] = {}
        self.config: SwarmConfig | None = None
        self._bus: ContextBus | None = None
        self._proxy: Any = None
        if config is None and name is not None:
            try:
                config = _binding_file(name).load().config.model_dump(mode="json")  # restarted after a bind
            except (FileNotFoundError, ValueError):  # never bound (or the binding is unreadable): warm
                pass
        if config is not None:
            self._bind(config, proxy)

    def _bind(self, config: SwarmConfig | dict[str, Any], proxy: Any) -> None:
        self.config = cfg = validated_arg(SwarmConfig, config, "config")
        self._proxy = proxy  # None after a restart: found again by the slot's name on first use
        name = cfg.name
        self._bus = ContextBus(cfg.redis_url, BusConfig(prefix=cfg.bus_prefix), sender=name) if cfg.redis_url else None

    KIND = "swarm"

    async def bind(self, config: SwarmConfig | dict[str, Any], proxy: Any) -> str:
        """Configure a warm swarm for one slot (once) and save the binding for restarts; returns its build name.

        Raises:
            InvalidInputError: ``config`` is invalid, or the swarm is already bound.
        """
        name = self._bind_once(config, proxy)
        if self._name is not None:
            _binding_file(self._name).save(SwarmBinding(config=self._bound()))
        return name

    async def warm(self) -> bool:
        """Start the browser now, so a swarm from a warm pool does not pay for it in a build; True if it runs.

        A browser that cannot start here (no Chromium, not root) is left to the first visual check,
        which reports why.
        """
        try:
            await self._chromium.browser()
        except Exception as exc:  # noqa: BLE001 - the visual verifier tries again and reports the failure
            logger.warning("swarm %s: the browser did not start while warm: %r", self._name, exc)
            return False
        return True

    def _proxy_handle(self) -> Any:
        if self._proxy is None:
            cfg = self._bound()
            self._proxy = get_proxy(cfg.build_id, cfg.sid)
        return self._proxy

    async def verify(self, target_json: VerifyTarget | dict[str, Any] | str) -> SwarmReport:
        """Run every verifier on the slot's sandbox and return the verdict (published as it comes)."""
        target = validated_arg(VerifyTarget, target_json, "target")
        cfg = self._bound()
        sandbox = await ProxySandbox.connect(self._proxy_handle(), cfg.spec)
        swarm = VerificationSwarm(
            default_verifiers(self._chromium),
            max_concurrency=cfg.max_concurrency,
            timeout_s=cfg.timeout_s,
            publish=self._publish,
        )
        report = await swarm.run(sandbox, target)
        if self._bus is not None:
            event = SwarmReportEvent(
                sid=cfg.sid,
                sandbox_id=report.sandbox_id,
                passed=report.passed,
                score=report.score,
                verifiers={r.verifier: r.passed for r in report.reports},
                duration_s=report.duration_s,
            )
            await self._bus.publish(cfg.build_id, Event.of(event))
        return report

    async def _publish(self, report: VerifierReport) -> None:
        if self._bus is None:
            return
        cfg = self._bound()
        source = f"verifier:{report.verifier}:{cfg.sid}"
        now = {
            (f.file, f.line, f.rule): ErrorReport(
                source=source, message=f"[{f.rule}] {f.message}", file=f.file, line=f.line
            )
            for f in report.findings
            if f.severity == Severity.ERROR
        }
        current = {e.error_key(): e for e in now.values()}
        mine = {k: e for k, e in self._open.items() if e.source == source}
        gone = [e.model_copy(update={"resolved": True}) for k, e in mine.items() if k not in current]
        for key in mine:
            self._open.pop(key)
        self._open.update(current)
        summary = VerifierReportEvent(
            sid=cfg.sid, verifier=report.verifier, passed=report.passed, score=report.score, errors=len(current)
        )
        await self._bus.publish(cfg.build_id, Event.of(summary))
        messages = [*list(current.values())[:50], *gone]
        if messages:
            await self._bus.publish_many(cfg.build_id, messages)

    async def _report_sandbox_time(self) -> None:
        """``busy.report`` (source ``sandbox``): when commands ran in the slot's sandbox, all its life so far.

        Sent when the swarm is stopped, which is when its slot's team stops (the slot is released,
        or its team runs again): by then every command of the slot's team, checks and swarm ran.
        """
        if self._bus is None or self.config is None:
            return
        cfg = self.config
        try:
            intervals = await self._proxy_handle().busy.remote()
        except (RayError, ValueError) as exc:  # the proxy is gone: nothing to report
            logger.info("swarm %s: no busy intervals of its sandbox: %s", cfg.name, exc)
            return
        seconds = round(sum(end - start for start, end in intervals), 3)
        event = BusyReport(
            component=cfg.sid, source="sandbox", slot=cfg.sid, intervals=rounded(intervals), seconds=seconds
        )
        await self._bus.publish(cfg.build_id, Event.of(event))

    async def close(self) -> None:
        """Report the sandbox's busy time, close Chromium and the bus, forget the saved binding (before the kill)."""
        try:
            await self._report_sandbox_time()
        except Exception as exc:  # noqa: BLE001 - a lost report costs only a figure; closing goes on
            logger.warning("swarm %s: reporting the sandbox's busy time failed: %r", self._name, exc)
        if self._name is not None:
            _binding_file(self._name).remove()
        try:
            await self._chromium.close()
        except Exception as exc:  # noqa: BLE001 - the actor is killed next, and Chromium with it
            logger.warning("swarm %s: closing Chromium failed: %r", self._name, exc)
        if self._bus is not None:
            try:
                await self._bus.aclose(flush_timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - what the bus still held is lost
                logger.warning("swarm %s: closing the bus failed: %r", self._name, exc)


Swarm = handles.actor_class(SwarmActor, restartable=True, max_concurrency=8)


def start_swarm(config: SwarmConfig | dict[str, Any], proxy: Any) -> Any:
    """Start the named swarm actor ``build:{id}:swarm:{sid}`` for a slot's proxy (cold, bound at construction)."""
    config = validated_arg(SwarmConfig, config, "config")
    name = config.name
    forget_alias("swarm", name)
    return handles.start(Swarm, name, config.model_dump(mode="json"), proxy, detached=False)


def start_warm_swarm(name: str) -> Any:
    """Start an unbound, detached Swarm called ``name`` (``kriptik:swarm:{uuid}``) for a warm pool."""
    return handles.start(Swarm, name, None, None, name)


async def warm_swarm(handle: Any) -> bool:
    """A warm pool's readiness check of a new swarm: it answers and its browser runs (:meth:`SwarmActor.warm`)."""
    return bool(await handle.warm.remote())


async def bind_swarm(warm: Warm, config: SwarmConfig | dict[str, Any], proxy: Any) -> Any:
    """Bind the warm swarm ``warm`` and alias it ``build:{id}:swarm:{sid}``; returns its handle."""
    config = validated_arg(SwarmConfig, config, "config")
    return await bind_warm("swarm", warm, config, config.name, proxy)


async def launch_swarm(config: SwarmConfig | dict[str, Any], proxy: Any, source: WarmSource | None = None) -> Any:
    """A swarm for ``proxy``'s slot: a warm one from ``source`` bound, else one started cold."""
    bound = await take_bound(source, "swarm", lambda warm: bind_swarm(warm, config, proxy))
    return bound if bound is not None else start_swarm(config, proxy)


def get_swarm(build_id: str, sid: str) -> Any:
    """The handle of a slot's swarm, pooled or cold; ValueError when there is none."""
    return named_actor("swarm", swarm_name(build_id, sid))


async def stop_swarm(handle: Any, name: str | None = None) -> None:
    """Close a swarm and kill it for good (``name``: its build name, whose alias goes too)."""
    await handles.stop(handle, handle.close.remote, name=name)
    if name:
        forget_alias("swarm", name)


def target_json(target: VerifyTarget) -> str:
    """A target as the JSON :meth:`SwarmActor.verify` takes."""
    return json.dumps(target.model_dump(mode="json"))
