"""Build an LLM provider from its config, importing the implementation (and its SDK) only then.

Kept apart from :mod:`sandbox_agents.llm.config` so that the configs (which every provider
imports) never import a provider back. The ``anthropic`` and ``openai`` SDKs (the ``llm``
extra) are needed only by whoever builds such a provider; replay needs neither.
"""

from __future__ import annotations

from sandbox_agents.errors import LLMConfigError
from sandbox_agents.llm.base import LLMProvider
from sandbox_agents.llm.config import AnthropicConfig, OpenAIConfig, ReplayConfig, llm_config
from sandbox_agents.settings import get_settings


def make_provider(config: AnthropicConfig | OpenAIConfig | ReplayConfig) -> LLMProvider:
    """Build the provider a config names, importing its implementation (and SDK) only now.

    Raises:
        LLMConfigError: No API key is configured, or the SDK is not installed.
    """
    try:
        if config.type == "anthropic":
            from sandbox_agents.llm.anthropic_provider import AnthropicProvider

            return AnthropicProvider(config)
        if config.type == "openai":
            from sandbox_agents.llm.openai_provider import OpenAIProvider

            return OpenAIProvider(config)
    except ImportError as exc:  # the optional ``llm`` extra is missing
        raise LLMConfigError(
            f"the {config.type} provider needs its SDK: pip install 'kriptik-fleet[llm]' ({exc})", provider=config.type
        ) from exc
    from sandbox_agents.llm.replay import ReplayProvider

    return ReplayProvider(config)


def provider_from_settings(*, model: str | None = None) -> LLMProvider:
    """The provider ``KRIPTIK_LLM`` chooses, with its default config and keys from the environment."""
    return make_provider(llm_config(get_settings().kriptik_llm, model=model))
