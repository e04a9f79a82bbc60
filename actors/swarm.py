"""Swarm: the Ray actor ``build:{id}:swarm:{sid}`` that runs the verification swarm on one slot's sandbox.

Thin over :class:`sandbox_agents.verifiers.VerificationSwarm` on a
:class:`~sandbox_agents.proxy_sandbox.ProxySandbox`: each verifier's report goes to the bus as
it completes (``verifier.report`` on the event log, its errors as ``ErrorReport``s on the errors
channel, and a ``resolved`` report for each error that is gone since the last run), then the
whole :class:`SwarmReport` as ``swarm.report``. One warm Chromium serves every run.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field

from actors.sandbox_proxy import NAMESPACE
from coordinator.bus import BusConfig, ContextBus
from coordinator.bus_models import ErrorReport
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.errors import InvalidInputError
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


def swarm_name(build_id: str, sid: str) -> str:
    """The actor name of a slot's swarm: ``build:{id}:swarm:{sid}``."""
    return f"build:{build_id}:swarm:{sid}"


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


class SwarmActor:
    """One slot's verification swarm. Construct through :func:`start_swarm`.

    Args:
        config: A :class:`SwarmConfig` as a dict.
        proxy: The SandboxProxy handle of the slot's sandbox.
    """

    def __init__(self, config: dict[str, Any], proxy: Any) -> None:
        try:
            self.config = config if isinstance(config, SwarmConfig) else SwarmConfig.model_validate(config)
        except ValueError as exc:
            raise InvalidInputError(f"invalid swarm config: {exc}", field="config") from exc
        cfg = self.config
        self._proxy = proxy
        self._chromium = Chromium()
        name = swarm_name(cfg.build_id, cfg.sid)
        self._bus = ContextBus(cfg.redis_url, BusConfig(prefix=cfg.bus_prefix), sender=name) if cfg.redis_url else None
        self._open: dict[str, ErrorReport] = {}
        self._last: SwarmReport | None = None

    async def verify(self, target_json: VerifyTarget | dict[str, Any] | str) -> SwarmReport:
        """Run every verifier on the slot's sandbox and return the verdict (published as it comes)."""
        try:
            if isinstance(target_json, VerifyTarget):
                target = target_json
            elif isinstance(target_json, str):
                target = VerifyTarget.model_validate_json(target_json)
            else:
                target = VerifyTarget.model_validate(target_json)
        except ValueError as exc:
            raise InvalidInputError(f"invalid verify target: {exc}", field="target") from exc
        sandbox = await ProxySandbox.connect(self._proxy, self.config.spec)
        swarm = VerificationSwarm(
            default_verifiers(self._chromium),
            max_concurrency=self.config.max_concurrency,
            timeout_s=self.config.timeout_s,
            publish=self._publish,
        )
        report = await swarm.run(sandbox, target)
        self._last = report
        if self._bus is not None:
            data = {
                "sid": self.config.sid,
                "sandbox_id": report.sandbox_id,
                "passed": report.passed,
                "score": report.score,
                "verifiers": {r.verifier: r.passed for r in report.reports},
                "duration_s": report.duration_s,
            }
            await self._bus.publish_event(self.config.build_id, "swarm.report", data)
        return report

    async def last_report(self) -> SwarmReport | None:
        return self._last

    async def _publish(self, report: VerifierReport) -> None:
        if self._bus is None:
            return
        cfg = self.config
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
        summary = {"sid": cfg.sid, **report.model_dump(mode="json", include={"verifier", "passed", "score"})}
        summary["errors"] = len(current)
        await self._bus.publish_event(cfg.build_id, "verifier.report", summary)
        messages = [*list(current.values())[:50], *gone]
        if messages:
            await self._bus.publish_many(cfg.build_id, messages)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._chromium.close()
        if self._bus is not None:
            with contextlib.suppress(Exception):
                await self._bus.aclose(flush_timeout=2.0)


Swarm = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=8)(SwarmActor)  # type: ignore[call-overload]


def start_swarm(config: SwarmConfig | dict[str, Any], proxy: Any) -> Any:
    """Start the named swarm actor ``build:{id}:swarm:{sid}`` for a slot's proxy."""
    config = config if isinstance(config, SwarmConfig) else SwarmConfig.model_validate(config)
    return Swarm.options(name=swarm_name(config.build_id, config.sid), namespace=NAMESPACE).remote(
        config.model_dump(mode="json"), proxy
    )


async def stop_swarm(handle: Any) -> None:
    with contextlib.suppress(Exception):
        await handle.close.remote()
    ray.kill(handle, no_restart=True)


def target_json(target: VerifyTarget) -> str:
    """A target as the JSON :meth:`SwarmActor.verify` takes."""
    return json.dumps(target.model_dump(mode="json"))
