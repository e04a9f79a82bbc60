"""The Modal backend against the faithful fake SDK: spec → calls, SDK errors → ours, real exec/files."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from coordinator.clock import FakeClock
from sandbox_agents.backends.base import NetworkPolicy, SandboxSpec, SandboxStatus
from sandbox_agents.backends.config import ModalBackendConfig
from sandbox_agents.backends.modal.backend import ModalBackend
from sandbox_agents.backends.modal.deploy import deploy, main
from sandbox_agents.backends.modal.image import build_image, image_digest
from sandbox_agents.backends.modal.support import TAG_SPEC, find_credentials, translate_modal_error
from sandbox_agents.errors import (
    BackendUnavailableError,
    InvalidInputError,
    SandboxDeadError,
    SandboxLimitError,
    SandboxNotFoundError,
    SandboxPathError,
    SandboxTimeoutError,
    SnapshotError,
)
from sandbox_agents.settings import Settings
from tests.fakes.fake_modal import FakeModal, exception, make_fake_modal_backend


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[ModalBackend]:
    backend = make_fake_modal_backend(tmp_path)
    yield backend
    fake(backend).end_all()  # a fake sandbox holds processes (its namespaces): none outlives its test


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "absent.toml"))
    return Settings(modal_token_id=None, modal_token_secret=None, kriptik_home=tmp_path / "home")


def fake(backend: ModalBackend) -> FakeModal:
    assert isinstance(backend.sdk, FakeModal)
    return backend.sdk


# --- spec → Sandbox.create -------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (NetworkPolicy.NONE, {"block_network": True}),
        (NetworkPolicy.INSTALL, {"block_network": False, "allowlist": True}),
        (NetworkPolicy.FULL, {"block_network": False}),
    ],
)
async def test_network_policy_maps_to_create_kwargs(
    backend: ModalBackend, policy: NetworkPolicy, expected: dict
) -> None:
    await backend.create(SandboxSpec(network=policy))
    kwargs = fake(backend).calls_of("Sandbox.create")[0]
    assert kwargs["block_network"] is expected["block_network"]
    allowlist = kwargs["outbound_domain_allowlist"]
    assert (allowlist is not None and "registry.npmjs.org" in allowlist) == expected.get("allowlist", False)
    assert kwargs["outbound_cidr_allowlist"] is None


async def test_create_kwargs_carry_limits_ports_ttl_and_workdir(backend: ModalBackend) -> None:
    spec = SandboxSpec(cpu=2, memory_mb=2048, timeout_s=86400, idle_timeout_s=90.5, ports=(3000, 5173), env={"A": "1"})
    await backend.create(spec)
    kwargs = fake(backend).calls_of("Sandbox.create")[0]
    assert kwargs["encrypted_ports"] == [3000, 5173]
    assert kwargs["timeout"] == 86400 and kwargs["idle_timeout"] == 90
    assert kwargs["cpu"] == 2 and kwargs["memory"] == (2048, 2048)
    assert kwargs["workdir"] == "/workspace" and kwargs["env"] == {"A": "1"}
    assert kwargs["app"].name == "kriptik-fleet" and kwargs["name"].startswith("kriptik-")


def test_the_sdk_module_is_imported_by_name_and_one_that_cannot_be_is_unavailable() -> None:
    assert ModalBackend(ModalBackendConfig(sdk_module="tests.fakes.modal_sdk")).sdk.__name__ == "tests.fakes.modal_sdk"
    with pytest.raises(BackendUnavailableError, match="cannot import 'no_such_sdk'"):
        _ = ModalBackend(ModalBackendConfig(sdk_module="no_such_sdk")).sdk


def test_ttl_is_capped_at_24h(backend: ModalBackend) -> None:
    spec = SandboxSpec.model_construct(**{**SandboxSpec().model_dump(), "timeout_s": 3 * 86400})
    assert backend.create_kwargs(spec, name="n", image=None, app=None)["timeout"] == 86400


async def test_secrets_only_when_declared_and_never_in_tags(backend: ModalBackend) -> None:
    await backend.create(SandboxSpec())
    assert fake(backend).calls_of("Sandbox.create")[0]["secrets"] is None
    sandbox = await backend.create(SandboxSpec(secrets={"API_KEY": "s3cret"}))
    kwargs = fake(backend).calls_of("Sandbox.create")[1]
    assert [s.env_dict for s in kwargs["secrets"]] == [{"API_KEY": "s3cret"}]
    assert "s3cret" not in str(kwargs["tags"])
    assert (await sandbox.exec("echo $API_KEY")).stdout == "s3cret\n"
    again = await backend.from_id(sandbox.id)
    assert again.spec.secrets == {"API_KEY": ""}


async def test_unknown_kwargs_are_refused_by_the_fake_like_the_sdk(tmp_path: Path) -> None:
    sdk = FakeModal(tmp_path)
    with pytest.raises(TypeError):
        await sdk.Sandbox.create.aio(app=None, not_a_param=1)


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modal_error", "ours"),
    [
        ("NotFoundError", SandboxNotFoundError),
        ("AuthError", BackendUnavailableError),
        ("ConnectionError", BackendUnavailableError),
        ("ServiceError", BackendUnavailableError),
        ("SandboxTimeoutError", SandboxTimeoutError),
        ("ExecTimeoutError", SandboxTimeoutError),
        ("SandboxTerminatedError", SandboxDeadError),
        ("ResourceExhaustedError", SandboxLimitError),
        ("SnapshotCreationError", SnapshotError),
        ("InvalidError", InvalidInputError),
        ("ConflictError", InvalidInputError),
        ("SandboxFilesystemNotFoundError", FileNotFoundError),
        ("SandboxFilesystemPermissionError", SandboxPathError),
    ],
)
def test_sdk_errors_translate_for_the_real_and_the_fake_sdk(modal_error: str, ours: type) -> None:
    modal = pytest.importorskip("modal")
    for sdk in (modal, FakeModal.__new__(FakeModal)):
        sdk_exc = getattr(modal.exception if sdk is modal else exception, modal_error)
        if sdk is not modal:
            sdk.exception = exception
        assert isinstance(translate_modal_error(sdk_exc("boom"), sdk, sandbox_id="sb-1"), ours)


def test_non_modal_errors_pass_through() -> None:
    error = ValueError("x")
    assert translate_modal_error(error, FakeModal.__new__(FakeModal)) is error


async def test_injected_sdk_errors_surface_as_ours(backend: ModalBackend) -> None:
    sandbox = await backend.create(SandboxSpec())
    fake(backend).inject("Sandbox.exec", exception.SandboxTerminatedError("gone"))
    with pytest.raises(SandboxDeadError):
        await sandbox.exec("true")
    backend.config = backend.config.model_copy(update={"create_retry_s": 0})  # no retry: the error itself
    fake(backend).inject("Sandbox.create", exception.ResourceExhaustedError("quota"))
    with pytest.raises(SandboxLimitError):
        await backend.create(SandboxSpec())
    with pytest.raises(SandboxNotFoundError):
        await backend.from_id("sb-does-not-exist")


# --- creates: bounded, and backed off while Modal refuses them ---------------------------


def clocked_backend(tmp_path: Path, clock: FakeClock, **config: Any) -> ModalBackend:
    """A backend over the fake whose retries wait on ``clock``, with the jitter fixed at its middle."""
    settings = Settings(modal_token_id="fake-token-id", modal_token_secret="fake-token-secret", modal_workspace=None)
    return ModalBackend(
        ModalBackendConfig(connect_timeout_s=5.0, **config),
        sdk=FakeModal(tmp_path),
        settings=settings,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        rng=lambda: 0.5,  # each back-off is 3/4 of its ceiling
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(auto_advance=True)


async def test_a_refused_create_is_retried_with_growing_capped_backoff_until_modal_accepts_it(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = clocked_backend(tmp_path, clock, create_retry_first_s=1, create_retry_max_s=4, create_retry_s=120)
    fake(backend).inject("Sandbox.create", exception.ResourceExhaustedError("rate limit exceeded"), times=5)
    with caplog.at_level("WARNING", logger="sandbox_agents.backends.modal.backend"):
        sandbox = await backend.create(SandboxSpec())
    try:
        assert len(fake(backend).calls_of("Sandbox.create")) == 6
        assert clock.sleeps == [0.75, 1.5, 3.0, 3.0, 3.0]  # ceilings 1, 2, 4, then capped at 4
        assert [r.getMessage().count("retrying") for r in caplog.records] == [1] * 5
        assert await sandbox.status() is SandboxStatus.RUNNING
    finally:
        fake(backend).end_all()


async def test_a_create_still_refused_after_the_bound_is_a_limit_error_saying_how_long_it_tried(
    tmp_path: Path, clock: FakeClock
) -> None:
    backend = clocked_backend(tmp_path, clock, create_retry_first_s=1, create_retry_max_s=4, create_retry_s=10)
    fake(backend).inject("Sandbox.create", exception.ResourceExhaustedError("rate limit exceeded"), times=100)
    with pytest.raises(SandboxLimitError, match=r"refused to create a sandbox 5 time\(s\) over 8\.2s") as info:
        await backend.create(SandboxSpec())
    assert isinstance(info.value.__cause__, exception.ResourceExhaustedError)
    assert len(fake(backend).calls_of("Sandbox.create")) == 5
    assert clock.sleeps == [0.75, 1.5, 3.0, 3.0] and sum(clock.sleeps) <= 10  # the next 3 s would pass the bound
    assert fake(backend).sandboxes == {}


async def test_a_create_failing_for_another_reason_is_not_retried(tmp_path: Path, clock: FakeClock) -> None:
    backend = clocked_backend(tmp_path, clock)
    fake(backend).inject("Sandbox.create", exception.InvalidError("bad image"), times=3)
    with pytest.raises(InvalidInputError, match="bad image"):
        await backend.create(SandboxSpec())
    assert len(fake(backend).calls_of("Sandbox.create")) == 1 and clock.sleeps == []


class GatedCreate:
    """``Sandbox.create`` that holds every caller until the test opens the gate, counting those inside."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.inside = 0
        self.peak = 0
        self.calls = 0

    async def aio(self, **kwargs: Any) -> Any:
        self.calls += 1
        object_id = f"sb-gated-{self.calls}"
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            await self.gate.wait()
        finally:
            self.inside -= 1
        return SimpleNamespace(object_id=object_id)


