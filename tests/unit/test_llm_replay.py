"""Replay, the recorder, and the replay server (through the real openai client over real HTTP)."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from sandbox_agents.errors import CassetteMissError, LLMConfigError, LLMError
from sandbox_agents.llm.base import AssistantTurn, LLMRequest, Message, ToolCall, TurnKey, Usage
from sandbox_agents.llm.cassette import Cassette
from sandbox_agents.llm.config import OpenAIConfig, ReplayConfig
from sandbox_agents.llm.factory import make_provider, provider_from_settings
from sandbox_agents.llm.recorder import RecordingProvider
from sandbox_agents.llm.replay import ReplayProvider
from sandbox_agents.llm.replay_server import create_app, serve_in_thread

pytestmark = pytest.mark.timeout(30)

CASSETTE = """\
version: 1
turns:
  - {role: planner, task: plan, turn: 0, text: "plan: api, web"}
  - role: agent:api:0
    task: t1
    turn: 0
    text: writing
    tool_calls:
      - {name: write_file, arguments: {path: a.py, content: "x = 1"}}
    usage: {input_tokens: 100, output_tokens: 20, cost_usd: 0.01}
  - {role: agent:api:0, task: t1, turn: 1, text: done}
  - {role: agent:api:0, task: t1, turn: 3, text: late}
  - {role: agent:web:0, task: t2, turn: 0, text: web done}
