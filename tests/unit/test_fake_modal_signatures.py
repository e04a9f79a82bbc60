"""The Modal SDK fake (``tests/fakes/fake_modal.py``) checked against the installed ``modal``.

The Modal backend is tested against the fake, so the fake must take exactly what the SDK takes.
For every class and call the fake imitates: the SDK has it; every parameter of the fake is a
parameter of the SDK's with a kind that allows no more (positional ones in the same order);
every parameter the SDK requires is taken by the fake; plain defaults agree; a call is async
(``.aio``) in both or in neither. Then the backend runs a build's worth of calls over the fake
and each logged call is bound to the SDK's own signature, so a keyword the backend made up fails
here even where the fake would accept it.

Signatures are read from the SDK's implementation functions: ``modal.Sandbox.create`` is a
synchronicity wrapper and ``inspect.unwrap`` reaches ``modal.sandbox._sandbox._Sandbox.create``
(checked below to be a real signature, not a ``*args, **kwargs`` forwarder). Nothing on the SDK
is called, and importing it opens no connection.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox_agents.backends.base import NetworkPolicy, SandboxSpec
from sandbox_agents.backends.config import ModalBackendConfig
from sandbox_agents.backends.modal.deploy import deploy
from tests.fakes import fake_modal

modal = pytest.importorskip("modal")

from modal.container_process import ContainerProcess  # noqa: E402 - only once modal is known to be there
from modal.io_streams import StreamReader, StreamWriter  # noqa: E402
from modal.sandbox.sandbox import SandboxFilesystem  # noqa: E402

#: Each class of the fake and the SDK class it imitates.
IMITATIONS: dict[type, type] = {
    fake_modal.Sandbox: modal.Sandbox,
    fake_modal.Image: modal.Image,
    fake_modal.Secret: modal.Secret,
    fake_modal.Tunnel: modal.Tunnel,
    fake_modal._AppApi: modal.App,
    fake_modal._ClientApi: modal.Client,
    fake_modal.Filesystem: SandboxFilesystem,
    fake_modal.ContainerProcess: ContainerProcess,
    fake_modal.StreamReader: StreamReader,
    fake_modal.StreamWriter: StreamWriter,
}

#: The names the fake module stands in for on ``modal`` itself.
MODULE_NAMES = ("App", "Client", "Image", "Sandbox", "Secret", "Tunnel", "exception")

#: Attributes the backend reads on what the SDK returns (not calls, so not in the call log).
READ_ATTRIBUTES = [
    (modal.Sandbox, "object_id"),
    (modal.Sandbox, "filesystem"),
    (modal.Image, "object_id"),
    (modal.App, "app_id"),
    (modal.Tunnel, "url"),
    (ContainerProcess, "stdout"),
    (ContainerProcess, "stderr"),
    (ContainerProcess, "stdin"),
    (StreamReader, "__aiter__"),
]

_P = inspect.Parameter
#: For each kind of SDK parameter, the kinds the fake may give it: never one that allows more.
_ALLOWED_KINDS = {
    _P.POSITIONAL_ONLY: {_P.POSITIONAL_ONLY},
    _P.POSITIONAL_OR_KEYWORD: {_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY},
    _P.VAR_POSITIONAL: {_P.VAR_POSITIONAL},
    _P.KEYWORD_ONLY: {_P.KEYWORD_ONLY},
    _P.VAR_KEYWORD: {_P.VAR_KEYWORD},
}
_POSITIONAL = {_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD}


def _members(fake_cls: type) -> list[tuple[str, Any]]:
    """The calls and properties a fake class defines for callers (its helpers start with ``_``)."""
    kinds = (fake_modal.sdk_call, classmethod, staticmethod, property)
    return [
        (name, member)
        for name, member in vars(fake_cls).items()
        if (not name.startswith("_") or name == "__aiter__")
        and (inspect.isfunction(member) or isinstance(member, kinds))
    ]


def _fake_function(member: Any) -> Any:
    if isinstance(member, fake_modal.sdk_call):
        return member.__wrapped__
    if isinstance(member, classmethod | staticmethod):
        return member.__func__
    return member


def _real_function(real_cls: type, name: str) -> Any:
    """The SDK's implementation of ``real_cls.name``, under its synchronicity wrapper."""
    return inspect.unwrap(getattr(real_cls, name))


def _params(fn: Any) -> list[inspect.Parameter]:
    params = list(inspect.signature(fn).parameters.values())
    return params[1:] if params and params[0].name in ("self", "cls") else params


def _plain(value: Any) -> bool:
    return value is None or type(value) in (bool, int, float, str, list, dict, tuple)