async def test_at_most_max_concurrent_creates_are_in_flight_at_once(tmp_path: Path, clock: FakeClock) -> None:
    backend = clocked_backend(tmp_path, clock, max_concurrent_creates=3)
    gated = GatedCreate()
    sdk = fake(backend)
    sdk.Sandbox = type("Sandbox", (sdk.Sandbox,), {"create": gated})
    creates = [asyncio.create_task(backend.create(SandboxSpec())) for _ in range(10)]
    for _ in range(1000):  # bounded: the tasks reach the gate within a few loop turns
        if gated.inside == 3:
            break
        await asyncio.sleep(0)
    for _ in range(50):  # and no fourth gets past the bound while the three are held
        await asyncio.sleep(0)
    assert (gated.inside, gated.peak, gated.calls) == (3, 3, 3)
    gated.gate.set()
    created = await asyncio.gather(*creates)
    assert len({s.id for s in created}) == 10 and gated.calls == 10 and gated.peak == 3


# --- fail fast -------------------------------------------------------------------------


async def test_missing_credentials_fail_before_any_call(tmp_path: Path, no_credentials: Settings) -> None:
    sdk = FakeModal(tmp_path)
    backend = ModalBackend(ModalBackendConfig(), sdk=sdk, settings=no_credentials)
    with pytest.raises(BackendUnavailableError, match="MODAL_TOKEN_ID"):
        await backend.create(SandboxSpec())
    assert sdk.calls == []


