"""A BuildCoordinator's configuration: its config model and the copy saved for revival.

Control starts (and revives) coordinators from the config saved under
``KRIPTIK_HOME/builds/{id}.json``; the coordinator's ports read it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from coordinator.placement import Placement
from sandbox_agents.private_files import write_private
from sandbox_agents.settings import get_settings

DETERMINISTIC_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}
"""Every slot's env: no byte-code files, so replays give byte-identical workspaces."""


class CoordinatorConfig(BaseModel):
    """What a BuildCoordinator needs; crosses the actor boundary as a dict (and is saved for revival)."""

    model_config = ConfigDict(extra="forbid")

    build_id: str = Field(min_length=1)
    redis_url: str
    bus_prefix: str = "kriptik"
    backend: dict[str, Any] = Field(default_factory=lambda: {"type": "local"})
    """The components' sandboxes' backend when there is no ``placement``."""
    placement: Placement | None = None
    """Where each kind of sandbox runs (``coordinator/placement.py``); None: everything on ``backend``."""
    llm: dict[str, Any] = Field(default_factory=lambda: {"type": "replay", "cassettes": []})
    """Provider config of agents, planner and judge."""
    judge_llm: bool = False
    """Give the judge the LLM signal (key ``(judge, judge:{component}, 0)`` must be in the cassette)."""
    pool_size: int = Field(default=0, ge=0, le=32)
    """Warm SandboxProxy actors kept by the coordinator (each with a standby sandbox)."""
    warm_pools: bool = True
    """Take proxies, teams, agents and swarms from the Control actor's warm pools (cold when it has none)."""
    checkpoint_interval_s: float = Field(default_factory=lambda: float(get_settings().build_checkpoint_interval))
    max_merge_attempts: int = Field(default=3, ge=1)
    parallel: bool = True
    """Every component starts at once, fed its providers' chosen code (``BuildSettings.parallel``)."""
    swarm_timeout_s: float = Field(default=120.0, gt=0)
    gate: dict[str, Any] = Field(default_factory=dict)
    """Extra GateConfig fields (``swarm_must_pass``, ``ready_timeout_s``…)."""
    webhook: dict[str, Any] | None = None
    """A ``WebhookConfig`` for ghost-mode notifications."""
    store_path: str | None = None
    """The store (``KRIPTIK_HOME/store.db`` when unset)."""

    def where(self) -> Placement:
        """The build's placement: every creator of its sandboxes takes its backend from here."""
        return self.placement if self.placement is not None else Placement.single(self.backend)


def builds_dir() -> Path:
    """``KRIPTIK_HOME/builds``, created if missing: the saved configs (and Control's admissions) of builds."""
    path = get_settings().home() / "builds"
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_path(build_id: str) -> Path:
    return builds_dir() / f"{build_id}.json"


def save_config(config: CoordinatorConfig) -> None:
    # 0600: the config holds the Redis URL with its password and the LLM provider's settings.
    write_private(config_path(config.build_id), config.model_dump_json())


def load_config(build_id: str) -> CoordinatorConfig | None:
    """The config saved for ``build_id``; None when there is none (or it is unreadable)."""
    try:
        return CoordinatorConfig.model_validate_json(config_path(build_id).read_text())
    except (FileNotFoundError, ValueError):
        return None