def signature_mismatches(fake_fn: Any, real_fn: Any) -> list[str]:
    """What a caller could do with the fake's signature that the SDK's would refuse, or the reverse."""
    fake, real = _params(fake_fn), _params(real_fn)
    real_by_name = {p.name: p for p in real}
    problems = []
    for p in fake:
        r = real_by_name.get(p.name)
        if r is None:
            problems.append(f"{p.name!r} is not a parameter of the SDK's")
            continue
        if p.kind not in _ALLOWED_KINDS[r.kind]:
            problems.append(f"{p.name!r} is {p.kind.description} in the fake, {r.kind.description} in the SDK")
        if p.default is p.empty and r.default is not r.empty:
            problems.append(f"{p.name!r} is required by the fake, optional in the SDK")
        elif p.default is not p.empty and _plain(r.default) and p.default != r.default:
            problems.append(f"{p.name!r} defaults to {p.default!r} in the fake, {r.default!r} in the SDK")
    taken = {p.name for p in fake}
    for r in real:
        if r.default is r.empty and r.kind not in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD) and r.name not in taken:
            problems.append(f"{r.name!r} is required by the SDK, not taken by the fake")
    fake_positional = [p.name for p in fake if p.kind in _POSITIONAL]
    real_positional = [r.name for r in real if r.kind in _POSITIONAL]
    if fake_positional != real_positional[: len(fake_positional)]:
        problems.append(f"positional parameters {fake_positional} in the fake, {real_positional} in the SDK")
    return problems


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


IMITATED = [(fake_cls, name, member) for fake_cls in IMITATIONS for name, member in _members(fake_cls)]


# --- the SDK's surface, statically ----------------------------------------------------------


