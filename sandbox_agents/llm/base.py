"""The LLM provider protocol: messages and tool schemas in, one assistant turn out.

Every provider (anthropic, openai-compatible, replay) speaks these models, so the agent
loop never sees an SDK type. A request names its (role, task, turn) so that replay can find
the recorded answer whatever order actors run in.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class ToolSpec(BaseModel):
    """A tool the model may call: a name, what it does, and a JSON schema of its arguments."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolCall(BaseModel):
    """The model asks for one tool call."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolResult(BaseModel):
    """What a tool gave back, answered to the model."""

    model_config = ConfigDict(extra="forbid")

    call_id: str
    content: str
    is_error: bool = False


class Message(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    """On an assistant message: the calls it made."""
    tool_results: list[ToolResult] = Field(default_factory=list)
    """On a tool message: the results of the previous assistant message's calls."""


class Usage(BaseModel):
    """Tokens spent by one turn, and what they cost."""

    model_config = ConfigDict(extra="forbid")

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class AssistantTurn(BaseModel):
    """One answer of the model: text, tool calls, usage, and why it stopped."""

    model_config = ConfigDict(extra="forbid")

    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    stop_reason: Literal["end_turn", "tool_use", "max_tokens", "other"] = "end_turn"
    model: str = ""


class TurnKey(BaseModel):
    """Where a request sits in a build: replay looks answers up by this key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: str
    """Who asks: ``planner``, ``judge``, ``agent:backend:0``…"""
    task: str
    """The task id the turn belongs to."""
    turn: int = Field(ge=0)
    """The index of this turn within (role, task), from 0."""


class LLMRequest(BaseModel):
    """Everything a provider needs for one turn."""

    model_config = ConfigDict(extra="forbid")

    key: TurnKey
    system: str = ""
    messages: list[Message]
    tools: list[ToolSpec] = Field(default_factory=list)
    max_tokens: int = Field(default=4096, ge=1, le=200_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    model: str | None = None
    """Override of the provider's configured model (tournament strategies use it)."""


@runtime_checkable
class LLMProvider(Protocol):
    """One way of getting an assistant turn."""

    name: str

    async def complete(self, request: LLMRequest) -> AssistantTurn:
        """Answer one turn. Raises an LLMError subclass (config, rate limit, timeout, server, cassette miss)."""
        ...

    async def aclose(self) -> None: ...
