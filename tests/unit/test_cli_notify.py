"""``kriptik notify set|show|clear`` and ``kriptik build --notify``: what the CLI sends and shows.

The API side is a small HTTP server on 127.0.0.1 that records each request and answers as the real
API does (its routes are tested in tests/unit/test_api.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from serve.cli import app
from tests.fakes.cli_api import JsonApi, serving

HOOK = "https://hooks.example.com/kriptik"


class _Api(JsonApi):
    requests: list[tuple[str, str, Any]]
    view: dict[str, Any]

    def _record(self) -> Any:
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.loads(raw) if raw else None
        self.requests.append((self.command, self.path, body))
        return body

    def do_PUT(self) -> None:  # noqa: N802 - http.server's name
        body = self._record()
        if body["url"].startswith("http://127."):
            self.answer(422, {"error": "invalid_input", "field": "url", "message": "webhook destination is loopback"})
            return
        self.view.update(url=body["url"], events=body.get("events", ["completed"]), secret_set="secret" in body)
        self.answer(200, self.view)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._record()
        self.answer(200, self.view)

    def do_DELETE(self) -> None:  # noqa: N802 - http.server's name
        self._record()
        self.view.update(url=None, events=[], secret_set=False)
        self.answer(200, self.view)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self._record()
        self.answer(202, {"id": "b1", "status_url": "/api/build/status/b1", "stream_url": "/api/build/stream/b1"})


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Api]]:
    handler = type("Api", (_Api,), {"requests": [], "view": {"url": None, "events": [], "secret_set": False}})
    monkeypatch.delenv("KRIPTIK_NOTIFY_SECRET", raising=False)
    with serving(handler, monkeypatch):
        yield handler


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def test_notify_set_show_and_clear_go_through_the_api_and_never_print_the_secret(api: type[_Api]) -> None:
    result = run(
        "notify", "set", HOOK, "--event", "failed", "--event", "blocked", env={"KRIPTIK_NOTIFY_SECRET": "whsec-cli-9f2"}
    )
    assert result.exit_code == 0, result.output
    assert api.requests[-1] == (
        "PUT",
        "/api/notify",
        {"url": HOOK, "secret": "whsec-cli-9f2", "events": ["failed", "blocked"]},
    )
    assert HOOK in result.output and "signed" in result.output and "whsec-cli-9f2" not in result.output
    shown = run("notify", "show")
    assert shown.exit_code == 0 and api.requests[-1][:2] == ("GET", "/api/notify") and "failed, blocked" in shown.output
    cleared = run("notify", "clear")
    assert cleared.exit_code == 0 and api.requests[-1][:2] == ("DELETE", "/api/notify")
    assert "no notification defaults" in run("notify", "show").output


def test_a_refused_webhook_exits_2_with_the_apis_reason(api: type[_Api]) -> None:
    result = run("notify", "set", "http://127.0.0.1:9000/hook")
    assert result.exit_code == 2 and "loopback" in result.output


def test_build_notify_sets_the_builds_own_webhook(api: type[_Api]) -> None:
    result = run("build", "--example", "hello-calc", "--detach", "--notify", HOOK, "--notify-event", "completed")
    assert result.exit_code == 0, result.output
    method, path, body = api.requests[-1]
    assert (method, path) == ("POST", "/api/builds") and body["notify"] == {"url": HOOK, "events": ["completed"]}
    plain = run("build", "--example", "hello-calc", "--detach")
    assert plain.exit_code == 0 and "notify" not in api.requests[-1][2]
