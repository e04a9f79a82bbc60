"""The backends the contract suite runs against, each with a way to "reconnect from elsewhere"."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from sandbox_agents.backends.base import SandboxBackend
from sandbox_agents.backends.config import LocalBackendConfig
from sandbox_agents.backends.fake import FakeBackend
from sandbox_agents.backends.local.backend import LocalBackend


@dataclass
class BackendUnderTest:
    backend: SandboxBackend
    reopen: Callable[[], SandboxBackend]
    """A new backend object on the same "host", as a new process would make."""

    def has(self, capability: str) -> bool:
        return capability in self.backend.capabilities


@contextlib.asynccontextmanager
async def open_backend(name: str, tmp_path: Path) -> AsyncIterator[BackendUnderTest]:
    if name == "fake":
        fake = FakeBackend()
        yield BackendUnderTest(fake, lambda: fake)
        return
    if name == "local":
        config = LocalBackendConfig()
        local = LocalBackend(config)
        try:
            yield BackendUnderTest(local, lambda: LocalBackend(config))
        finally:
            for sandbox in await local.list():
                await sandbox.terminate()
            local.sweep()
        return
    if name == "modal-fake":
        from tests.fakes.fake_modal import FakeModal, make_fake_modal_backend

        modal = make_fake_modal_backend(tmp_path)

        def reopen() -> SandboxBackend:  # a new backend and SDK object on the same fake cloud, as another process
            return type(modal)(modal.config, sdk=FakeModal(tmp_path), settings=modal._settings)

        try:
            yield BackendUnderTest(modal, reopen)
        finally:
            for sandbox in await modal.list():
                with contextlib.suppress(Exception):
                    await sandbox.terminate()
        return
    raise ValueError(name)
