"""Judge: the Ray actor ``build:{id}:judge`` that picks a tournament's winner on evidence.

Thin over :func:`coordinator.judge.judge` with the LLM provider its config names (replay in
tests and offline builds; none judges on evidence alone). Each decision goes to the build's
event log as ``judge.decision``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from actors.sandbox_proxy import NAMESPACE
from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.bus.models import Event
from coordinator.judge import Decision, Evidence, judge
from sandbox_agents.errors import InvalidInputError
from sandbox_agents.llm.config import LLMConfig
from sandbox_agents.llm.factory import make_provider

logger = logging.getLogger(__name__)

_LLM_CONFIG: TypeAdapter[Any] = TypeAdapter(LLMConfig)


def judge_name(build_id: str) -> str:
    """The actor name of a build's judge: ``build:{id}:judge``."""
    return f"build:{build_id}:judge"


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
        try:
            self.config = config if isinstance(config, JudgeConfig) else JudgeConfig.model_validate(config)
            self._provider = make_provider(_LLM_CONFIG.validate_python(self.config.llm)) if self.config.llm else None
        except ValueError as exc:
            raise InvalidInputError(f"invalid judge config: {exc}", field="config") from exc
        cfg = self.config
        self._bus = (
            ContextBus(cfg.redis_url, BusConfig(prefix=cfg.bus_prefix), sender=judge_name(cfg.build_id))
            if cfg.redis_url
            else None
        )

    async def decide(self, evidence: list[Evidence | dict[str, Any]], component: str, context: str = "") -> Decision:
        """Rank the component's candidates on their evidence (plus the LLM signal when configured)."""
        try:
            candidates = [e if isinstance(e, Evidence) else Evidence.model_validate(e) for e in evidence]
        except ValueError as exc:
            raise InvalidInputError(f"invalid evidence: {exc}", field="evidence") from exc
        decision = await judge(candidates, self._provider, component=component, context=context)
        if self._bus is not None:
            await self._bus.publish(self.config.build_id, Event.of(decision.to_event()))
        return decision

    async def close(self) -> None:
        if self._bus is not None:
            with contextlib.suppress(Exception):
                await self._bus.aclose(flush_timeout=2.0)


Judge = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=16)(JudgeActor)  # type: ignore[call-overload]


def start_judge(config: JudgeConfig | dict[str, Any]) -> Any:
    """Start the named judge actor ``build:{id}:judge``."""
    config = config if isinstance(config, JudgeConfig) else JudgeConfig.model_validate(config)
    return Judge.options(name=judge_name(config.build_id), namespace=NAMESPACE).remote(config.model_dump(mode="json"))


async def stop_judge(handle: Any) -> None:
    with contextlib.suppress(Exception):
        await handle.close.remote()
    ray.kill(handle, no_restart=True)
