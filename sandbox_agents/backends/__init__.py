"""Sandbox backends: one async contract, several places to run untrusted code (floor 1, no Ray).

:mod:`.base` is the contract (:class:`SandboxBackend` creates, finds and restores
:class:`Sandbox` objects, which run commands, move files, snapshot and expose ports);
:mod:`.config` holds one tagged config per backend and :mod:`.factory` builds the backend a
config names, importing it only then. Implementations: :mod:`.local` (bubblewrap, cgroups, a
tmpfs workspace; the default), :mod:`.modal` (Modal Sandboxes through the optional ``modal``
SDK) and :mod:`.fake` (in memory, for unit tests). The local and Modal backends are not
re-exported here, so importing this package loads neither; use :func:`make_backend` or import
them from their sub-packages. See docs/sandboxes.md and docs/modal.md.
"""

from sandbox_agents.backends.base import (
    DEFAULT_OUTPUT_CAP,
    ExecChunk,
    ExecRequest,
    ExecResult,
    FileInfo,
    InstallRequest,
    InstallResult,
    NetworkPolicy,
    Sandbox,
    SandboxBackend,
    SandboxSpec,
    SandboxStatus,
    SnapshotRef,
    exec_request,
)
from sandbox_agents.backends.config import (
    BackendConfig,
    FakeBackendConfig,
    LocalBackendConfig,
    ModalBackendConfig,
    backend_config,
)
from sandbox_agents.backends.factory import make_backend
from sandbox_agents.backends.fake import FakeBackend, FakeSandbox
from sandbox_agents.backends.paths import WORKSPACE, workspace_relative

__all__ = [
    "DEFAULT_OUTPUT_CAP",
    "WORKSPACE",
    "BackendConfig",
    "ExecChunk",
    "ExecRequest",
    "ExecResult",
    "FakeBackend",
    "FakeBackendConfig",
    "FakeSandbox",
    "FileInfo",
    "InstallRequest",
    "InstallResult",
    "LocalBackendConfig",
    "ModalBackendConfig",
    "NetworkPolicy",
    "Sandbox",
    "SandboxBackend",
    "SandboxSpec",
    "SandboxStatus",
    "SnapshotRef",
    "backend_config",
    "exec_request",
    "make_backend",
    "workspace_relative",
]
