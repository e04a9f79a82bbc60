"""Judge: the Ray actor ``build:{id}:judge`` that picks a tournament's winner on evidence.

Thin over :func:`coordinator.judge.judge` with the LLM provider its config names (replay in
tests and offline builds; none judges on evidence alone). Each decision goes to the build's
event log as ``judge.decision``.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from actors import handles
from actors.actor_args import validated_arg
from actors.handles import judge_name
from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.bus.models import Event
from coordinator.judge import Decision, Evidence, judge
from sandbox_agents.llm.config import LLMConfig
from sandbox_agents.llm.factory import make_provider

logger = logging.getLogger(__name__)


class JudgeConfig(BaseModel):
    """What a Judge actor needs; crosses the actor boundary as a dict."""

    model_config = ConfigDict(extra="forbid")

    build_id: str = Field(min_length=1)
    llm: dict[str, Any] | None = None
    """Provider config (``{"type": "replay", "cassettes": [...]}``); None judges on evidence alone."""
    redis_url: str | None = None
    bus_prefix: str = "kriptik"


class JudgeActor:
    """A build's tournament judge. Construct through :func:`start_judge`."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = cfg = validated_arg(JudgeConfig, config, "config")
        self._provider = make_provider(validated_arg(LLMConfig, cfg.llm, "llm")) if cfg.llm else None
        self._bus = (
            ContextBus(cfg.redis_url, BusConfig(prefix=cfg.bus_prefix), sender=judge_name(cfg.build_id))
            if cfg.redis_url
            else None
        )

    async def decide(self, evidence: list[Evidence | dict[str, Any]], component: str, context: str = "") -> Decision:
        """Rank the component's candidates on their evidence (plus the LLM signal when configured)."""
        candidates = [validated_arg(Evidence, e, "evidence") for e in evidence]
        decision = await judge(candidates, self._provider, component=component, context=context)
        if self._bus is not None:
            await self._bus.publish(self.config.build_id, Event.of(decision.to_event()))
        return decision

    async def close(self) -> None:
        if self._bus is not None:
            try:
                await self._bus.aclose(flush_timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - the judge is killed next: what the bus held is lost
                logger.warning("judge of %s: closing the bus failed: %r", self.config.build_id, exc)


Judge = handles.actor_class(JudgeActor, restartable=True, max_concurrency=16)


def start_judge(config: JudgeConfig | dict[str, Any]) -> Any:
    """Start the named judge actor ``build:{id}:judge`` (owned by its starter, the coordinator)."""
    config = validated_arg(JudgeConfig, config, "config")
    return handles.start(Judge, judge_name(config.build_id), config.model_dump(mode="json"), detached=False)