def test_credentials_found_in_modal_toml(tmp_path: Path, no_credentials: Settings, monkeypatch) -> None:
    config = tmp_path / "modal.toml"
    config.write_text('[default]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\n')
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(config))
    assert find_credentials(no_credentials) == str(config)


async def test_unreachable_modal_fails_within_connect_timeout(tmp_path: Path) -> None:
    backend = make_fake_modal_backend(tmp_path, unreachable=True)
    backend.config = ModalBackendConfig(connect_timeout_s=0.3)
    with pytest.raises(BackendUnavailableError, match="did not answer"):  # an unreachable fake never answers
        await backend.create(SandboxSpec())


async def test_refused_token_is_backend_unavailable(tmp_path: Path) -> None:
    backend = make_fake_modal_backend(tmp_path, authenticated=False)
    with pytest.raises(BackendUnavailableError, match="Token missing"):
        await backend.list()


# --- exec ------------------------------------------------------------------------------


async def test_exec_collects_output_exit_code_and_stdin(backend: ModalBackend) -> None:
    sandbox = await backend.create(SandboxSpec(env={"GREETING": "hi"}))
    result = await sandbox.exec(["sh", "-c", 'echo "$GREETING $X"; echo oops >&2; exit 3'], env={"X": "there"})
    assert (result.exit_code, result.stdout, result.stderr) == (3, "hi there\n", "oops\n")
    assert (await sandbox.exec("cat", stdin="piped")).stdout == "piped"
    await sandbox.write_file("sub/f.txt", "x")
    assert (await sandbox.exec("ls", cwd="sub")).stdout == "f.txt\n"
    exec_call = fake(backend).calls_of("Sandbox.exec")[-1]
    assert exec_call["workdir"] == "/workspace/sub"


