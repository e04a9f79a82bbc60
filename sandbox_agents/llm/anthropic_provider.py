"""Anthropic's Messages API with tool use, through the official SDK.

Our messages map onto Anthropic's content blocks: an assistant's calls become ``tool_use``
blocks, and a ``tool`` message becomes a *user* message of ``tool_result`` blocks (Anthropic has
no tool role). The SDK is built with ``max_retries=0``: :mod:`sandbox_agents.llm.retry` retries,
so that tests inject its sleep and every SDK error is translated in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anthropic

from sandbox_agents.llm.base import AssistantTurn, LLMRequest, Message, ToolCall, ToolSpec
from sandbox_agents.llm.config import AnthropicConfig
from sandbox_agents.llm.retry import Failure, SleepFn, call_with_retries, translate_sdk_error

logger = logging.getLogger(__name__)

_STOP_REASONS = {
    "end_turn": "end_turn",
    "stop_sequence": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
}


def to_anthropic_tools(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    """Our tool specs as Anthropic tool definitions (the JSON schema goes in ``input_schema``)."""
    return [{"name": t.name, "description": t.description, "input_schema": t.parameters} for t in tools]


def _blocks(message: Message) -> tuple[str, list[dict[str, Any]]]:
    """The Anthropic role and content blocks of one of our messages."""
    if message.role == "assistant":
        blocks: list[dict[str, Any]] = []
        if message.content:
            blocks.append({"type": "text", "text": message.content})
        blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in message.tool_calls]
        return "assistant", blocks
    if message.role == "tool":
        blocks = [
            {"type": "tool_result", "tool_use_id": r.call_id, "content": r.content, "is_error": r.is_error}
            for r in message.tool_results
        ]
        if message.content:
            blocks.append({"type": "text", "text": message.content})
        return "user", blocks
    return "user", [{"type": "text", "text": message.content}]


def to_anthropic_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Our conversation as Anthropic messages, merging neighbours of one role (the API wants them alternating)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role, blocks = _blocks(message)
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out


class AnthropicProvider:
    """One assistant turn per call of the Messages API.

    Args:
        config: Model, key, endpoint, timeouts, retries and prices.
        sleep: Wait used between retries (tests inject a recorder).
        rng: Random source of the backoff jitter.

    Raises:
        LLMConfigError: When no API key is configured (names ``ANTHROPIC_API_KEY``).
    """

    name = "anthropic"

    def __init__(
        self, config: AnthropicConfig, *, sleep: SleepFn | None = None, rng: Callable[[], float] | None = None
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._rng = rng
        self._client = anthropic.AsyncAnthropic(
            api_key=config.resolved_api_key(),
            base_url=config.base_url,
            timeout=config.timeout_s,
            max_retries=0,
        )

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model or self.config.model,
            "max_tokens": request.max_tokens,
            "messages": to_anthropic_messages(request.messages),
        }
        if request.system:
            params["system"] = request.system
        if request.tools:
            params["tools"] = to_anthropic_tools(request.tools)
        if request.temperature is not None:
            # This SDK version no longer lists ``temperature`` among create()'s arguments; the API takes it.
            params["extra_body"] = {"temperature": request.temperature}
        return params

    def _translate(self, exc: BaseException) -> Failure | None:
        return translate_sdk_error(exc, anthropic, self.name)

    async def complete(self, request: LLMRequest) -> AssistantTurn:
        """Answer one turn.

        Raises:
            LLMConfigError: 401/403 (bad key) or 404 (unknown model).
            LLMRateLimitError: 429 after every retry.
            LLMTimeoutError: No answer in ``timeout_s``, after every retry.
            LLMServerError: 5xx or connection errors after every retry.
            LLMError: Any other refusal (e.g. 400 for a malformed request).
        """
        params = self._params(request)
        kwargs: dict[str, Any] = {"policy": self.config.retry_policy(), "provider": self.name, "sleep": self._sleep}
        if self._rng is not None:
            kwargs["rng"] = self._rng
        response = await call_with_retries(
            lambda: self._client.messages.create(**params), translate=self._translate, **kwargs
        )
        return self._to_turn(response)

    def _to_turn(self, response: Any) -> AssistantTurn:
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in response.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                calls.append(ToolCall(id=block.id, name=block.name, arguments=dict(block.input or {})))
        u = response.usage
        input_tokens = u.input_tokens + (u.cache_creation_input_tokens or 0) + (u.cache_read_input_tokens or 0)
        stop = _STOP_REASONS.get(response.stop_reason or "", "other")
        return AssistantTurn(
            text="".join(texts),
            tool_calls=calls,
            usage=self.config.usage(input_tokens, u.output_tokens),
            stop_reason=stop,  # type: ignore[arg-type]
            model=response.model,
        )

    async def aclose(self) -> None:
        """Close the SDK's HTTP client."""
        await self._client.close()
