"""Settings from the environment and ``.env`` (pydantic-settings).

Every variable is listed with a comment in ``.env.example``. Names follow DESIGN.md.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """What the whole system reads from its environment."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    kriptik_home: Path = Field(default=Path("~/.kriptik"))
    """State directory: SQLite store, managed Redis files, sandbox state, snapshots."""
    kriptik_backend: Literal["local", "modal", "fake"] = "local"
    """Default sandbox backend."""
    kriptik_llm: Literal["replay", "anthropic", "openai"] = "replay"
    """Default LLM provider."""
    kriptik_cassettes: str | None = None
    """Cassette files for the replay provider, separated by ``:`` (os.pathsep)."""
    kriptik_sandbox_uid: int = 61000
    """Host uid (and gid) that local sandboxes run as; never 0."""
    kriptik_exec_channel: bool = True
    """Callers on a proxy's host run ``exec`` over its unix-socket channel instead of a Ray call."""
    kriptik_webhook_allow_private: bool = False
    """Ghost-mode webhooks may reach loopback, private and link-local addresses (tests, on-prem receivers)."""

    modal_token_id: str | None = None
    """Modal API token id; the Modal backend is unavailable without it."""
    modal_token_secret: str | None = None
    """Modal API token secret."""
    modal_workspace: str | None = None
    """Modal workspace (environment) to create sandboxes in; the token's default if unset."""
    modal_sandbox_ttl: int = 3600
    """Seconds a Modal sandbox may live (Modal caps it at 24 h)."""
    modal_max_concurrent: int = 20
    """Sandboxes one user may have at once."""

    redis_url: str | None = None
    """Redis to use for the context bus; when unset a managed local redis-server is started."""
    redis_sandbox_prefix: str = "kriptik"
    """Prefix of every Redis key the bus writes."""

    build_session_ttl: int = 24 * 3600
    """Seconds an idle build session is kept before it is ended."""
    build_checkpoint_interval: int = 300
    """Seconds between checkpoints of a running build's sandboxes."""

    @field_validator("kriptik_home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        """Resolved when read: a relative ``KRIPTIK_HOME`` is relative to the reader's working directory."""
        return value.expanduser().resolve()

    def home(self) -> Path:
        """The state directory, expanded and created."""
        path = self.kriptik_home.expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
