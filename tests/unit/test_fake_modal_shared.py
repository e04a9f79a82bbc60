"""The Modal fake is one "Modal" for every process on the host, as the real one is for every client.

A build's sandboxes are created and used inside Ray workers: one process creates a sandbox,
another finds it by id, restores its snapshot or ends it. Here a second Python process (through
``ModalBackendConfig(sdk_module="tests.fakes.modal_sdk")``, as a Ray worker would) and this one
share a fake rooted at one directory. Each fake sandbox also has a ``/tmp`` and a network of its
own, and its end takes every process in it, whoever started them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from sandbox_agents.backends.base import SandboxSpec, SandboxStatus
from sandbox_agents.backends.config import ModalBackendConfig
from sandbox_agents.backends.modal.backend import ModalBackend
from sandbox_agents.settings import Settings
from tests.fakes.fake_modal import FakeModal

REPO = Path(__file__).parents[2]
SETTINGS = Settings(modal_token_id="fake-token-id", modal_token_secret="fake-token-secret", modal_workspace=None)

#: Run in another process: a sandbox with a server left running in a session of its own, and a snapshot.
OTHER_PROCESS = textwrap.dedent(
    """
    import asyncio, json
    from sandbox_agents.backends.base import SandboxSpec
    from sandbox_agents.backends.config import ModalBackendConfig
    from sandbox_agents.backends.modal.backend import ModalBackend

    async def main():
        backend = ModalBackend(ModalBackendConfig(sdk_module="tests.fakes.modal_sdk"))
        sandbox = await backend.create(SandboxSpec(ports=(8000,), tags={"made": "elsewhere"}))
        await sandbox.write_file("note.txt", "written by the first process")
        await sandbox.exec("echo mine > /tmp/owner")
        await sandbox.exec("setsid sleep 600 > /dev/null 2>&1 < /dev/null &")
        ref = await sandbox.snapshot()
        print(json.dumps({"id": sandbox.id, "ref": ref.model_dump(mode="json"), "sdk": backend.sdk.__name__}))

    asyncio.run(main())
    """
)


def in_another_process(home: Path) -> dict[str, object]:
    env = {
        **os.environ,
        "KRIPTIK_HOME": str(home),
        "MODAL_TOKEN_ID": "fake-token-id",
        "MODAL_TOKEN_SECRET": "fake-token-secret",
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def sessions_of(sandbox_state_root: Path) -> list[int]:
    """Pids of processes whose working directory is in the sandbox (how the test sees them from outside)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(sandbox_state_root) in os.readlink(entry / "cwd"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def test_a_sandbox_made_in_another_process_is_found_used_restored_and_ended_here(tmp_path: Path) -> None:
    made = in_another_process(tmp_path)
    assert made["sdk"] == "tests.fakes.modal_sdk"
    fake = FakeModal(tmp_path)  # the other process's sdk_module rooted its fake at KRIPTIK_HOME
    backend = ModalBackend(ModalBackendConfig(), sdk=fake, settings=SETTINGS)

    sandbox = await backend.from_id(str(made["id"]))
    assert sandbox.spec.tags["made"] == "elsewhere" and await sandbox.status() is SandboxStatus.RUNNING
    assert await sandbox.read_file("note.txt") == b"written by the first process"
    assert (await sandbox.exec("cat /tmp/owner")).stdout == "mine\n"  # its own /tmp, kept across processes
    assert [s.id for s in await backend.list({"made": "elsewhere"})] == [sandbox.id]

    from sandbox_agents.backends.base import SnapshotRef

    restored = await backend.restore(SnapshotRef.model_validate(made["ref"]))
    assert await restored.read_file("note.txt") == b"written by the first process"
    assert (await restored.exec("cat /tmp/owner 2>/dev/null; echo -")).stdout == "-\n"  # a new container's /tmp

    root = fake.sandboxes[sandbox.id].root
    assert sessions_of(root), "the other process's server should still run in the sandbox"
    await sandbox.terminate()
    await restored.terminate()
    assert sessions_of(root) == []  # ended here, with the process the other one left in a session of its own
    # The shared log has both processes' calls: the snapshot taken there was restored here.
    assert [c.pid for c in fake.shared_calls("Sandbox.snapshot_filesystem")] != [os.getpid()]
    assert [c.pid for c in fake.shared_calls("Image.from_id")] == [os.getpid()]
    assert len({c.pid for c in fake.shared_calls("Sandbox.exec") if c.on == sandbox.id}) == 2


async def test_each_sandbox_has_a_tmp_and_without_egress_a_network_of_its_own(tmp_path: Path) -> None:
    fake = FakeModal(tmp_path)
    backend = ModalBackend(ModalBackendConfig(), sdk=fake, settings=SETTINGS)
    first, second = [await backend.create(SandboxSpec(ports=(8000,))) for _ in range(2)]
    try:
        for n, sandbox in enumerate((first, second)):
            await sandbox.exec(f"echo {n} > /tmp/which")
        assert [(await s.exec("cat /tmp/which")).stdout for s in (first, second)] == ["0\n", "1\n"]
        # network none: a network of its own, loopback its only interface; with egress, the host's network
        assert (await first.exec("tail -n +3 /proc/net/dev | cut -d: -f1")).stdout.split() == ["lo"]
        full = await backend.create(SandboxSpec(network="full"))
        host = os.readlink("/proc/self/ns/net")
        assert [(await s.exec("readlink /proc/self/ns/net")).stdout.strip() == host for s in (first, full)] == [
            False,
            True,
        ]
    finally:
        fake.end_all()