async def test_exec_timeout_raises_with_partial_output(backend: ModalBackend) -> None:
    sandbox = await backend.create(SandboxSpec())
    with pytest.raises(SandboxTimeoutError) as info:  # without the timeout, `sleep 30` would end with exit 0
        await sandbox.exec("echo started; sleep 30", timeout=1)
    assert info.value.stdout == "started\n" and info.value.timeout_s == 1
    assert fake(backend).calls_of("Sandbox.exec")[-1]["timeout"] == 1


async def test_output_past_the_cap_is_cut_and_marked(backend: ModalBackend) -> None:
    sandbox = await backend.create(SandboxSpec())
    result = await sandbox.exec("head -c 9000000 /dev/zero | tr '\\0' a")
    assert result.ok and result.truncated and len(result.stdout) == 8 * 1024 * 1024


async def test_exec_stream_yields_output_as_it_comes(backend: ModalBackend) -> None:
    sandbox = await backend.create(SandboxSpec())
    seen = []
    # `two` waits for a file written only once `one` arrived: output delivered in one lump at the end never gets there
    async for chunk in sandbox.exec_stream("echo one; until [ -e go ]; do sleep 0.02; done; echo two >&2; exit 4"):
        seen.append(chunk)
        if chunk.stream == "stdout" and chunk.data == "one\n":
            await sandbox.write_file("go", "")
    assert seen[0].data == "one\n"
    assert [c.stream for c in seen] == ["stdout", "stderr", "exit"] and seen[-1].exit_code == 4


# --- files, snapshots, tunnels, lifecycle ---------------------------------------------


async def test_files_round_trip_and_refuse_escapes(backend: ModalBackend) -> None:
    sandbox = await backend.create(SandboxSpec())
    await sandbox.write_file("/workspace/src/app.js", b"\x00\xffjs", mode=0o755)
    assert await sandbox.read_file("src/app.js") == b"\x00\xffjs"
    listing = {f.path: f for f in await sandbox.list_files()}
    assert listing["src"].is_dir and listing["src/app.js"].size == 4 and listing["src/app.js"].mode == 0o755
    assert [f.path for f in await sandbox.list_files("*.js")] == ["src/app.js"]
    for bad in ("../etc/passwd", "/etc/passwd"):
        with pytest.raises(SandboxPathError):
            await sandbox.read_file(bad)
    await sandbox.exec("ln -s /etc/passwd leak; ln -s /etc d")
    for bad in ("leak", "d/passwd"):
        with pytest.raises(SandboxPathError):
            await sandbox.read_file(bad)
    with pytest.raises(FileNotFoundError):
        await sandbox.read_file("missing.txt")
    with pytest.raises(IsADirectoryError):
        await sandbox.remove("src")
    await sandbox.remove("src", recursive=True)
    assert [f.path for f in await sandbox.list_files()] == ["d", "leak"]


async def test_snapshot_restores_the_workspace_byte_for_byte(backend: ModalBackend) -> None:
    sandbox = await backend.create(SandboxSpec(tags={"build": "b1"}))
    await sandbox.write_file("a/b.bin", bytes(range(256)))
    ref = await sandbox.snapshot()
    assert ref.backend == "modal" and ref.id.startswith("im-") and ref.sandbox_id == sandbox.id
    await sandbox.write_file("a/b.bin", b"changed")
    restored = await backend.restore(ref)
    assert restored.id != sandbox.id
    assert await restored.read_file("a/b.bin") == bytes(range(256))
    assert restored.spec == sandbox.spec


async def test_expose_reaches_the_port_in_each_sandboxs_own_network(backend: ModalBackend) -> None:
    """Two sandboxes serve the same port, as two Modal containers can; each tunnel reaches its own."""
    sandboxes = [await backend.create(SandboxSpec(ports=(8000,))) for _ in range(2)]
    urls = []
    for n, sandbox in enumerate(sandboxes):
        await sandbox.write_file("index.html", f"hello from sandbox {n}")
        await sandbox.exec("nohup python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &")
        urls.append(await sandbox.expose(8000))
    assert len(set(urls)) == 2 and all(url.startswith("http://127.0.0.1:") for url in urls)
    bodies = []
    async with httpx.AsyncClient() as client:
        for url in urls:
            for _ in range(100):
                try:
                    bodies.append((await client.get(f"{url}/index.html")).text)
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
    assert bodies == ["hello from sandbox 0", "hello from sandbox 1"]
    with pytest.raises(InvalidInputError):
        await sandboxes[0].expose(8001)
    for sandbox in sandboxes:
        await sandbox.terminate()


