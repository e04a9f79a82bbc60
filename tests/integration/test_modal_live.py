"""Real Modal; runs only when MODAL_TOKEN_ID is set (marker ``cloud``): a small lifecycle, and a whole build.

The whole build is ``tests/e2e/test_modal_build.py``'s ``hello-calc`` with the real ``modal`` SDK instead
of the fake, and prints what it measured as one JSON line (``pytest -s`` shows it). It needs a Ray of
its own (``live_ray``): the session's test cluster gives every worker fake Modal credentials and a closed
server URL (``tests/conftest.py``), so that nothing else can reach Modal, and a build creates its sandboxes
in those workers. Run it in a session of its own::

    pytest -m cloud -s tests/integration/test_modal_live.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.bus.redis_server import ManagedRedis
from sandbox_agents.backends.base import NetworkPolicy, SandboxSpec, SandboxStatus
from sandbox_agents.backends.config import ModalBackendConfig

pytestmark = [
    pytest.mark.cloud,
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("MODAL_TOKEN_ID"), reason="needs MODAL_TOKEN_ID (real Modal credentials)"),
]

#: The backend of the whole build's sandboxes: the real SDK, an App of the live tests' own.
LIVE_BACKEND: dict[str, Any] = {"type": "modal", "app_name": "kriptik-live", "connect_timeout_s": 60}
USER = "modal-live"
REPO = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="module")
def live_ray(kriptik_home: Path) -> Iterator[None]:
    """A Ray of this module's own whose workers have the driver's real Modal settings (every ``MODAL_*``).

    One driver holds one Ray: once the session's test cluster (``ray_cluster``, fake credentials in its
    workers) is up, a build here could not reach Modal, so the test is skipped and says how to run it.
    """
    import ray

    from actors.ray_local import start_local_ray

    if ray.is_initialized():
        pytest.skip(
            "the session's test Ray is up and its workers carry fake Modal credentials: "
            "run `pytest -m cloud -s tests/integration/test_modal_live.py` in a session of its own"
        )
    modal_env = {name: value for name, value in os.environ.items() if name.startswith("MODAL_")}
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    tmp = tempfile.mkdtemp(prefix="kriptik-ray-live-")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", tmp)
        start_local_ray(
            tmp, num_cpus=4, env={"KRIPTIK_HOME": str(kriptik_home), "PYTHONPATH": python_path, **modal_env}
        )
        try:
            yield
        finally:
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


async def _until_ended(control: Any, build_id: str, deadline_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + deadline_s
    while (status := await control.status.remote(USER, build_id))["status"] not in (
        "completed",
        "failed",
        "cancelled",
        "paused",
    ):
        assert time.monotonic() < deadline, f"build {build_id} did not end within {deadline_s:.0f}s"
        await asyncio.sleep(1.0)
    return status


async def _create_to_first_command_s(spec: SandboxSpec) -> float:
    """A new sandbox through a proxy as a build starts one (a Ray worker, the backend, the SDK), to its first command."""
    from actors.pools.proxies import release
    from actors.sandbox_proxy import start_proxy

    name = f"kriptik-live-probe-{uuid.uuid4().hex[:8]}"
    probe = start_proxy(name, LIVE_BACKEND)
    await probe.ping.remote()  # the actor is up: time the sandbox, not the process start
    try:
        started = time.perf_counter()
        await probe.create.remote(spec)
        assert (await probe.exec.remote(["true"])).exit_code == 0
        return time.perf_counter() - started
    finally:
        await release(probe, name)


@pytest.mark.timeout(2400)
async def test_a_whole_hello_calc_build_runs_on_real_modal_and_reports_its_figures(
    live_ray: None, redis_server: ManagedRedis, kriptik_home: Path
) -> None:
    """``hello-calc`` with ``build_mode: modal`` to ``completed``, every criterion passing, every sandbox a
    Modal one; then create-to-first-command, exec round trip and snapshot, measured through a proxy."""
    pytest.importorskip("modal")
    from actors.build.actor import get_coordinator, stop_coordinator
    from actors.control import stop_control
    from actors.handles import MAIN_TEST_SID
    from actors.pools.proxies import get_proxy
    from actors.runtime import start_runtime
    from coordinator.bus.context_bus import BusConfig, ContextBus
    from sandbox_agents.backends.modal.backend import ModalBackend

    runtime = await start_runtime(
        kriptik_home, redis_url=redis_server.url, heartbeat_s=5.0, admit_poll_s=0.3, backend=LIVE_BACKEND
    )
    bus = ContextBus(redis_server.url, BusConfig(prefix="kriptik"), sender="test-modal-live")
    build_id: str | None = None
    try:
        submitted = time.perf_counter()
        build_id = await runtime.control.submit.remote(USER, {"example": "hello-calc", "build_mode": "modal"})
        status = await _until_ended(runtime.control, build_id, deadline_s=1800)
        build_s = time.perf_counter() - submitted
        events = [(env.message.kind, env.message.data) for _, env in await bus.read_events(build_id, count=10_000)]
        failures = [d for k, d in events if k.endswith(("error", "rejected"))]
        assert status["status"] == "completed", (status, failures)
        final = [d for k, d in events if k == "intent.satisfaction"][-1]
        assert final["done"] and all(r["passed"] for r in final["results"]), final
        used = {d["sandbox_id"] for _, d in events if d.get("sandbox_id")}
        assert used and all(i.startswith("sb-") for i in used), used  # Modal's object ids; a local one is sbx-…

        gate = get_proxy(build_id, MAIN_TEST_SID)  # the gate's sandbox lives until the coordinator stops
        for _ in range(3):  # warm the path: the first calls pay for connections
            await gate.exec.remote(["true"])
        round_trips = []
        for _ in range(10):
            started = time.perf_counter()
            assert (await gate.exec.remote(["true"])).exit_code == 0
            round_trips.append(time.perf_counter() - started)
        started = time.perf_counter()
        ref = await gate.snapshot.remote()
        snapshot_s = time.perf_counter() - started
        assert ref.backend == "modal" and ref.id.startswith("im-")
        create_s = await _create_to_first_command_s(SandboxSpec(network=NetworkPolicy.NONE, tags={"build": build_id}))

        figures = {
            "build_s": round(build_s, 1),
            "create_to_first_command_ms": round(create_s * 1000, 1),
            "exec_round_trip_ms_p50": round(statistics.median(round_trips) * 1000, 1),
            "exec_round_trip_ms_max": round(max(round_trips) * 1000, 1),
            "snapshot_ms": round(snapshot_s * 1000, 1),
            "spent_usd": status["budget"]["spent_usd"],
            "compute_seconds": status["budget"]["compute_seconds"],
        }
        print(json.dumps({"modal_live_build": figures}))
    finally:
        if build_id is not None:
            with contextlib.suppress(ValueError):  # no coordinator: nothing to stop
                await stop_coordinator(get_coordinator(build_id))  # ends the build's sandboxes on Modal
        await stop_control(runtime.control)
        await runtime.stop()
    left = await ModalBackend(ModalBackendConfig.model_validate(LIVE_BACKEND)).list({"build": build_id})
    assert left == [], [s.id for s in left]  # nothing of the build keeps running (and billing) on Modal
