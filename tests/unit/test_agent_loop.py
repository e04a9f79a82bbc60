"""The agent loop with a scripted provider on the fake backend, and the prompt it builds."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from sandbox_agents.agent_loop import CONTINUE_AFTER_CUTOFF, AgentLoop, call_summary
from sandbox_agents.agent_models import STEP_DETAIL_CAP, AgentLimits, AgentStep, AgentTask, PublishedItem
from sandbox_agents.agent_prompt import build_system_prompt, render_context
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.backends.fake import FakeBackend, FakeSandbox
from sandbox_agents.errors import CassetteMissError, LLMRateLimitError
from sandbox_agents.llm.base import AssistantTurn, LLMRequest, ToolCall, TurnKey, Usage
from sandbox_agents.tools import AgentTools

ROLE = "agent:backend:0"
TASK = AgentTask(id="t-api", title="Add the API", instructions="Write app.py", check_command=["pytest", "-q"])


class ScriptedProvider:
    """Answers from a dict TurnKey → AssistantTurn (or a function of the request); records requests."""

    name = "scripted"

    def __init__(self, turns: dict[TurnKey, AssistantTurn] | Callable[[LLMRequest], AssistantTurn]) -> None:
        self.turns = turns
        self.requests: list[LLMRequest] = []

    async def complete(self, request: LLMRequest) -> AssistantTurn:
        self.requests.append(request)
        if callable(self.turns):
            return self.turns(request)
        try:
            return self.turns[request.key]
        except KeyError:
            key = request.key
            raise CassetteMissError(
                f"no recorded turn for {key.role}/{key.task}/{key.turn}", role=key.role, task=key.task, turn=key.turn
            ) from None

    async def aclose(self) -> None:
        return None


def key(turn: int) -> TurnKey:
    return TurnKey(role=ROLE, task=TASK.id, turn=turn)


def tool_turn(name: str, tokens: int = 10, **arguments: Any) -> AssistantTurn:
    return AssistantTurn(
        text=f"calling {name}",
        tool_calls=[ToolCall(id=f"call-{name}", name=name, arguments=arguments)],
        usage=Usage(input_tokens=tokens, output_tokens=tokens, cost_usd=0.01),
        stop_reason="tool_use",
    )


def final_turn(text: str = "Done: app.py written.") -> AssistantTurn:
    return AssistantTurn(text=text, usage=Usage(input_tokens=5, output_tokens=5, cost_usd=0.001))


@pytest.fixture
async def sandbox() -> FakeSandbox:
    return await FakeBackend().create(SandboxSpec())


@pytest.fixture
def published() -> list[PublishedItem]:
    return []


@pytest.fixture
def tools(sandbox: FakeSandbox, published: list[PublishedItem]) -> AgentTools:
    async def publish(item: PublishedItem) -> None:
        published.append(item)

    return AgentTools(sandbox, publish=publish)


def loop(provider: ScriptedProvider, tools: AgentTools, **kwargs: Any) -> AgentLoop:
    return AgentLoop(provider, tools, role=ROLE, **kwargs)


async def test_done_when_the_model_stops_calling_tools(tools: AgentTools, sandbox: FakeSandbox) -> None:
    provider = ScriptedProvider(
        {key(0): tool_turn("write_file", path="app.py", content="app = 1\n"), key(1): final_turn()}
    )
    outcome = await loop(provider, tools).run(TASK)
    assert outcome.status == "done" and outcome.error is None and outcome.ok
    assert outcome.turns == 2 and outcome.tool_calls == 1
    assert outcome.final_text == "Done: app.py written."
    assert outcome.changed_files == {"app.py": hashlib.sha256(b"app = 1\n").hexdigest()}
    assert (outcome.usage.input_tokens, outcome.usage.output_tokens) == (15, 15)
    assert outcome.usage.cost_usd == pytest.approx(0.011)
    assert await sandbox.read_file("app.py") == b"app = 1\n"
    first, second = provider.requests
    assert [first.key, second.key] == [key(0), key(1)]
    assert [t.name for t in first.tools] == [s.name for s in tools.specs()]
    assert "t-api" in first.system and "pytest -q" in first.system and ROLE in first.system
    assert [m.role for m in second.messages] == ["user", "assistant", "tool"]
    assert second.messages[2].tool_results[0].call_id == "call-write_file"


async def test_tool_error_is_fed_back_to_the_model(tools: AgentTools) -> None:
    provider = ScriptedProvider({key(0): tool_turn("read_file", path="nope.py"), key(1): final_turn("giving up")})
    outcome = await loop(provider, tools).run(TASK)
    assert outcome.status == "done"
    result = provider.requests[1].messages[-1].tool_results[0]
    assert result.is_error and "not found" in result.content


async def test_step_limit(tools: AgentTools) -> None:
    provider = ScriptedProvider(lambda req: tool_turn("list_files", pattern=f"step{req.key.turn}/*"))
    outcome = await loop(provider, tools, limits=AgentLimits(max_steps=3)).run(TASK)
    assert outcome.status == "step_limit" and "max_steps=3" in (outcome.error or "")
    assert outcome.turns == 3 and outcome.tool_calls == 3
    assert [r.key.turn for r in provider.requests] == [0, 1, 2]


async def test_token_budget(tools: AgentTools) -> None:
    provider = ScriptedProvider(lambda req: tool_turn("list_files", tokens=300, pattern=f"d{req.key.turn}/*"))
    outcome = await loop(provider, tools, limits=AgentLimits(max_tokens=1_000)).run(TASK)
    assert outcome.status == "token_budget"
    assert outcome.turns == 2 and outcome.usage.total_tokens == 1_200


async def test_stuck_on_the_same_call(tools: AgentTools) -> None:
    provider = ScriptedProvider(lambda req: tool_turn("exec", command=["true"]))
    outcome = await loop(provider, tools, limits=AgentLimits(stuck_repeats=3)).run(TASK)
    assert outcome.status == "stuck" and "exec called 3 times" in (outcome.error or "")
    assert outcome.turns == 3 and outcome.tool_calls == 2 and outcome.exec_count == 2


async def test_different_arguments_are_not_stuck(tools: AgentTools) -> None:
    calls = [tool_turn("exec", command=["true"]), tool_turn("exec", command=["false"])] * 2 + [final_turn()]
    provider = ScriptedProvider({key(i): turn for i, turn in enumerate(calls)})
    outcome = await loop(provider, tools, limits=AgentLimits(stuck_repeats=2)).run(TASK)
    assert outcome.status == "done" and outcome.exec_count == 4


async def test_context_is_reread_every_turn(tools: AgentTools) -> None:
    context: dict[str, Any] = {"decision:db": "use sqlite"}
    reads = 0

    async def context_source() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return dict(context)

    def answer(request: LLMRequest) -> AssistantTurn:
        if request.key.turn == 0:
            # Another sandbox publishes an error while this agent works.
            context["error:vite-port"] = {"kind": "error", "message": "port 5173 is taken", "sandbox_id": "sbx-9"}
            return tool_turn("list_files")
        return final_turn()

    provider = ScriptedProvider(answer)
    outcome = await loop(provider, tools, context_source=context_source).run(TASK)
    assert outcome.status == "done" and reads == 2
    first, second = (r.system for r in provider.requests)
    assert "use sqlite" in first and "port 5173 is taken" not in first
    assert "port 5173 is taken [from sbx-9]" in second


async def test_published_error_reaches_the_next_prompt(tools: AgentTools, published: list[PublishedItem]) -> None:
    async def context_source() -> dict[str, Any]:
        return {f"{item.kind}:{item.key}": item for item in published}

    provider = ScriptedProvider(
        {
            key(0): tool_turn("publish", kind="error", key="npm-peer", message="react 19: use --legacy-peer-deps"),
            key(1): final_turn(),
        }
    )
    outcome = await loop(provider, tools, context_source=context_source).run(TASK)
    assert outcome.status == "done"
    assert [(p.kind, p.key) for p in published] == [("error", "npm-peer")]
    assert "npm-peer: react 19: use --legacy-peer-deps" in provider.requests[1].system


async def test_cassette_miss_ends_with_its_text(tools: AgentTools) -> None:
    provider = ScriptedProvider({key(0): tool_turn("list_files")})
    outcome = await loop(provider, tools).run(TASK)
    assert outcome.status == "error" and outcome.turns == 1 and outcome.tool_calls == 1
    assert outcome.error == f"CassetteMissError: no recorded turn for {ROLE}/t-api/1"


async def test_provider_errors_end_the_run(tools: AgentTools) -> None:
    def fail(_request: LLMRequest) -> AssistantTurn:
        raise LLMRateLimitError("429 after 5 retries", provider="anthropic")

    outcome = await loop(ScriptedProvider(fail), tools).run(TASK)
    assert outcome.status == "error" and outcome.error == "LLMRateLimitError: 429 after 5 retries"


async def test_cut_off_reply_is_continued(tools: AgentTools) -> None:
    cut = AssistantTurn(text="Here is the pla", stop_reason="max_tokens")
    provider = ScriptedProvider({key(0): cut, key(1): final_turn("n. Done.")})
    outcome = await loop(provider, tools).run(TASK)
    assert outcome.status == "done" and outcome.turns == 2
    assert provider.requests[1].messages[-1].content == CONTINUE_AFTER_CUTOFF


async def test_turns_restart_per_task_and_tracking_resets(tools: AgentTools) -> None:
    other = AgentTask(id="t-ui", title="UI")
    provider = ScriptedProvider(
        {
            key(0): tool_turn("write_file", path="a.py", content="a"),
            key(1): final_turn(),
            TurnKey(role=ROLE, task="t-ui", turn=0): final_turn("nothing to do"),
        }
    )
    agent = loop(provider, tools)
    assert (await agent.run(TASK)).changed_files.keys() == {"a.py"}
    second = await agent.run(other)
    assert second.status == "done" and second.changed_files == {} and second.turns == 1
    assert provider.requests[-1].key == TurnKey(role=ROLE, task="t-ui", turn=0)


async def test_cancellation_propagates(tools: AgentTools) -> None:
    started = asyncio.Event()

    class Hanging(ScriptedProvider):
        async def complete(self, request: LLMRequest) -> AssistantTurn:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    run = asyncio.create_task(loop(Hanging({}), tools).run(TASK))
    await started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run


async def test_failing_context_source_keeps_the_last_context(tools: AgentTools) -> None:
    reads = 0

    async def flaky() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads > 1:
            raise ConnectionError("redis down")
        return {"discovery:port": "api on 8000"}

    provider = ScriptedProvider({key(0): tool_turn("list_files"), key(1): final_turn()})
    outcome = await loop(provider, tools, context_source=flaky).run(TASK)
    assert outcome.status == "done" and "api on 8000" in provider.requests[1].system


# --- the prompt ------------------------------------------------------------------------


def test_context_renders_errors_first_and_newest_first() -> None:
    context = {
        "file_hashes": {"src/a.ts": "ab" * 32},
        "discovery:port": "vite serves on 5173",
        "errors": [
            {"key": "old", "message": "old error", "at": 1.0},
            {"key": "new", "message": "new error", "at": 2.0},
        ],
        "decision:db": PublishedItem(kind="decision", key="db", message="use sqlite"),
    }
    text = render_context(context)
    assert text.index("new error") < text.index("old error") < text.index("use sqlite") < text.index("5173")
    assert "src/a.ts @ abababababab" in text


def test_context_is_capped_with_a_marker() -> None:
    context = {f"discovery:{i}": "x" * 100 for i in range(100)}
    context["error:tsc"] = "TS2304: cannot find name 'foo'"
    text = render_context(context, cap=1_000)
    assert len(text) <= 1_000
    assert "TS2304" in text  # the error is newest-inserted-last yet rendered first
    assert "more context entries omitted" in text


def test_prompt_without_context() -> None:
    prompt = build_system_prompt(ROLE, TASK, None)
    assert "(nothing shared yet)" in prompt and "Write app.py" in prompt


async def test_the_outcome_says_when_the_run_waited_on_the_model(tools: AgentTools) -> None:
    now = [50.0]

    def answer(request: LLMRequest) -> AssistantTurn:
        now[0] += 2.0  # the model takes 2 s; the tool call after it 1 s
        return final_turn() if request.key.turn else tool_turn("write_file", path="a.py", content="a = 1\n")

    class Timed(AgentTools):
        async def call(self, call: ToolCall) -> Any:
            now[0] += 1.0
            return await super().call(call)

    timed = Timed(tools.sandbox, publish=None)
    outcome = await loop(ScriptedProvider(answer), timed, clock=lambda: now[0]).run(TASK)
    assert outcome.model_busy == [(50.0, 52.0), (53.0, 55.0)]


async def test_each_message_and_tool_call_is_told_to_the_watcher_as_it_happens_without_file_contents(
    tools: AgentTools,
) -> None:
    provider = ScriptedProvider(
        {
            key(0): tool_turn("write_file", path="app.py", content="SECRET_BODY = 1\n" * 50),
            key(1): tool_turn("read_file", path="nope.py"),
            key(2): tool_turn("exec", command=["pytest", "-q"]),
            key(3): final_turn("Done:\n  app.py written   and tested."),
        }
    )
    steps: list[AgentStep] = []

    async def watch(step: AgentStep) -> None:
        steps.append(step)

    outcome = await loop(provider, tools, on_step=watch).run(TASK)
    assert outcome.status == "done"
    assert [(s.turn, s.tool, s.detail, s.ok) for s in steps] == [
        (1, "", "calling write_file", True),
        (1, "write_file", "app.py", True),
        (2, "", "calling read_file", True),
        (2, "read_file", "nope.py", False),
        (3, "", "calling exec", True),
        (3, "exec", "pytest -q", True),  # it ran (exit 127 here): the model reads the exit code
        (4, "", "Done: app.py written and tested.", True),
    ]
    assert all(s.task == TASK.id and "SECRET_BODY" not in s.detail for s in steps)


async def test_a_watcher_that_fails_does_not_stop_the_agent(tools: AgentTools) -> None:
    provider = ScriptedProvider({key(0): tool_turn("list_files", pattern="*"), key(1): final_turn()})

    async def broken(step: AgentStep) -> None:
        raise ConnectionError("redis is gone")

    outcome = await loop(provider, tools, on_step=broken).run(TASK)
    assert outcome.status == "done" and outcome.tool_calls == 1


def test_a_step_summary_is_one_short_line() -> None:
    call = ToolCall(id="c", name="exec", arguments={"command": "echo " + "x" * 500 + "\nsecond line"})
    summary = call_summary(call)
    assert len(summary) == STEP_DETAIL_CAP and "\n" not in summary and summary.endswith("…")
    assert call_summary(ToolCall(id="c", name="wait", arguments={"seconds": 2, "note": "x" * 300})) == "seconds=2"
