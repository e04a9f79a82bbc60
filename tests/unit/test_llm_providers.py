"""The anthropic and openai providers: real SDK clients, real HTTP, against local fakes of both APIs.

One FastAPI app fakes Anthropic's ``/v1/messages`` and OpenAI's ``/v1/chat/completions``; each
test scripts the responses it wants (status, headers, body, delay) and reads back what the SDK
sent. Retry sleeps are injected, so no test waits for a backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from sandbox_agents.errors import LLMConfigError, LLMError, LLMRateLimitError, LLMServerError, LLMTimeoutError
from sandbox_agents.llm.base import LLMProvider, LLMRequest, Message, ToolCall, ToolResult, ToolSpec, TurnKey
from sandbox_agents.llm.config import AnthropicConfig, OpenAIConfig
from sandbox_agents.llm.factory import make_provider
from sandbox_agents.llm.replay_server import serve_in_thread
from sandbox_agents.llm.retry import RetryPolicy, parse_retry_after

pytestmark = pytest.mark.timeout(30)


@dataclass
class Step:
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class FakeAPI:
    """Scripted responses and a log of the requests received, shared by both fake endpoints."""

    def __init__(self) -> None:
        self.script: list[Step] = []
        self.requests: list[dict[str, Any]] = []

    def app(self) -> FastAPI:
        app = FastAPI()

        async def handle(request: Request) -> JSONResponse:
            self.requests.append(
                {"path": request.url.path, "headers": dict(request.headers), "json": await request.json()}
            )
            step = self.script.pop(0) if self.script else Step(500, {"error": {"message": "unscripted"}})
            if step.delay_s:
                await asyncio.sleep(step.delay_s)
            return JSONResponse(step.body, status_code=step.status, headers=step.headers)

        app.post("/v1/messages")(handle)
        app.post("/v1/chat/completions")(handle)
        return app


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[FakeAPI, str]]:
    fake = FakeAPI()
    with serve_in_thread(fake.app()) as url:
        yield fake, url


@pytest.fixture
def fake(fake_server: tuple[FakeAPI, str]) -> FakeAPI:
    api = fake_server[0]
    api.script.clear()
    api.requests.clear()
    return api


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


# --- what each API looks like ------------------------------------------------------------


def anthropic_ok() -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [
            {"type": "text", "text": "Writing it."},
            {"type": "tool_use", "id": "toolu_1", "name": "write_file", "input": {"path": "a.py", "content": "x"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 1000, "output_tokens": 500},
    }


def openai_ok() -> dict[str, Any]:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "write_file", "arguments": '{"path": "a.py", "content": "x"}'},
    }
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-test",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": "Writing it.", "tool_calls": [call]},
            }
        ],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
    }


def error_body(kind: str, status: int) -> dict[str, Any]:
    if kind == "anthropic":
        return {"type": "error", "error": {"type": "api_error", "message": f"fake {status}"}}
    return {"error": {"message": f"fake {status}", "type": "server_error", "param": None, "code": None}}


def ok_body(kind: str) -> dict[str, Any]:
    return anthropic_ok() if kind == "anthropic" else openai_ok()


def provider(kind: str, url: str, sleeps: Sleeps, **cfg: Any) -> LLMProvider:
    cfg.setdefault("max_retries", 3)
    if kind == "anthropic":
        from sandbox_agents.llm.anthropic_provider import AnthropicProvider

        config = AnthropicConfig(model="claude-test", api_key=SecretStr("sk-test"), base_url=url, **cfg)
        return AnthropicProvider(config, sleep=sleeps, rng=lambda: 0.0)
    from sandbox_agents.llm.openai_provider import OpenAIProvider

    oconfig = OpenAIConfig(model="gpt-test", api_key=SecretStr("sk-test"), base_url=f"{url}/v1", **cfg)
    return OpenAIProvider(oconfig, sleep=sleeps, rng=lambda: 0.0)


def tool_request() -> LLMRequest:
    """A conversation that exercises every conversion: system, user, assistant calls, tool results."""
    return LLMRequest(
        key=TurnKey(role="agent:backend:0", task="t1", turn=1),
        system="You build apps.",
        messages=[
            Message(role="user", content="Make a.py"),
            Message(
                role="assistant",
                content="Reading.",
                tool_calls=[ToolCall(id="c0", name="read_file", arguments={"path": "a.py"})],
            ),
            Message(role="tool", tool_results=[ToolResult(call_id="c0", content="no such file", is_error=True)]),
        ],
        tools=[
            ToolSpec(
                name="write_file",
                description="Write a file",
                parameters={"type": "object", "properties": {"path": {"type": "string"}}},
            )
        ],
        max_tokens=256,
        temperature=0.2,
    )


KINDS = ["anthropic", "openai"]


# --- conversions and usage ---------------------------------------------------------------


async def test_anthropic_tool_use_round_trip(fake: FakeAPI, fake_server: tuple[FakeAPI, str]) -> None:
    fake.script.append(Step(body=anthropic_ok()))
    p = provider("anthropic", fake_server[1], Sleeps())
    turn = await p.complete(tool_request())
    await p.aclose()

    sent = fake.requests[0]
    assert sent["path"] == "/v1/messages"
    # This SDK sends the key as a bearer token; older ones used x-api-key.
    assert "sk-test" in (sent["headers"].get("x-api-key", ""), sent["headers"].get("authorization", "")[7:])
    body = sent["json"]
    assert body["temperature"] == 0.2
    assert body["system"] == "You build apps." and body["model"] == "claude-test" and body["max_tokens"] == 256
    assert body["tools"] == [
        {"name": "write_file", "description": "Write a file", "input_schema": tool_request().tools[0].parameters}
    ]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][1] == {
        "type": "tool_use",
        "id": "c0",
        "name": "read_file",
        "input": {"path": "a.py"},
    }
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c0", "content": "no such file", "is_error": True}
    ]

    assert turn.text == "Writing it."
    assert turn.tool_calls == [ToolCall(id="toolu_1", name="write_file", arguments={"path": "a.py", "content": "x"})]
    assert turn.stop_reason == "tool_use" and turn.model == "claude-test"
    assert (turn.usage.input_tokens, turn.usage.output_tokens) == (1000, 500)
    assert turn.usage.cost_usd == pytest.approx(1000 * 3 / 1e6 + 500 * 15 / 1e6)


async def test_openai_tool_use_round_trip(fake: FakeAPI, fake_server: tuple[FakeAPI, str]) -> None:
    fake.script.append(Step(body=openai_ok()))
    p = provider("openai", fake_server[1], Sleeps(), input_usd_per_mtok=1.0, output_usd_per_mtok=4.0)
    turn = await p.complete(tool_request())
    await p.aclose()

    sent = fake.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["authorization"] == "Bearer sk-test"
    assert sent["headers"]["x-kriptik-role"] == "agent%3Abackend%3A0"
    assert (sent["headers"]["x-kriptik-task"], sent["headers"]["x-kriptik-turn"]) == ("t1", "1")
    body = sent["json"]
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 256  # a compatible server (custom base_url) gets the classic field
    assert body["tools"][0] == {"type": "function", "function": tool_request().tools[0].model_dump()}
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool"]
    assert msgs[2]["tool_calls"] == [
        {"id": "c0", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}
    ]
    assert msgs[3] == {"role": "tool", "tool_call_id": "c0", "content": "ERROR: no such file"}

    assert turn.text == "Writing it."
    assert turn.tool_calls == [ToolCall(id="call_1", name="write_file", arguments={"path": "a.py", "content": "x"})]
    assert turn.stop_reason == "tool_use" and turn.model == "gpt-test"
    assert turn.usage.total_tokens == 1500
    assert turn.usage.cost_usd == pytest.approx(1000 * 1 / 1e6 + 500 * 4 / 1e6)


async def test_openai_invalid_tool_arguments_are_kept_not_fatal(
    fake: FakeAPI, fake_server: tuple[FakeAPI, str]
) -> None:
    body = openai_ok()
    body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = "{not json"
    body["choices"][0]["finish_reason"] = "stop"
    fake.script.append(Step(body=body))
    p = provider("openai", fake_server[1], Sleeps())
    turn = await p.complete(tool_request())
    await p.aclose()
    assert turn.tool_calls[0].arguments == {"_invalid_json": "{not json"}
    assert turn.stop_reason == "tool_use"


# --- retries and error translation -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_429_honours_retry_after_then_succeeds(
    kind: str, fake: FakeAPI, fake_server: tuple[FakeAPI, str]
) -> None:
    fake.script += [Step(429, error_body(kind, 429), {"retry-after": "7"}), Step(body=ok_body(kind))]
    sleeps = Sleeps()
    p = provider(kind, fake_server[1], sleeps)
    turn = await p.complete(tool_request())
    await p.aclose()
    assert turn.tool_calls and sleeps == [7.0]
    assert len(fake.requests) == 2  # the SDK itself did not retry


@pytest.mark.parametrize("kind", KINDS)
async def test_429_forever_is_rate_limit_error(kind: str, fake: FakeAPI, fake_server: tuple[FakeAPI, str]) -> None:
    fake.script += [Step(429, error_body(kind, 429)) for _ in range(2)]
    p = provider(kind, fake_server[1], Sleeps(), max_retries=1)
    with pytest.raises(LLMRateLimitError) as info:
        await p.complete(tool_request())
    await p.aclose()
    assert info.value.provider == kind and "fake 429" in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
async def test_500s_exhaust_retries_with_backoff(kind: str, fake: FakeAPI, fake_server: tuple[FakeAPI, str]) -> None:
    fake.script += [Step(500, error_body(kind, 500)) for _ in range(3)]
    sleeps = Sleeps()
    p = provider(kind, fake_server[1], sleeps, max_retries=2, backoff_base_s=0.5)
    with pytest.raises(LLMServerError) as info:
        await p.complete(tool_request())
    await p.aclose()
    assert sleeps == [0.5, 1.0]  # exponential, jitter drawn as 0
    assert len(fake.requests) == 3
    assert "gave up after 3 attempts" in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
async def test_timeout_is_llm_timeout_error(kind: str, fake: FakeAPI, fake_server: tuple[FakeAPI, str]) -> None:
    fake.script += [Step(body=ok_body(kind), delay_s=1.0) for _ in range(2)]
    sleeps = Sleeps()
    p = provider(kind, fake_server[1], sleeps, max_retries=1, timeout_s=0.2)
    with pytest.raises(LLMTimeoutError) as info:
        await p.complete(tool_request())
    await p.aclose()
    assert isinstance(info.value, TimeoutError) and len(sleeps) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_is_config_error_without_retry(
    kind: str, status: int, fake: FakeAPI, fake_server: tuple[FakeAPI, str]
) -> None:
    fake.script.append(Step(status, error_body(kind, status)))
    sleeps = Sleeps()
    p = provider(kind, fake_server[1], sleeps)
    with pytest.raises(LLMConfigError, match="API key"):
        await p.complete(tool_request())
    await p.aclose()
    assert sleeps == [] and len(fake.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_bad_request_is_not_retried(kind: str, fake: FakeAPI, fake_server: tuple[FakeAPI, str]) -> None:
    fake.script.append(Step(400, error_body(kind, 400)))
    p = provider(kind, fake_server[1], Sleeps())
    with pytest.raises(LLMError) as info:
        await p.complete(tool_request())
    await p.aclose()
    assert type(info.value) is LLMError and len(fake.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_connection_refused_is_server_error(kind: str) -> None:
    from sandbox_agents.llm.replay_server import serve_in_thread as _serve

    with _serve(FastAPI()) as url:  # a port that was just free, and is closed again below
        pass
    sleeps = Sleeps()
    p = provider(kind, url, sleeps, max_retries=1)
    with pytest.raises(LLMServerError, match="cannot connect"):
        await p.complete(tool_request())
    await p.aclose()
    assert len(sleeps) == 1


@pytest.mark.parametrize(("kind", "env"), [("anthropic", "ANTHROPIC_API_KEY"), ("openai", "OPENAI_API_KEY")])
def test_missing_key_names_the_variable(kind: str, env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    config = AnthropicConfig() if kind == "anthropic" else OpenAIConfig()
    with pytest.raises(LLMConfigError, match=env):
        make_provider(config)


def test_key_and_base_url_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    config = OpenAIConfig()
    assert config.resolved_api_key() == "sk-env" and not config.is_official()
    monkeypatch.delenv("OPENAI_API_KEY")
    assert config.resolved_api_key() == "not-needed"  # a local compatible server needs no key
    assert "sk-secret" not in repr(AnthropicConfig(api_key=SecretStr("sk-secret")))


def test_retry_after_parsing() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(base_delay_s=1, max_delay_s=5, jitter=0.5)
    assert [policy.backoff(r, lambda: 0.0) for r in range(5)] == [1, 2, 4, 5, 5]
    assert policy.backoff(1, lambda: 1.0) == 1.0
