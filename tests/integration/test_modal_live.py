"""A small lifecycle on real Modal; runs only when MODAL_TOKEN_ID is set (marker ``cloud``)."""

from __future__ import annotations

import os

import pytest

from sandbox_agents.backends.base import NetworkPolicy, SandboxSpec, SandboxStatus
from sandbox_agents.backends.config import ModalBackendConfig

pytestmark = [
    pytest.mark.cloud,
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("MODAL_TOKEN_ID"), reason="needs MODAL_TOKEN_ID (real Modal credentials)"),
]


@pytest.mark.timeout(1200)
async def test_lifecycle_on_real_modal() -> None:
    pytest.importorskip("modal")
    from sandbox_agents.backends.modal.backend import ModalBackend

    backend = ModalBackend(ModalBackendConfig(connect_timeout_s=60))
    spec = SandboxSpec(timeout_s=600, network=NetworkPolicy.NONE, tags={"kriptik_test": "live"})
    sandbox = await backend.create(spec)
    restored = None
    try:
        result = await sandbox.exec("node --version && echo $HOME", timeout=60)
        assert result.ok and result.stdout.startswith("v20.")
        await sandbox.write_file("hello.txt", "hi from kriptik")
        assert await sandbox.read_file("hello.txt") == b"hi from kriptik"
        assert any(f.path == "hello.txt" for f in await sandbox.list_files())
        assert sandbox.id in {s.id for s in await backend.list({"kriptik_test": "live"})}
        again = await backend.from_id(sandbox.id)
        assert again.spec.tags["kriptik_test"] == "live"
        ref = await sandbox.snapshot()
        restored = await backend.restore(ref)
        assert await restored.read_file("hello.txt") == b"hi from kriptik"
    finally:
        await sandbox.terminate()
        if restored is not None:
            await restored.terminate()
    assert await sandbox.status() is SandboxStatus.TERMINATED
