"""LLM providers behind one protocol: messages and tool schemas in, one assistant turn out (floor 1, no Ray).

:mod:`.base` is the protocol and its models; :mod:`.config` holds one tagged config per
provider and :mod:`.factory` builds the provider a config names (``KRIPTIK_LLM`` picks one by
default). Providers: Anthropic (:mod:`.anthropic_provider`) and OpenAI-compatible servers
(:mod:`.openai_provider`, also vLLM, Ollama, llama.cpp), which need the optional ``llm`` extra
and are therefore not re-exported here (build them with :func:`make_provider`); and replay
(:mod:`.replay`), which answers from cassettes (:mod:`.cassette`) keyed by (role, task, turn).
:mod:`.recorder` writes a cassette from a live provider, :mod:`.metered` charges each turn to a
budget, :mod:`.retry` is the one retry loop and SDK-error translation. The replay HTTP server
(:mod:`.replay_server`, run with ``python -m``) is not imported here either. See
docs/cassettes.md.
"""

from sandbox_agents.llm.base import (
    AssistantTurn,
    LLMProvider,
    LLMRequest,
    Message,
    ToolCall,
    ToolResult,
    ToolSpec,
    TurnKey,
    Usage,
)
from sandbox_agents.llm.cassette import (
    CASSETTE_VERSION,
    Cassette,
    CassetteFormatError,
    CassetteToolCall,
    CassetteTurn,
    load_many,
)
from sandbox_agents.llm.config import CASSETTES_ENV, AnthropicConfig, LLMConfig, OpenAIConfig, ReplayConfig, llm_config
from sandbox_agents.llm.factory import make_provider, provider_from_settings
from sandbox_agents.llm.metered import LLMCharge, MeteredProvider, UsageSink, collector
from sandbox_agents.llm.recorder import RecordingProvider
from sandbox_agents.llm.replay import ReplayProvider
from sandbox_agents.llm.retry import RetryPolicy

__all__ = [
    "CASSETTES_ENV",
    "CASSETTE_VERSION",
    "AnthropicConfig",
    "AssistantTurn",
    "Cassette",
    "CassetteFormatError",
    "CassetteToolCall",
    "CassetteTurn",
    "LLMCharge",
    "LLMConfig",
    "LLMProvider",
    "LLMRequest",
    "Message",
    "MeteredProvider",
    "OpenAIConfig",
    "RecordingProvider",
    "ReplayConfig",
    "ReplayProvider",
    "RetryPolicy",
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "TurnKey",
    "Usage",
    "UsageSink",
    "collector",
    "llm_config",
    "load_many",
    "make_provider",
    "provider_from_settings",
]