"""


def request(role: str, task: str, turn: int) -> LLMRequest:
    return LLMRequest(key=TurnKey(role=role, task=task, turn=turn), messages=[Message(role="user", content="go")])


@pytest.fixture
def cassette_file(tmp_path: Path) -> Path:
    path = tmp_path / "build.yaml"
    path.write_text(CASSETTE)
    return path


# --- replay ------------------------------------------------------------------------------


async def test_replay_hit(cassette_file: Path) -> None:
    replay = make_provider(ReplayConfig(cassettes=[cassette_file]))
    assert replay.name == "replay"
    turn = await replay.complete(request("agent:api:0", "t1", 0))
    assert turn.text == "writing" and turn.stop_reason == "tool_use" and turn.model == "replay"
    assert turn.tool_calls == [
        ToolCall(id="agent:api:0:t1:0:0", name="write_file", arguments={"path": "a.py", "content": "x = 1"})
    ]
    assert turn.usage == Usage(input_tokens=100, output_tokens=20, cost_usd=0.01)


@pytest.mark.parametrize(
    ("key", "nearest"),
    [
        (("agent:api:0", "t1", 2), "recorded turns for this role and task: 0-1, 3"),
        (("agent:api:0", "t9", 0), "role 'agent:api:0' has turns for tasks: 't1'"),
        (("judge", "j1", 0), "it has roles: 'agent:api:0', 'agent:web:0', 'planner'"),
    ],
)
async def test_replay_miss_names_the_key_and_nearest(
    cassette_file: Path, key: tuple[str, str, int], nearest: str
) -> None:
    replay = ReplayProvider(ReplayConfig(cassettes=[cassette_file]))
    with pytest.raises(CassetteMissError) as info:
        await replay.complete(request(*key))
    err = info.value
    assert (err.role, err.task, err.turn) == key
    assert f"role={key[0]!r}, task={key[1]!r}, turn={key[2]}" in str(err)
    assert nearest in str(err) and str(cassette_file) in str(err)
    assert isinstance(err, LookupError) and isinstance(err, LLMError)


async def test_replay_is_deterministic_whatever_the_order(cassette_file: Path) -> None:
    replay = ReplayProvider(ReplayConfig(cassettes=[cassette_file]))
    keys = [k for k in replay.cassette.keys()] * 3
    expected = {k: await replay.complete(request(k.role, k.task, k.turn)) for k in keys}

    for seed in range(5):
        fresh = ReplayProvider(ReplayConfig(cassettes=[cassette_file]))  # loads lazily, under concurrency
        order = keys[:]
        random.Random(seed).shuffle(order)
        turns = await asyncio.gather(*(fresh.complete(request(k.role, k.task, k.turn)) for k in order))
        assert all(t == expected[k] for k, t in zip(order, turns, strict=True))

    threaded = ReplayProvider(ReplayConfig(cassettes=[cassette_file]))
    results: dict[int, AssistantTurn] = {}

    def ask(i: int, k: TurnKey) -> None:
        results[i] = asyncio.run(threaded.complete(request(k.role, k.task, k.turn)))

    threads = [threading.Thread(target=ask, args=(i, k)) for i, k in enumerate(keys)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert all(results[i] == expected[k] for i, k in enumerate(keys))
    assert threaded.unserved() == []


def test_replay_constructor_does_no_io(tmp_path: Path) -> None:
    ReplayProvider(ReplayConfig(cassettes=[tmp_path / "not-yet.yaml"]))  # a missing file is found on first use


def test_replay_from_settings(cassette_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox_agents.settings import get_settings

    monkeypatch.setenv("KRIPTIK_LLM", "replay")
    monkeypatch.delenv("KRIPTIK_CASSETTES", raising=False)
    get_settings.cache_clear()
    try:
        with pytest.raises(LLMConfigError, match="KRIPTIK_CASSETTES"):
            provider_from_settings()
        monkeypatch.setenv("KRIPTIK_CASSETTES", str(cassette_file))
        assert isinstance(provider_from_settings(), ReplayProvider)
    finally:
        get_settings.cache_clear()


# --- recorder ----------------------------------------------------------------------------


class ScriptedProvider:
    """A stand-in live provider: answers each key from a dict, and fails for keys it lacks."""

    name = "scripted"

    def __init__(self, answers: dict[TurnKey, AssistantTurn]) -> None:
        self.answers = answers

    async def complete(self, request: LLMRequest) -> AssistantTurn:
        if request.key not in self.answers:
            raise LLMError("live provider failed", provider=self.name)
        return self.answers[request.key]

    async def aclose(self) -> None:
        pass


async def test_recorder_writes_a_cassette_that_replays_the_same_turns(tmp_path: Path) -> None:
    answers = {
        TurnKey(role="planner", task="plan", turn=0): AssistantTurn(text="a\nmulti-line plan", model="live-1"),
        TurnKey(role="agent:api:0", task="t1", turn=0): AssistantTurn(
            text="",
            tool_calls=[ToolCall(id="toolu_9", name="exec", arguments={"cmd": "pytest -q", "env": {"A": "1"}})],
            usage=Usage(input_tokens=10, output_tokens=2, cost_usd=0.0001),
            stop_reason="tool_use",
            model="live-1",
        ),
    }
    path = tmp_path / "rec" / "run.yaml"
    recorder = RecordingProvider(ScriptedProvider(answers), path, meta={"intent": "todo app"})
    live = await asyncio.gather(*(recorder.complete(request(k.role, k.task, k.turn)) for k in answers))
    with pytest.raises(LLMError):
        await recorder.complete(request("judge", "j", 0))  # failures are not recorded
    await recorder.aclose()

    cassette = Cassette.load(path)
    assert cassette.meta["intent"] == "todo app" and cassette.meta["recorded_with"] == "scripted"
    replay = ReplayProvider.from_cassette(cassette)
    for k, turn in zip(answers, live, strict=True):
        assert await replay.complete(request(k.role, k.task, k.turn)) == turn
    with pytest.raises(CassetteMissError):
        await replay.complete(request("judge", "j", 0))

    # A restarted recorder carries on from the file instead of starting over.
    more = {TurnKey(role="planner", task="plan", turn=1): AssistantTurn(text="next")}
    again = RecordingProvider(ScriptedProvider(more), path)
    await again.complete(request("planner", "plan", 1))
    assert len(Cassette.load(path)) == 3


# --- replay server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def replay_url() -> object:
    with serve_in_thread(create_app(Cassette.loads(CASSETTE))) as url:
        yield url


def client_provider(url: str) -> object:
    from sandbox_agents.llm.openai_provider import OpenAIProvider

    return OpenAIProvider(
        OpenAIConfig(model="replay", api_key=SecretStr("unused"), base_url=f"{url}/v1", max_retries=0)
    )


async def test_openai_provider_through_replay_server(replay_url: str, cassette_file: Path) -> None:
    provider = client_provider(replay_url)
    direct = ReplayProvider(ReplayConfig(cassettes=[cassette_file]))
    for k in direct.cassette.keys():
        served = await provider.complete(request(k.role, k.task, k.turn))  # type: ignore[attr-defined]
        local = await direct.complete(request(k.role, k.task, k.turn))
        assert (served.text, served.tool_calls, served.stop_reason) == (local.text, local.tool_calls, local.stop_reason)
        assert (served.usage.input_tokens, served.usage.output_tokens) == (
            local.usage.input_tokens,
            local.usage.output_tokens,
        )
    await provider.aclose()  # type: ignore[attr-defined]


async def test_replay_server_miss_is_a_cassette_miss(replay_url: str) -> None:
    provider = client_provider(replay_url)
    with pytest.raises(CassetteMissError) as info:
        await provider.complete(request("agent:api:0", "t1", 7))  # type: ignore[attr-defined]
    await provider.aclose()  # type: ignore[attr-defined]
    assert (info.value.role, info.value.task, info.value.turn) == ("agent:api:0", "t1", 7)
    assert "turn=7" in str(info.value) and "0-1, 3" in str(info.value)


async def test_replay_server_http_shapes(replay_url: str) -> None:
    async with httpx.AsyncClient(base_url=replay_url) as http:
        models = (await http.get("/v1/models")).json()
        assert models["object"] == "list" and models["data"][0]["id"] == "replay"

        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        no_key = await http.post("/v1/chat/completions", json=body)
        assert no_key.status_code == 400 and no_key.json()["error"]["code"] == "missing_turn_key"

        headers = {"X-Kriptik-Role": "judge", "X-Kriptik-Task": "j1", "X-Kriptik-Turn": "0"}
        miss = await http.post("/v1/chat/completions", json=body, headers=headers)
        error = miss.json()["error"]
        assert miss.status_code == 404 and error["code"] == "cassette_miss" and "role='judge'" in error["message"]

        headers = {"X-Kriptik-Role": "planner", "X-Kriptik-Task": "plan", "X-Kriptik-Turn": "0"}
        hit = await http.post("/v1/chat/completions", json=body, headers=headers)
        assert hit.json()["choices"][0]["message"]["content"] == "plan: api, web"
        assert hit.json() == (await http.post("/v1/chat/completions", json=body, headers=headers)).json()


def test_replay_server_command_line(cassette_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from sandbox_agents.llm import replay_server

    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    replay_server.main([str(cassette_file), "--port", "9911", "--log-level", "warning"])
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 9911)
    assert any(getattr(r, "path", "") == "/v1/chat/completions" for r in seen["app"].routes)  # type: ignore[attr-defined]
