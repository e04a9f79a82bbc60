"""Usage metering around any LLM provider, so every turn can be charged to a budget.

The agents report their usage in their ``AgentOutcome``; the other callers of a model (the
intent planner, a team's re-planner, the tournament judge) wrap their provider in a
:class:`MeteredProvider` that hands each answered turn's usage to a callback (the build's
budget ledger, or a list that travels back with the caller's result as :class:`LLMCharge`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import BaseModel, ConfigDict

from sandbox_agents.llm.base import AssistantTurn, LLMProvider, LLMRequest, Usage


class LLMCharge(BaseModel):
    """What one caller of a model spent, for the build's budget ledger."""

    model_config = ConfigDict(extra="forbid")

    role: str
    """Who asked: ``agent:{component}:{n}``, ``planner``, ``judge``…"""
    model: str
    usage: Usage


#: Receives ``(role, model, usage)`` of every answered turn.
UsageSink = Callable[[str, str, Usage], Awaitable[object]]


class MeteredProvider:
    """An :class:`LLMProvider` that reports every answered turn to ``on_usage``.

    Args:
        inner: The provider that answers.
        on_usage: Called after each answer with the request's role, the model that answered
            (the reply's, else the request's, else the provider's name) and the usage.
    """

    def __init__(self, inner: LLMProvider, on_usage: UsageSink) -> None:
        self.inner = inner
        self.name = inner.name
        self.on_usage = on_usage

    async def complete(self, request: LLMRequest) -> AssistantTurn:
        reply = await self.inner.complete(request)
        await self.on_usage(request.key.role, reply.model or request.model or self.inner.name, reply.usage)
        return reply

    async def aclose(self) -> None:
        await self.inner.aclose()


def collector() -> tuple[list[LLMCharge], UsageSink]:
    """A list of charges and the sink that appends to it."""
    charges: list[LLMCharge] = []

    async def sink(role: str, model: str, usage: Usage) -> None:
        charges.append(LLMCharge(role=role, model=model, usage=usage))

    return charges, sink
