"""What a restartable actor remembers across its own restarts: one JSON file under ``KRIPTIK_HOME/{kind}/``.

A detached actor with ``max_restarts=-1`` comes back with empty memory. The sandbox proxies
(their binding), the merge gates and the previews (their contract and the proxy owning their
sandbox) therefore keep that in a small file per actor, read on the first call after a
restart. A save writes a temporary file and renames it over the old one, so a crash
mid-write leaves the previous state, never half of one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.private_files import write_private
from sandbox_agents.settings import get_settings

M = TypeVar("M", bound=BaseModel)


def state_dir(kind: str) -> Path:
    """``KRIPTIK_HOME/{kind}``, created if missing (``proxies``, ``gates``, ``previews``)."""
    path = get_settings().home() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_stem(name: str) -> str:
    """An actor or build name as a file name (``/`` is the only character a name may hold that a path may not)."""
    return name.replace("/", "_")


class StateFile(Generic[M]):
    """The state file of one actor: ``KRIPTIK_HOME/{kind}/{name}.json``, holding one ``model``.

    Args:
        kind: The directory under ``KRIPTIK_HOME`` (one per kind of actor).
        name: The actor's name or its build's id.
        model: The pydantic model the file holds.
    """

    def __init__(self, kind: str, name: str, model: type[M]) -> None:
        self.path = state_dir(kind) / (file_stem(name) + ".json")
        self.model = model

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> M:
        """The saved state.

        Raises:
            FileNotFoundError: Nothing was saved (or it was removed).
            ValueError: The file does not hold a valid ``model`` (a pydantic ``ValidationError``).
        """
        return self.model.model_validate_json(self.path.read_text())

    def save(self, state: M) -> None:
        """Replace the saved state atomically, readable by its owner only (specs hold secrets)."""
        write_private(self.path, state.model_dump_json())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class SandboxOwnerState(BaseModel):
    """What an actor owning one sandbox through a SandboxProxy remembers (the gate's and the preview's base)."""

    model_config = ConfigDict(extra="forbid")

    contract: dict[str, Any]
    """The build's intent contract, as JSON."""
    proxy: str
    """Actor name of the SandboxProxy owning the sandbox."""
    sandbox_id: str
    spec: SandboxSpec
