"""Intent Lock: the planner turn (text, tool call, repair), the lock and drift, satisfaction with fakes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import yaml

from coordinator.contracts import ContractInvalidError, IntentContract, parse_contract
from coordinator.intent import (
    ContractDriftError,
    LockedContract,
    SandboxCriterionRunner,
    check_satisfaction,
    lock,
    plan_contract,
    verify_lock,
)
from sandbox_agents.backends.base import ExecResult, SandboxSpec
from sandbox_agents.backends.fake import FakeBackend
from sandbox_agents.errors import ContractError, SandboxTimeoutError
from sandbox_agents.llm.base import AssistantTurn, LLMRequest
from sandbox_agents.llm.cassette import Cassette
from sandbox_agents.llm.replay import ReplayProvider

CONTRACT: dict[str, Any] = {
    "name": "calc",
    "summary": "A calculator.",
    "components": [
        {
            "name": "api",
            "kind": "backend",
            "description": "calc API",
            "dev_server": {"command": "python3 api.py", "port": 8000},
            "tasks": [{"id": "calc", "title": "write calc.py"}],
        }
    ],
    "success_criteria": [
        {"id": "tests", "type": "command", "command": "python3 -m unittest", "component": "api"},
        {
            "id": "add",
            "type": "http",
            "method": "POST",
            "path": "/add",
            "request_body": {"a": 1, "b": 2},
            "expected_status": 200,
            "body_contains": "3",
            "component": "api",
        },
        {"id": "route", "type": "route", "path": "/health", "component": "api"},
        {"id": "ui", "type": "ui", "path": "/", "selector": "h1", "text": "Calc", "component": "api"},
        {"id": "file", "type": "file", "path": "calc.py"},
    ],
}


class Recording:
    """A provider that remembers every request it forwards."""

    name = "recording"

    def __init__(self, inner: ReplayProvider) -> None:
        self.inner = inner
        self.requests: list[LLMRequest] = []

    async def complete(self, request: LLMRequest) -> AssistantTurn:
        self.requests.append(request)
        return await self.inner.complete(request)

    async def aclose(self) -> None: ...


def provider(*turns: dict[str, Any]) -> Recording:
    entries = [{"role": "planner", "task": "intent", "turn": n, **t} for n, t in enumerate(turns)]
    return Recording(ReplayProvider.from_cassette(Cassette.loads(yaml.safe_dump({"version": 1, "turns": entries}))))


def fenced(data: dict[str, Any]) -> str:
    return "Here is the contract:\n```yaml\n" + yaml.safe_dump(data) + "```\n"


# --- the planner turn ------------------------------------------------------------------------


async def test_planner_text_yaml_answer() -> None:
    llm = provider({"text": fenced(CONTRACT)})
    contract = await plan_contract("a calculator", llm)
    assert contract.name == "calc"
    assert [r.key.turn for r in llm.requests] == [0]
    assert llm.requests[0].key.role == "planner" and llm.requests[0].key.task == "intent"
    assert llm.requests[0].tools[0].name == "submit_contract"


async def test_planner_plain_json_text_answer() -> None:
    contract = await plan_contract("a calculator", provider({"text": json.dumps(CONTRACT)}))
    assert contract.components[0].name == "api"


async def test_planner_tool_call_answer() -> None:
    llm = provider({"tool_calls": [{"name": "submit_contract", "arguments": CONTRACT}]})
    assert (await plan_contract("a calculator", llm)).name == "calc"
    wrapped = provider({"tool_calls": [{"name": "submit_contract", "arguments": {"contract": CONTRACT}}]})
    assert (await plan_contract("a calculator", wrapped)).name == "calc"


async def test_planner_invalid_then_fixed_shows_the_error() -> None:
    broken = {**CONTRACT, "components": [{**CONTRACT["components"][0], "depends_on": ["ghost"]}]}
    llm = provider(
        {"tool_calls": [{"name": "submit_contract", "arguments": broken}]},
        {"tool_calls": [{"name": "submit_contract", "arguments": CONTRACT}]},
    )
    contract = await plan_contract("a calculator", llm)
    assert contract.name == "calc"
    assert [r.key.turn for r in llm.requests] == [0, 1]
    repair = llm.requests[1].messages
    assert [m.role for m in repair] == ["user", "assistant", "tool"]
    assert repair[2].tool_results[0].is_error
    assert "unknown component 'ghost'" in repair[2].tool_results[0].content


async def test_planner_invalid_text_then_fixed_uses_a_user_message() -> None:
    llm = provider({"text": "I think you want a calculator."}, {"text": fenced(CONTRACT)})
    assert (await plan_contract("a calculator", llm)).name == "calc"
    assert [m.role for m in llm.requests[1].messages] == ["user", "assistant", "user"]


async def test_planner_invalid_twice_is_a_contract_error() -> None:
    bad = {**CONTRACT, "success_criteria": []}
    llm = provider({"text": fenced(bad)}, {"text": fenced(bad)})
    with pytest.raises(ContractError) as info:
        await plan_contract("a calculator", llm)
    assert isinstance(info.value, ContractInvalidError) and info.value.problems
    assert len(llm.requests) == 2


# --- the lock ---------------------------------------------------------------------------------


def contract() -> IntentContract:
    return parse_contract(CONTRACT)


def test_lock_hash_is_stable_across_key_order_and_reloads() -> None:
    reordered = dict(reversed(list(CONTRACT.items())))
    a, b = lock(contract(), clock=lambda: 1.0), lock(parse_contract(reordered), clock=lambda: 2.0)
    assert a.sha256 == b.sha256 and a.canonical == b.canonical
    again = LockedContract.model_validate_json(a.model_dump_json())
    verify_lock(again)
    assert again.sha256 == a.sha256


def test_drift_names_the_changed_fields() -> None:
    locked = lock(contract())
    changed = {
        **CONTRACT,
        "summary": "A different app.",
        "components": [{**CONTRACT["components"][0], "description": "x"}],
    }
    with pytest.raises(ContractDriftError) as info:
        verify_lock(locked, parse_contract(changed))
    assert info.value.fields == ["components[api].description", "summary"]
    assert isinstance(info.value, ContractError)


def test_tampered_lock_is_drift() -> None:
    locked = lock(contract())
    tampered = locked.model_copy(update={"contract": parse_contract({**CONTRACT, "constraints": ["no js"]})})
    with pytest.raises(ContractDriftError, match="constraints"):
        verify_lock(tampered)


# --- satisfaction -------------------------------------------------------------------------------


class FakeRunner:
    def __init__(self, *, files: set[str], status: dict[str, tuple[int, str]], exit_code: int = 0) -> None:
        self.files = files
        self.status = status
        self.exit_code = exit_code
        self.calls: list[tuple[Any, ...]] = []

    async def run_command(self, component: str | None, command: Any, *, timeout_s: float | None = None):
        self.calls.append(("cmd", component, command))
        return self.exit_code, "Ran 3 tests\nOK"

    async def http(self, path: str, method: str, *, body: Any = None, component: str | None = None):
        self.calls.append(("http", method, path, body))
        return self.status.get(path, (404, "not found"))

    async def ui(
        self, path: str, selector: str | None, text: str | None, *, steps: Any = (), component: str | None = None
    ):
        return True, []

    async def file_exists(self, path: str) -> bool:
        return path in self.files


async def test_all_criteria_pass_means_done() -> None:
    runner = FakeRunner(files={"calc.py"}, status={"/add": (200, '{"sum": 3}'), "/health": (200, "ok")})
    report = await check_satisfaction(lock(contract()), runner)
    assert report.done and not report.failed
    assert [r.id for r in report.results] == ["tests", "add", "route", "ui", "file"]
    assert ("http", "POST", "/add", {"a": 1, "b": 2}) in runner.calls
    event = report.to_event()
    assert event.kind == "intent.satisfaction" and event.data["passed"] == 5 and event.data["done"]


async def test_one_failure_is_reported_with_evidence() -> None:
    runner = FakeRunner(files={"calc.py"}, status={"/add": (200, '{"sum": 4}'), "/health": (500, "boom")})
    report = await check_satisfaction(lock(contract()), runner)
    assert not report.done
    assert [r.id for r in report.failed] == ["add"]  # a 500 still proves the route exists
    assert "POST /add -> 200" in report.failed[0].evidence and "'3'" in report.failed[0].evidence


async def test_runner_errors_fail_only_their_criterion() -> None:
    class Broken(FakeRunner):
        async def ui(self, *args: Any, **kwargs: Any):
            raise RuntimeError("browser crashed")

    runner = Broken(files=set(), status={"/add": (200, "3"), "/health": (404, "")}, exit_code=1)
    report = await check_satisfaction(lock(contract()), runner)
    failed = {r.id: r.evidence for r in report.failed}
    assert set(failed) == {"tests", "route", "ui", "file"}
    assert "browser crashed" in failed["ui"] and "exit code 1 (expected 0)" in failed["tests"]


async def test_satisfaction_refuses_a_drifted_contract() -> None:
    locked = lock(contract())
    drifted = locked.model_copy(update={"contract": parse_contract({**CONTRACT, "name": "other"})})
    with pytest.raises(ContractDriftError):
        await check_satisfaction(drifted, FakeRunner(files=set(), status={}))


async def test_sandbox_runner_over_fake_sandbox_and_mock_http() -> None:
    backend = FakeBackend()
    backend.script("/bin/sh", lambda sb, req: ExecResult(exit_code=0, stdout="OK\n"))
    sandbox = await backend.create(SandboxSpec())
    await sandbox.write_file("calc.py", "x = 1\n")

    def app(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/add" and request.method == "POST":
            return httpx.Response(200, json={"sum": json.loads(request.content)["a"] + 2})
        return httpx.Response(200 if request.url.path == "/health" else 404)

    seen: list[str] = []

    async def ui_checker(
        url: str, selector: str | None, text: str | None, *, steps: Any = ()
    ) -> tuple[bool, list[str]]:
        seen.append(url)
        return True, []

    async with httpx.AsyncClient(transport=httpx.MockTransport(app)) as client:
        runner = SandboxCriterionRunner(sandbox, {"api": "http://api.test/"}, ui_checker, client=client)
        report = await check_satisfaction(lock(contract()), runner)
    assert report.done, report.failed
    assert seen == ["http://api.test/"]
    assert await runner.file_exists("./calc.py") and not await runner.file_exists("nope.py")


async def test_sandbox_runner_without_ui_checker_or_server_fails_with_reason() -> None:
    backend = FakeBackend()

    async def slow(sb: Any, req: Any) -> ExecResult:
        raise SandboxTimeoutError("slow", timeout_s=1.0, stdout="partial")

    backend.script("/bin/sh", slow)
    sandbox = await backend.create(SandboxSpec())

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        runner = SandboxCriterionRunner(sandbox, "http://app.test", client=client)
        code, output = await runner.run_command(None, "python3 -m unittest", timeout_s=1.0)
        assert code == 124 and "timed out" in output
        with pytest.raises(ValueError, match="no UI checker"):
            await runner.ui("/", "h1", None)
        status, body = await runner.http("/", "GET")
    assert status == 0 and "request failed" in body
