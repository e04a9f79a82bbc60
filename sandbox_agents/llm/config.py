"""LLM provider configs as tagged models (``type`` is the tag), one per provider.

Every provider imports its config from here, so this module imports no provider: the factories
that build one from a config are in :mod:`sandbox_agents.llm.factory`. Constructors do no
network I/O; the first ``complete`` does.

Keys come from the config or, when it leaves them unset, from the environment
(``ANTHROPIC_API_KEY``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``). A missing key is an
:class:`~sandbox_agents.errors.LLMConfigError` that names the variable to set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from sandbox_agents.errors import LLMConfigError
from sandbox_agents.llm.base import Usage
from sandbox_agents.llm.retry import RetryPolicy

CASSETTES_ENV = "KRIPTIK_CASSETTES"
"""Cassette files replay reads when built from settings, separated by ``os.pathsep``."""

_OFFICIAL_OPENAI_HOSTS = ("api.openai.com",)


class _PricedConfig(BaseModel):
    """What every live provider shares: timeouts, retries and prices."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    """Bound on one HTTP attempt; past it the attempt counts as a timeout (and is retried)."""
    max_retries: int = Field(default=4, ge=0, le=20)
    """Retries after the first attempt on 429, 5xx, timeouts and connection errors."""
    backoff_base_s: float = Field(default=1.0, ge=0)
    """First backoff when the server gives no Retry-After; doubles on every retry."""
    backoff_max_s: float = Field(default=30.0, ge=0)
    """Ceiling of the backoff."""
    input_usd_per_mtok: float = Field(default=0.0, ge=0)
    """Price of a million input tokens, for the budget ledger."""
    output_usd_per_mtok: float = Field(default=0.0, ge=0)
    """Price of a million output tokens."""

    def retry_policy(self) -> RetryPolicy:
        """The retry policy these settings describe."""
        return RetryPolicy(
            max_retries=self.max_retries, base_delay_s=self.backoff_base_s, max_delay_s=self.backoff_max_s
        )

    def usage(self, input_tokens: int, output_tokens: int) -> Usage:
        """Tokens of one turn, priced."""
        cost = (input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1_000_000
        return Usage(input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=round(cost, 8))


class AnthropicConfig(_PricedConfig):
    """Anthropic's Messages API with tool use, through the official ``anthropic`` SDK."""

    type: Literal["anthropic"] = "anthropic"
    model: str = "claude-sonnet-4-5"
    """Model id sent with each request (a request may override it)."""
    api_key: SecretStr | None = None
    """API key; ``ANTHROPIC_API_KEY`` if unset. A SecretStr so that it never shows in logs or reprs."""
    base_url: str | None = None
    """Endpoint root (a proxy or a test fake); Anthropic's own if unset."""
    input_usd_per_mtok: float = Field(default=3.0, ge=0)
    """Price of a million input tokens (cache reads and writes are counted as input)."""
    output_usd_per_mtok: float = Field(default=15.0, ge=0)
    """Price of a million output tokens."""

    def resolved_api_key(self) -> str:
        """The key to use; raises LLMConfigError naming ``ANTHROPIC_API_KEY`` when there is none."""
        key = self.api_key.get_secret_value() if self.api_key else os.environ.get("ANTHROPIC_API_KEY", "")
        if not key.strip():
            raise LLMConfigError(
                "no Anthropic API key: set ANTHROPIC_API_KEY (or api_key in the config)", provider="anthropic"
            )
        return key.strip()


class OpenAIConfig(_PricedConfig):
    """OpenAI chat completions with tools: OpenAI itself or any compatible server (vLLM, Ollama, llama.cpp)."""

    type: Literal["openai"] = "openai"
    model: str = "gpt-4.1"
    """Model id sent with each request (a request may override it)."""
    api_key: SecretStr | None = None
    """API key; ``OPENAI_API_KEY`` if unset. Required for OpenAI itself; optional for a custom ``base_url``."""
    base_url: str | None = None
    """Endpoint root such as ``http://127.0.0.1:8000/v1``; ``OPENAI_BASE_URL`` if unset, else OpenAI's."""
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] | None = None
    """Request field for the output bound. ``None``: ``max_completion_tokens`` for OpenAI itself (its
    newer models refuse ``max_tokens``), ``max_tokens`` for other servers (older ones know no other)."""
    send_turn_headers: bool = True
    """Send the turn key as ``X-Kriptik-Role/Task/Turn`` headers, so the replay server can find the answer."""
    input_usd_per_mtok: float = Field(default=2.0, ge=0)
    """Price of a million input tokens (set 0 for a self-hosted model)."""
    output_usd_per_mtok: float = Field(default=8.0, ge=0)
    """Price of a million output tokens."""

    def resolved_base_url(self) -> str | None:
        """The endpoint to use: the config's, else ``OPENAI_BASE_URL``, else ``None`` (OpenAI's)."""
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def is_official(self) -> bool:
        """Whether requests go to OpenAI itself rather than a compatible server."""
        url = self.resolved_base_url()
        return url is None or any(host in url for host in _OFFICIAL_OPENAI_HOSTS)

    def resolved_api_key(self) -> str:
        """The key to use; raises LLMConfigError naming ``OPENAI_API_KEY`` when OpenAI itself needs one.

        Local compatible servers usually ignore the key, but the SDK insists on a non-empty one,
        so they get a placeholder.
        """
        key = self.api_key.get_secret_value() if self.api_key else os.environ.get("OPENAI_API_KEY", "")
        if key.strip():
            return key.strip()
        if not self.is_official():
            return "not-needed"
        raise LLMConfigError(
            "no OpenAI API key: set OPENAI_API_KEY (or api_key in the config), "
            "or OPENAI_BASE_URL for a compatible server that needs none",
            provider="openai",
        )


class ReplayConfig(BaseModel):
    """Recorded answers from cassette files, looked up by (role, task, turn); offline and deterministic."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["replay"] = "replay"
    cassettes: list[Path] = Field(min_length=1)
    """Cassette files (YAML, see docs/cassettes.md); several are merged, and a key in two of them is an error."""
    model: str = "replay"
    """Model name reported on replayed turns that recorded none."""

    @field_validator("cassettes", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        """Accept a single path where a list is expected."""
        return [value] if isinstance(value, str | Path) else value


LLMConfig = Annotated[AnthropicConfig | OpenAIConfig | ReplayConfig, Field(discriminator="type")]


def llm_config(name: str, *, model: str | None = None) -> AnthropicConfig | OpenAIConfig | ReplayConfig:
    """The default config of a provider by name (``anthropic``, ``openai``, ``replay``).

    Replay reads its cassette paths from ``KRIPTIK_CASSETTES`` (``os.pathsep``-separated).
    """
    if name == "anthropic":
        return AnthropicConfig(model=model) if model else AnthropicConfig()
    if name == "openai":
        return OpenAIConfig(model=model) if model else OpenAIConfig()
    if name == "replay":
        raw = os.environ.get(CASSETTES_ENV, "")
        paths = [Path(p) for p in raw.split(os.pathsep) if p.strip()]
        if not paths:
            raise LLMConfigError(
                f"replay needs cassettes: set {CASSETTES_ENV} to one or more cassette files "
                f"(separated by {os.pathsep!r}), or choose KRIPTIK_LLM=anthropic|openai",
                provider="replay",
            )
        return ReplayConfig(cassettes=paths, model=model) if model else ReplayConfig(cassettes=paths)
    raise LLMConfigError(f"unknown LLM provider {name!r}; choose one of anthropic, openai, replay")
