"""``kriptik build|logs|preview`` tell the truth: exit codes, mistyped paths, invalid contracts, why a build failed.

Exit codes: 0 completed, 1 failed (or cancelled, paused), 2 bad input, 3 the system is not up. The
API side is a small HTTP server on 127.0.0.1 answering what the real one answers for a build that
failed (the CLI is what is under test; the real API's answers are tested in tests/integration).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coordinator.resources import examples_dir
from serve.cli import app
from tests.fakes.cli_api import JsonApi, serving

FAILED_WHY = "task api-tests blocked: no recorded turn for role='agent:api:0', task='api-tests', turn=0"


#: A released slot of a completed build: its last sandbox, the agents that worked in it, its score.
FLEET = [
    {"slot": "api", "component": "api", "sandbox_id": None, "last_sandbox_id": "sbx-1", "status": "merged",
     "agents": ["build:b1:agent:api:0", "build:b1:agent:api:1"], "swarm_score": 0.875},
]  # fmt: skip


class _FakeApi(JsonApi):
    status = "failed"
    phase = "build"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/api/builds":
            self.answer(201, {"id": "b1", "status": "queued"})
        else:
            self.answer(404, {"error": "not_found", "message": "build b1 not found"})

    def do_DELETE(self) -> None:  # noqa: N802 - http.server's name
        if self.path != "/api/builds/b1":
            self.answer(404, {"error": "not_found", "message": "no build"})
        elif self.status in ("completed", "failed", "cancelled"):
            self.send_response(204)
            self.end_headers()
        else:
            self.answer(409, {"error": "conflict", "message": "build b1 is running; cancel it before deleting it"})

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/api/build/stream/"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            event = {"kind": "build.phase", "data": {"phase": self.phase}}
            self.wfile.write(f"id: 1-0\nevent: event\ndata: {json.dumps(event)}\n\n".encode())
            self.wfile.write(f"id: 2-0\nevent: end\ndata: {json.dumps({'status': self.status})}\n\n".encode())
            self.wfile.flush()
        elif self.path.startswith("/api/build/status/"):
            error = None if self.status == "completed" else FAILED_WHY
            self.answer(200, {"id": "b1", "status": self.status, "phase": "build", "error": error, "components": FLEET})
        elif self.path == "/api/health":
            self.answer(200, {"status": "ok", "parts": {"redis": "ok", "control": "ok"}})
        elif self.path.startswith("/api/build/preview/"):
            self.answer(200, {"url": None, "components": {}})
        else:
            self.answer(404, {"error": "not_found", "message": f"no route {self.path}"})


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_FakeApi]]:
    with serving(type("Api", (_FakeApi,), {}), monkeypatch) as handler:
        yield handler


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_a_mistyped_contract_path_is_an_error_naming_the_file_it_meant_not_a_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRIPTIK_TOKEN", "test-token")
    monkeypatch.setenv("KRIPTIK_API_URL", "http://127.0.0.1:9")  # never reached: the CLI stops first
    (tmp_path / "notes.yaml").write_text("name: notes\n")
    result = run("build", str(tmp_path / "notes.yml"))
    assert result.exit_code == 2, result.output
    assert "no contract file" in result.output and "notes.yaml" in result.output


def test_an_invalid_contract_lists_each_field_without_a_traceback_unless_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRIPTIK_TOKEN", "test-token")
    monkeypatch.delenv("KRIPTIK_DEBUG", raising=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsummary: s\n")
    result = run("build", str(bad))
    assert result.exit_code == 2
    assert "components: Field required" in result.output and "success_criteria" in result.output
    assert "Traceback" not in result.output
    debug = run("--debug", "build", str(bad))
    assert debug.exit_code == 2 and "ContractInvalidError" in debug.output


def test_no_api_to_talk_to_exits_3(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("KRIPTIK_API_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("KRIPTIK_TOKEN", "test-token")
    for args in (("build", "a todo app"), ("status", "b1"), ("logs", "b1")):
        result = run(*args)
        assert result.exit_code == 3, (args, result.output)
        assert "kriptik up" in result.output


def test_a_failed_build_exits_1_with_its_reason_from_build_logs_and_preview(api: type[_FakeApi]) -> None:
    contract = examples_dir() / "intents" / "hello-calc.yaml"
    for args in (("build", str(contract)), ("logs", "-f", "b1")):
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert FAILED_WHY[:60] in result.output.replace("\n", "")
    preview = run("preview", "b1")
    assert preview.exit_code == 1 and "failed" in preview.output and "(not yet)" not in preview.output


def test_a_completed_build_exits_0(api: type[_FakeApi]) -> None:
    api.status = "completed"
    assert run("build", "--example", "hello-calc").exit_code == 0
    assert run("logs", "-f", "b1").exit_code == 0


def test_status_shows_each_slots_last_sandbox_agents_and_swarm_score(api: type[_FakeApi]) -> None:
    api.status = "completed"
    result = CliRunner().invoke(app, ["status", "b1"], terminal_width=200)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "│ api" in line)
    assert "sbx-1 (ended)" in row and "agent 1, agent 2" in row and "0.88" in row


def test_rm_deletes_an_ended_build_and_refuses_a_running_one(api: type[_FakeApi]) -> None:
    api.status = "running"
    refused = run("rm", "b1")
    assert refused.exit_code == 2 and "409" in refused.output and "cancel it" in refused.output
    api.status = "completed"
    deleted = run("rm", "b1")
    assert deleted.exit_code == 0 and "b1: deleted" in deleted.output
    assert run("rm", "b2").exit_code == 2


def test_logs_print_what_the_model_wrote_verbatim_never_as_markup(api: type[_FakeApi]) -> None:
    api.status, api.phase = "completed", "[/] [red]not red[/red] [link=http://x]"  # a stray [/] crashed rich
    result = run("logs", "b1")
    assert result.exit_code == 0, result.output
    assert "[/] [red]not red[/red] [link=http://x]" in result.output


def test_a_refused_request_exits_2(api: type[_FakeApi]) -> None:
    result = run("cancel", "b1")  # 404: no such build
    assert result.exit_code == 2 and "404" in result.output


def test_up_refuses_a_missing_cassette_and_exports_paths_resolved_where_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox_agents.settings import get_settings
    from serve.cli_commands import _export_resolved_paths

    monkeypatch.setenv("KRIPTIK_HOME", str(tmp_path / "home"))  # restored after the test, like the rest
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sandbox_agents.settings.get_settings", get_settings.__wrapped__)  # no cached settings
    (tmp_path / "mine.yaml").write_text("version: 1\nturns: []\n")
    monkeypatch.setenv("KRIPTIK_CASSETTES", "mine.yaml")
    assert _export_resolved_paths(tmp_path / "home") is None
    assert os.environ["KRIPTIK_CASSETTES"] == str(tmp_path / "mine.yaml")  # Ray's workers run elsewhere
    assert os.environ["KRIPTIK_HOME"] == str(tmp_path / "home")
    monkeypatch.setenv("KRIPTIK_CASSETTES", "typo.yaml")
    result = run("up")
    assert result.exit_code == 2 and "typo.yaml" in result.output and "do not exist" in result.output
