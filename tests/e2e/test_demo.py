"""``kriptik demo`` as a user runs it: a real subprocess that starts its own Ray, Redis and sandboxes.

One run per backend (hello-calc, the small example) to keep CI time down; the todo-fullstack
build is covered by tests/e2e/test_examples.py and, on Modal, by tests/e2e/test_modal_build.py.
The demo owns and tears down everything it starts, so the tests check what it prints: one JSON
object as the last line, status ``completed``; on Modal also what the SDK fake recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import WORKER_ENV
from tests.fakes.fake_modal import FakeModal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DEMO = [sys.executable, "-c", "from serve.cli import app; app(prog_name='kriptik')", "demo", "--json"]

#: A ``modal`` package that is the SDK fake: the demo's processes import it in place of the real SDK.
FAKE_SDK = """\
import sys

from tests.fakes import modal_sdk
from tests.fakes.fake_modal import exception

sys.modules[__name__ + ".exception"] = exception
__getattr__ = modal_sdk.__getattr__
"""


def demo_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would join the demo to the test's Ray, Redis or home."""
    env = {k: v for k, v in os.environ.items() if k not in ("KRIPTIK_HOME", "REDIS_URL", "RAY_ADDRESS")}
    return {**env, **extra}


def test_kriptik_demo_json_builds_hello_calc_to_completed() -> None:
    command = [*DEMO, "--example", "hello-calc"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=280, env=demo_env(), check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, f"no output; exit {done.returncode}; stderr tail:\n{done.stderr[-3000:]}"
    result = json.loads(lines[-1])
    assert result["status"] == "completed", f"{result.get('error')}\n{done.stderr[-4000:]}"
    assert done.returncode == 0
    assert result["example"] == "hello-calc" and result["components"] == {"calc": "merged"}
    assert len(result["main_commit"]) == 40 and result["events"] > 10
    assert result["preview_url"] is None  # a CLI app serves nothing: no preview sandbox
    assert result["wall_s"] > 0  # reported; how long it may take is the timeout's business, not an assertion's


@dataclass
class FakeModalDemo:
    """How to run a demo on the Modal SDK fake: its environment, and the home whose fake it records in."""

    env: dict[str, str]
    home: Path


@pytest.fixture
def modal_fake_as_sdk(tmp_path: Path) -> Iterator[FakeModalDemo]:
    """A demo whose every process imports the Modal SDK fake as ``modal``.

    A ``modal`` package that re-exports the fake (:data:`FAKE_SDK`) goes first on PYTHONPATH, the
    repo root after it (for ``tests.fakes``); the demo's Ray workers inherit both. They get fake
    credentials, and the real SDK's server URL points at a closed loopback port, as the test cluster's
    workers do (tests/conftest.py): nothing could reach Modal. The fake's records live under the
    demo's home, which the demo keeps when it is given one (``--home``; it sets ``KRIPTIK_HOME`` to it
    and ignores the variable otherwise); every fake sandbox still running is ended after the test.
    """
    package = tmp_path / "sdk" / "modal"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_SDK)
    home = (tmp_path / "home").resolve()
    path = os.pathsep.join((str(package.parent), WORKER_ENV["PYTHONPATH"]))  # the fake's `modal`, then the repo
    try:
        yield FakeModalDemo(demo_env(**{**WORKER_ENV, "PYTHONPATH": path, "KRIPTIK_BACKEND": "modal"}), home)
    finally:
        FakeModal(home).end_all()


def test_kriptik_demo_with_kriptik_backend_modal_builds_hello_calc_on_the_modal_sdk(
    modal_fake_as_sdk: FakeModalDemo,
) -> None:
    """``KRIPTIK_BACKEND=modal`` is the server's backend in the demo too: the build's sandboxes are
    created through the SDK (here the fake in its place), and the demo's teardown ends every one of
    them."""
    home = modal_fake_as_sdk.home
    command = [*DEMO, "--example", "hello-calc", "--home", str(home)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=280, env=modal_fake_as_sdk.env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, f"no output; exit {done.returncode}; stderr tail:\n{done.stderr[-3000:]}"
    result = json.loads(lines[-1])
    assert result["status"] == "completed", f"{result.get('error')}\n{done.stderr[-4000:]}"
    assert done.returncode == 0 and result["components"] == {"calc": "merged"}

    fake = FakeModal(home)
    created = [c.arguments["tags"] for c in fake.shared_calls("Sandbox.create")]
    mine = sorted(t.get("role") or f"slot:{t['slot']}" for t in created if t.get("build") == result["build_id"])
    assert mine == ["main-test", "slot:calc"], created
    assert [i for i, s in fake.sandboxes.items() if s.returncode is None] == []