async def test_list_by_tags_and_from_id_in_a_fresh_backend(backend: ModalBackend, tmp_path: Path) -> None:
    one = await backend.create(SandboxSpec(tags={"build": "b1", "role": "main"}))
    two = await backend.create(SandboxSpec(tags={"build": "b1", "role": "test"}))
    await backend.create(SandboxSpec(tags={"build": "b2"}))
    assert {s.id for s in await backend.list({"build": "b1"})} == {one.id, two.id}
    assert [s.id for s in await backend.list({"role": "test"})] == [two.id]
    assert fake(backend).calls_of("Sandbox.list")[-1]["tags"] == {"role": "test"}
    await two.terminate()
    assert [s.id for s in await backend.list({"build": "b1"})] == [one.id]
    # Another process: a new backend object and SDK over the same Modal account.
    other = ModalBackend(ModalBackendConfig(), sdk=FakeModal(tmp_path), settings=backend.settings)
    found = await other.from_id(two.id)
    assert found.spec.tags["role"] == "test" and await found.status() is SandboxStatus.TERMINATED
    assert TAG_SPEC not in found.spec.tags


async def test_status_tells_terminated_from_dead(backend: ModalBackend) -> None:
    alive = await backend.create(SandboxSpec())
    lost = await backend.create(SandboxSpec())
    assert await alive.status() is SandboxStatus.RUNNING
    fake(backend).kill(lost.id)
    assert await lost.status() is SandboxStatus.DEAD
    with pytest.raises(SandboxDeadError):
        await lost.exec("true")
    with pytest.raises(SandboxDeadError):
        await lost.keepalive()
    await alive.keepalive()
    await alive.terminate()
    assert await alive.status() is SandboxStatus.TERMINATED


async def test_idle_timeout_ends_an_unused_sandbox(backend: ModalBackend) -> None:
    sandbox = await backend.create(SandboxSpec(idle_timeout_s=1))
    await sandbox.keepalive()
    await asyncio.sleep(1.1)
    assert await sandbox.status() is SandboxStatus.DEAD


# --- image and deploy ------------------------------------------------------------------


def test_image_definition_is_built_lazily_and_digest_is_stable(tmp_path: Path) -> None:
    image = build_image(FakeModal(tmp_path))
    steps = [name for name, _ in image.steps]
    assert steps[0] == "debian_slim" and steps[-1] == "workdir" and "pip_install" in steps
    assert any("playwright install --with-deps chromium" in c for n, v in image.steps if n == "run_commands" for c in v)
    assert image_digest() == image_digest() and len(image_digest()) == 16


def test_deploy_check_exits_2_without_credentials(tmp_path: Path, no_credentials: Settings, capsys) -> None:
    assert main(["--check"], sdk=FakeModal(tmp_path), settings=no_credentials) == 2
    out = capsys.readouterr().out
    assert "[ok] sdk: modal 1.6.4" in out and "[FAIL] credentials:" in out


async def test_deploy_builds_verifies_and_cleans_up(tmp_path: Path) -> None:
    backend = make_fake_modal_backend(tmp_path)
    settings = backend.settings.model_copy(update={"kriptik_home": tmp_path / "home"})
    lines: list[str] = []
    code = await deploy(ModalBackendConfig(), sdk=backend.sdk, settings=settings, report=lines.append)
    assert code == 0, lines
    assert any(line.startswith("[ok] verify:") for line in lines)
    assert all(state.returncode is not None for state in fake(backend).sandboxes.values())
    assert (tmp_path / "home" / "modal-image.json").exists()


async def test_deploy_rolls_back_on_failure(tmp_path: Path) -> None:
    backend = make_fake_modal_backend(tmp_path)
    settings = backend.settings.model_copy(update={"kriptik_home": tmp_path / "home"})
    fake(backend).inject("Sandbox.create", exception.ResourceExhaustedError("no capacity"))
    lines: list[str] = []
    config = ModalBackendConfig(create_retry_s=0)  # the verify sandbox is refused at once, not retried
    code = await deploy(config, sdk=backend.sdk, settings=settings, report=lines.append)
    assert code == 1 and any(line.startswith("[FAIL] deploy:") for line in lines)
    assert (tmp_path / "home" / "modal-image.json").read_text().strip() == "{}"


async def test_a_profile_the_image_does_not_carry_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    from sandbox_agents.errors import InvalidInputError

    backend = make_fake_modal_backend(tmp_path)
    with pytest.raises(InvalidInputError, match="unknown sandbox profile 'ruby'"):
        await backend.create(SandboxSpec(profile="ruby"))
    assert fake(backend).sandboxes == {}
    node = await backend.create(SandboxSpec(profile="node"))  # the one image carries Node and Python
    await node.terminate()
