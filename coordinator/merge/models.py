"""What the merge gate takes in and answers, and the ports it reaches the world through.

A :class:`MergeRequest` names every file of a slot's workspace by content hash; a
:class:`MergeResult` is the gate's verdict. :func:`is_junk` decides what is never merged
(dependencies, build output, caches). The ports (:class:`MainRepo`, :class:`MainCopy`,
:data:`FetchFile`, :data:`Verify`, :data:`Satisfy`, :class:`DevServerPort`, :class:`EventPort`)
are what :class:`~coordinator.merge.gate.MergeGateCore` is handed: the repo on the gate's host
is ``coordinator/merge/host_repo.py``, the ports over the main-test sandbox are in
``coordinator/merge/sandbox.py``, fakes in the unit tests.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coordinator.bus.events import EventPayload
from coordinator.contracts import Component, IntentContract
from coordinator.intent import CriterionResult, SatisfactionReport
from sandbox_agents.errors import InvalidInputError
from sandbox_agents.verifiers.base import VerifyTarget
from sandbox_agents.verifiers.models import Finding, SwarmReport

#: Directories never merged: dependencies, build output, caches, VCS data.
JUNK_DIRS = frozenset(
    {
        "node_modules",
        "__pycache__",
        ".git",
        ".venv",
        "venv",
        "dist",
        "build",
        ".cache",
        ".next",
        ".nuxt",
        ".vite",
        "coverage",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".turbo",
    }
)
#: File suffixes never merged (compiled byte-code, editor swap files, logs).
JUNK_SUFFIXES = (".pyc", ".pyo", ".swp", ".log")
#: Most bytes :meth:`MergeGateCore.tree` hands out (dependents are seeded from it).
MAX_TREE_BYTES = 64 * 1024 * 1024
SHA256 = r"^[0-9a-f]{64}$"


def is_junk(path: str) -> bool:
    """Whether a workspace path is generated or cached rather than source worth merging."""
    parts = posixpath.normpath(path).split("/")
    return any(p in JUNK_DIRS for p in parts[:-1]) or parts[-1] in JUNK_DIRS or parts[-1].endswith(JUNK_SUFFIXES)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MergeRequest(BaseModel):
    """A slot asks to merge its component: what its workspace holds, by content hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    build_id: str = Field(min_length=1)
    component: str = Field(min_length=1)
    """Component of the contract being merged."""
    slot: str = Field(min_length=1)
    """The slot whose workspace holds the candidate (``frontend`` or ``frontend~minimal``)."""
    files: dict[str, str]
    """Workspace-relative path → sha256 of every file to merge (junk is ignored)."""
    links: dict[str, str] = Field(default_factory=dict)
    """Workspace-relative path → target of every symlink to merge (as the link holds it)."""
    deleted: tuple[str, ...] = ()
    """Paths to delete from ``main`` (a file merely absent from ``files`` is kept)."""
    message: str = ""
    """Summary for the commit message."""

    @model_validator(mode="after")
    def _one_kind_per_path(self) -> MergeRequest:
        both = sorted(set(self.files) & set(self.links))
        if both:
            raise ValueError(f"paths both a file and a symlink: {', '.join(both[:5])}")
        return self


class MergeResult(BaseModel):
    """The gate's verdict on one request."""

    model_config = ConfigDict(extra="forbid")

    component: str
    slot: str
    accepted: bool
    commit: str | None = None
    """``main``'s head after an accepted merge; None on rejection."""
    tree_hash: str = ""
    """``main^{tree}`` after the attempt (unchanged on rejection)."""
    changed: list[str] = Field(default_factory=list)
    """Paths written or deleted on the merge branch."""
    findings: list[Finding] = Field(default_factory=list)
    """Errors of the swarm and of failing criteria (for the component's team); warnings naming the
    paths the gate refused (``merge.*`` rules) and what candidate code wrote where git metadata would be."""
    criteria: list[CriterionResult] = Field(default_factory=list)
    swarm: SwarmReport | None = None
    reason: str = ""
    duration_s: float = 0.0


class StaleRequestError(InvalidInputError):
    """A file's content no longer matches the hash in the request (the slot changed since)."""


# --- ports -----------------------------------------------------------------------------------


class MainRepo(Protocol):
    """The main repo, kept where no candidate code runs (:class:`~coordinator.merge.host_repo.HostGitRepo`)."""

    async def init(self) -> bool:
        """Create ``main`` with an empty first commit (True), or recover from an interrupted merge (False)."""
        ...

    async def files(self) -> dict[str, str]:
        """Path → sha256 of every regular file of ``main``."""
        ...

    async def links(self) -> dict[str, str]:
        """Path → target of every symlink of ``main``."""
        ...

    async def owners(self) -> dict[str, str]:
        """Path → the component whose merge last wrote it."""
        ...

    async def stage(
        self,
        branch: str,
        writes: Mapping[str, bytes],
        deletes: Sequence[str],
        message: str,
        *,
        links: Mapping[str, str] | None = None,
    ) -> str:
        """Commit ``main`` plus the changes onto ``branch``; returns the commit."""
        ...

    async def accept(self, branch: str) -> str:
        """Fast-forward ``main`` to ``branch`` and drop it; returns ``main``'s head."""
        ...

    async def discard(self, branch: str) -> None:
        """Delete ``branch``; ``main`` is untouched."""
        ...

    async def head(self) -> str: ...

    async def tree_hash(self) -> str: ...

    async def tree(self, max_bytes: int) -> dict[str, bytes]:
        """Every regular file of ``main``."""
        ...

    async def merged(self) -> list[str]:
        """Components merged into ``main``, oldest first (from the commits' trailers)."""
        ...


class MainCopy(Protocol):
    """A plain copy of the tree (no ``.git``) in the main-test sandbox, where candidate code runs."""

    async def apply(self, writes: Mapping[str, bytes], links: Mapping[str, str], deletes: Sequence[str]) -> None:
        """Bring the copy from ``main`` to the merge branch."""
        ...

    async def reset(self, files: Mapping[str, bytes], links: Mapping[str, str]) -> None:
        """A fresh sandbox holding exactly ``main``: no file or process a candidate left behind."""
        ...

    async def drift(self, files: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """Paths of ``files`` (``main``'s, by sha256) that checks changed or removed; files they added (no junk)."""
        ...

    async def strays(self) -> list[str]:
        """Paths in the copy where git would look for metadata or rules that the tree does not hold."""
        ...


#: Reads one file of a request's slot: (request, path) -> bytes.
FetchFile = Callable[[MergeRequest, str], Awaitable[bytes]]
#: Runs the verification swarm on the main-test sandbox.
Verify = Callable[[VerifyTarget], Awaitable[SwarmReport]]
#: Checks criteria of a (sub-)contract against the served app: (contract, component → URL) -> report.
Satisfy = Callable[[IntentContract, Mapping[str, str]], Awaitable[SatisfactionReport]]


class DevServerPort(Protocol):
    async def restart(self, components: list[Component]) -> tuple[dict[str, str], list[Finding]]:
        """Install the components' dependencies and (re)start their dev servers.

        Returns the URLs of the servers, and findings for failed installs and servers that never answered.
        """
        ...


class EventPort(Protocol):
    async def emit(self, event: EventPayload) -> object:
        """Append a merge event (``merge.queued``, ``merge.accepted``, ``merge.rejected``) to the build's log."""
        ...

    async def report_findings(self, component: str, findings: list[Finding]) -> None: ...
