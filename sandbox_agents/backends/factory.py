"""Build a sandbox backend from its config, importing the implementation only then.

Kept apart from :mod:`sandbox_agents.backends.config` so that the configs (which every backend
imports) never import a backend back; the lazy imports here keep the optional ``modal`` extra
optional. Constructors do no I/O; the first ``create``/``from_id`` does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sandbox_agents.backends.base import SandboxBackend
from sandbox_agents.backends.config import FakeBackendConfig, LocalBackendConfig, ModalBackendConfig


def make_backend(
    config: LocalBackendConfig | FakeBackendConfig | ModalBackendConfig,
    *,
    pace: Callable[[], Awaitable[float]] | None = None,
) -> SandboxBackend:
    """Build the backend a config names (lazily importing its implementation).

    Args:
        config: Which backend, and its settings.
        pace: For a Modal backend, the fleet's create pace (see :class:`ModalBackend`); other backends
            create on their own host and take none.
    """
    if config.type == "local":
        from sandbox_agents.backends.local.backend import LocalBackend

        return LocalBackend(config)
    if config.type == "fake":
        from sandbox_agents.backends.fake import FakeBackend

        return FakeBackend(config)
    from sandbox_agents.backends.modal.backend import ModalBackend

    return ModalBackend(config, pace=pace)