def test_importing_modal_opens_no_connection() -> None:
    probe = (
        "import sys\nseen = set()\n"
        "sys.addaudithook(lambda event, args: seen.add(event) if event.startswith('socket.') else None)\n"
        "import modal\nprint(sorted(seen))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_sdk_signatures_are_real_ones_not_forwarders() -> None:
    """``inspect.unwrap`` must reach the implementation: a ``*args, **kwargs`` wrapper would hide every parameter."""
    for real_fn in (_real_function(modal.Sandbox, "create"), _real_function(modal.Sandbox, "exec")):
        kinds = {p.kind for p in _params(real_fn)}
        assert kinds != {_P.VAR_POSITIONAL, _P.VAR_KEYWORD}
    assert "encrypted_ports" in inspect.signature(_real_function(modal.Sandbox, "create")).parameters


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_every_module_name_the_fake_stands_in_for_is_on_modal(name: str, tmp_path: Path) -> None:
    assert hasattr(modal, name)
    assert hasattr(fake_modal.FakeModal(tmp_path), name)


@pytest.mark.parametrize(
    ("fake_cls", "name", "member"), IMITATED, ids=[f"{IMITATIONS[c].__name__}.{n}" for c, n, _ in IMITATED]
)
def test_each_fake_call_has_the_sdk_signature(fake_cls: type, name: str, member: Any) -> None:
    real_cls = IMITATIONS[fake_cls]
    assert hasattr(real_cls, name), f"{real_cls.__qualname__} has no {name!r}: the fake made it up"
    if isinstance(member, property):
        assert isinstance(inspect.getattr_static(real_cls, name), property)
        return
    fake_fn, real_fn = _fake_function(member), _real_function(real_cls, name)
    fake_aio = isinstance(member, fake_modal.sdk_call) and not isinstance(member, fake_modal.lazy_sdk_call)
    assert fake_aio == _is_async(real_fn), f"{name}: async in one of the fake and the SDK only"
    if fake_aio:
        assert inspect.isasyncgenfunction(fake_fn) == inspect.isasyncgenfunction(real_fn)
    assert signature_mismatches(fake_fn, real_fn) == []


def test_every_sdk_call_of_the_fake_is_in_a_class_checked_here() -> None:
    classes = [c for c in vars(fake_modal).values() if isinstance(c, type) and c.__module__ == fake_modal.__name__]
    with_calls = {c for c in classes if any(isinstance(m, fake_modal.sdk_call) for m in vars(c).values())}
    assert with_calls <= set(IMITATIONS)


@pytest.mark.parametrize(
    "fake_error",
    [e for e in vars(fake_modal.exception).values() if isinstance(e, type)],
    ids=lambda e: e.__name__,
)
def test_each_fake_error_has_the_sdk_name_and_place_in_the_hierarchy(fake_error: type) -> None:
    real_error = getattr(modal.exception, fake_error.__name__)
    assert issubclass(real_error, modal.exception.Error)
    real_ancestors = {c.__name__ for c in real_error.__mro__}
    assert {c.__name__ for c in fake_error.__mro__ if c is not object} <= real_ancestors


@pytest.mark.parametrize(("real_cls", "name"), READ_ATTRIBUTES, ids=[f"{c.__name__}.{n}" for c, n in READ_ATTRIBUTES])
def test_attributes_the_backend_reads_exist_on_the_sdk(real_cls: type, name: str) -> None:
    assert hasattr(real_cls, name)


def test_the_cross_check_catches_a_made_up_or_misplaced_parameter() -> None:
    real_fn = _real_function(modal.Sandbox, "terminate")  # (self, *, wait: bool = False)

    async def made_up(self: Any, *, wait: bool = False, grace_s: float = 0) -> None: ...

    async def positional(self: Any, wait: bool = False) -> None: ...

    async def wrong_default(self: Any, *, wait: bool = True) -> None: ...

    assert signature_mismatches(made_up, real_fn) == ["'grace_s' is not a parameter of the SDK's"]
    assert signature_mismatches(positional, real_fn) == [
        "'wait' is positional or keyword in the fake, keyword-only in the SDK",
        "positional parameters ['wait'] in the fake, [] in the SDK",
    ]
    assert signature_mismatches(wrong_default, real_fn) == ["'wait' defaults to True in the fake, False in the SDK"]


# --- what the backend really calls ----------------------------------------------------------


async def _run_a_build(tmp_path: Path) -> fake_modal.FakeModal:
    """Every path of the backend that reaches the SDK, over one fake; returns the fake with its call log."""
    backend = fake_modal.make_fake_modal_backend(tmp_path)
    backend.config = ModalBackendConfig(connect_timeout_s=5.0, environment="kriptik-test")
    sdk = backend.sdk
    quiet = await backend.create(SandboxSpec(secrets={"API_KEY": "k"}, idle_timeout_s=600, tags={"role": "a"}))
    served = await backend.create(SandboxSpec(ports=(18999,)))
    installer = await backend.create(SandboxSpec(network=NetworkPolicy.INSTALL))
    await quiet.write_file("a/b.txt", "x", mode=0o600)
    assert await quiet.read_file("a/b.txt") == b"x"
    assert (await quiet.exec("cat", env={"A": "1"}, stdin="in", timeout=30)).stdout == "in"
    assert [c.exit_code async for c in quiet.exec_stream(["true"])] == [0]
    await quiet.remove("a", recursive=True)
    restored = await backend.restore(await quiet.snapshot())
    assert (await served.expose(18999)).startswith("http://127.0.0.1:")  # its tunnel, to its own network
    await quiet.keepalive()
    assert {s.id for s in await backend.list({"role": "a"})} == {quiet.id, restored.id}  # same spec, same tags
    assert (await backend.from_id(quiet.id)).id == quiet.id
    for sandbox in (quiet, served, installer, restored):
        await sandbox.terminate()
    settings = backend.settings.model_copy(update={"kriptik_home": tmp_path / "home"})
    await deploy(backend.config, sdk=sdk, settings=settings, report=lambda line: None)  # Image.build
    assert isinstance(sdk, fake_modal.FakeModal)
    return sdk


async def test_every_call_the_backend_makes_binds_to_the_sdk_signature(tmp_path: Path) -> None:
    sdk = await _run_a_build(tmp_path)
    real_by_name = {getattr(fake_cls, "_sdk_name", None): real_cls for fake_cls, real_cls in IMITATIONS.items()}
    refused = []
    for call in sdk.calls:
        owner, _, method = call.name.partition(".")
        real_fn = _real_function(real_by_name[owner], method)
        signature = inspect.signature(real_fn).replace(parameters=_params(real_fn))
        try:
            signature.bind(*call.args, **call.kwargs)
        except TypeError as exc:
            refused.append(f"{call.name}(args={call.args}, kwargs={sorted(call.kwargs)}): {exc}")
    assert refused == []
    # The build reached every call the fake imitates, and every branch of the create keywords.
    every_call = {m.name for c in IMITATIONS for _, m in _members(c) if isinstance(m, fake_modal.sdk_call)}
    assert {call.name for call in sdk.calls} == every_call
    created_with = set().union(*(call.kwargs for call in sdk.calls if call.name == "Sandbox.create"))
    branches = {"secrets", "idle_timeout", "block_network", "outbound_cidr_allowlist", "outbound_domain_allowlist"}
    assert branches | {"client", "timeout", "encrypted_ports"} <= created_with
    assert {"client", "environment_name", "create_if_missing"} <= set(sdk.calls_of("App.lookup")[0])


async def test_the_call_log_shows_what_a_build_asked_of_modal(tmp_path: Path) -> None:
    sdk = await _run_a_build(tmp_path)
    creates = sdk.calls_of("Sandbox.create")
    quiet, served, installer, restored = creates[:4]
    assert quiet["timeout"] == 3600 and quiet["idle_timeout"] == 600 and quiet["block_network"] is True
    assert served["encrypted_ports"] == [18999] and served["outbound_cidr_allowlist"] == []
    assert not served["block_network"]
    snapshot = sdk.calls_of("Image.from_id")[0]["image_id"]
    assert snapshot.startswith("im-") and restored["image"].object_id == snapshot
    assert sdk.calls_of("Sandbox.list")[0]["tags"] == {"role": "a"}
    assert sdk.calls_of("Sandbox.from_id")[0]["sandbox_id"] in sdk.sandboxes
    assert sdk.calls_of("Sandbox.tunnels") and sdk.calls_of("Sandbox.snapshot_filesystem")
    assert all(call["tags"]["kriptik_state"] == "terminated" for call in sdk.calls_of("Sandbox.set_tags"))
    assert len(sdk.calls_of("Sandbox.terminate")) >= 4
    assert installer["outbound_domain_allowlist"] and "registry.npmjs.org" in installer["outbound_domain_allowlist"]
