"""OpenAI chat completions with tools, through the official SDK; any compatible server works.

vLLM, Ollama and llama.cpp serve the same ``/v1/chat/completions`` shape, so one provider with a
``base_url`` covers them all. Our messages map onto OpenAI's: an assistant's calls become
``tool_calls`` (arguments as a JSON string), and each tool result becomes its own ``role:
"tool"`` message with the ``tool_call_id`` it answers.

Every request carries its turn key as headers (``X-Kriptik-Role``, ``X-Kriptik-Task``,
``X-Kriptik-Turn``, values percent-encoded) so that the replay server
(:mod:`sandbox_agents.llm.replay_server`) can answer it; real servers ignore them. A replay
server's 404 ``cassette_miss`` comes back as :class:`~sandbox_agents.errors.CassetteMissError`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import openai

from sandbox_agents.errors import CassetteMissError, LLMError
from sandbox_agents.llm.base import AssistantTurn, LLMRequest, Message, ToolCall, ToolSpec, TurnKey
from sandbox_agents.llm.config import OpenAIConfig
from sandbox_agents.llm.retry import Failure, SleepFn, call_with_retries, translate_sdk_error

logger = logging.getLogger(__name__)

ROLE_HEADER = "X-Kriptik-Role"
TASK_HEADER = "X-Kriptik-Task"
TURN_HEADER = "X-Kriptik-Turn"
CASSETTE_MISS_CODE = "cassette_miss"

_STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "function_call": "tool_use", "length": "max_tokens"}


def turn_headers(key: TurnKey) -> dict[str, str]:
    """The headers that carry a turn key (percent-encoded: header values must be ASCII)."""
    return {ROLE_HEADER: quote(key.role, safe=""), TASK_HEADER: quote(key.task, safe=""), TURN_HEADER: str(key.turn)}


def to_openai_tools(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    """Our tool specs as OpenAI function tools."""
    return [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
        for t in tools
    ]


def to_openai_messages(system: str, messages: list[Message]) -> list[dict[str, Any]]:
    """Our conversation as OpenAI chat messages (system first; one ``tool`` message per result)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for m in messages:
        if m.role == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": m.content or None}
            if m.tool_calls:
                entry["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                    for c in m.tool_calls
                ]
            out.append(entry)
        elif m.role == "tool":
            for r in m.tool_results:
                # OpenAI has no error flag on a tool result; say it in the content so the model sees it.
                content = f"ERROR: {r.content}" if r.is_error else r.content
                out.append({"role": "tool", "tool_call_id": r.call_id, "content": content})
            if m.content:
                out.append({"role": "user", "content": m.content})
        else:
            out.append({"role": "user", "content": m.content})
    return out


def parse_arguments(raw: str | None, *, tool: str) -> dict[str, Any]:
    """A tool call's JSON arguments as a dict.

    A model may emit malformed JSON; we keep the raw text under ``_invalid_json`` instead of
    failing the turn, so that the agent loop can tell the model its call was malformed.
    """
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        logger.warning("openai: tool call %s has invalid JSON arguments: %.200s", tool, raw)
        return {"_invalid_json": raw}
    return value if isinstance(value, dict) else {"_value": value}


class OpenAIProvider:
    """One assistant turn per chat completion.

    Args:
        config: Model, key, endpoint, timeouts, retries and prices.
        sleep: Wait used between retries (tests inject a recorder).
        rng: Random source of the backoff jitter.

    Raises:
        LLMConfigError: When OpenAI itself is the endpoint and no key is configured (names ``OPENAI_API_KEY``).
    """

    name = "openai"

    def __init__(
        self, config: OpenAIConfig, *, sleep: SleepFn | None = None, rng: Callable[[], float] | None = None
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._rng = rng
        self._max_tokens_field = config.max_tokens_field or (
            "max_completion_tokens" if config.is_official() else "max_tokens"
        )
        self._client = openai.AsyncOpenAI(
            api_key=config.resolved_api_key(),
            base_url=config.resolved_base_url(),
            timeout=config.timeout_s,
            max_retries=0,
        )

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model or self.config.model,
            "messages": to_openai_messages(request.system, request.messages),
            self._max_tokens_field: request.max_tokens,
        }
        if request.tools:
            params["tools"] = to_openai_tools(request.tools)
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if self.config.send_turn_headers:
            params["extra_headers"] = turn_headers(request.key)
        return params

    def _translate(self, exc: BaseException, key: TurnKey) -> Failure | None:
        if isinstance(exc, openai.NotFoundError):
            body = exc.body if isinstance(exc.body, dict) else {}
            body = body.get("error", body) if isinstance(body.get("error"), dict) else body
            if body.get("code") == CASSETTE_MISS_CODE:
                msg = str(body.get("message") or f"replay server has no turn for {key}")
                miss = CassetteMissError(msg, role=key.role, task=key.task, turn=key.turn)
                return Failure(miss, retryable=False)
        return translate_sdk_error(exc, openai, self.name)

    async def complete(self, request: LLMRequest) -> AssistantTurn:
        """Answer one turn.

        Raises:
            LLMConfigError: 401/403 (bad key) or 404 (unknown model, wrong base URL).
            CassetteMissError: The endpoint is a replay server without this turn.
            LLMRateLimitError: 429 after every retry.
            LLMTimeoutError: No answer in ``timeout_s``, after every retry.
            LLMServerError: 5xx or connection errors after every retry.
            LLMError: Any other refusal.
        """
        params = self._params(request)
        kwargs: dict[str, Any] = {"policy": self.config.retry_policy(), "provider": self.name, "sleep": self._sleep}
        if self._rng is not None:
            kwargs["rng"] = self._rng
        response = await call_with_retries(
            lambda: self._client.chat.completions.create(**params),
            translate=lambda exc: self._translate(exc, request.key),
            **kwargs,
        )
        return self._to_turn(response)

    def _to_turn(self, response: Any) -> AssistantTurn:
        if not response.choices:
            raise LLMError("openai: the response has no choices", provider=self.name)
        choice = response.choices[0]
        message = choice.message
        calls = [
            ToolCall(
                id=c.id, name=c.function.name, arguments=parse_arguments(c.function.arguments, tool=c.function.name)
            )
            for c in (message.tool_calls or [])
            if getattr(c, "type", "function") == "function"
        ]
        # Some compatible servers report "stop" even when they called tools.
        stop = "tool_use" if calls else _STOP_REASONS.get(choice.finish_reason or "", "other")
        u = response.usage
        usage = self.config.usage(u.prompt_tokens if u else 0, u.completion_tokens if u else 0)
        return AssistantTurn(
            text=message.content or "",
            tool_calls=calls,
            usage=usage,
            stop_reason=stop,  # type: ignore[arg-type]
            model=response.model or "",
        )

    async def aclose(self) -> None:
        """Close the SDK's HTTP client."""
        await self._client.close()
