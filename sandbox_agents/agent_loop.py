"""The LLM tool loop of one agent, as a plain class (the agent actor owns one).

Each turn asks the provider for one assistant turn keyed by ``TurnKey(role, task, turn)``
— the key replay looks answers up by — with a system prompt rebuilt from the build's
context as it is *now*, runs the tool calls it asks for in order, and feeds the results
back. The loop ends when the model answers without tool calls, or at a limit: steps,
tokens, or the same call repeated (a model going round in circles costs money and
teaches nothing). Provider errors end the run with status ``error`` and their text; a
replay miss in particular must be visible, never a silent "done".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from sandbox_agents.agent_models import STEP_DETAIL_CAP, AgentLimits, AgentOutcome, AgentStatus, AgentStep, AgentTask
from sandbox_agents.agent_prompt import DEFAULT_CONTEXT_CAP, build_system_prompt, task_message
from sandbox_agents.busy import BusyIntervals, rounded
from sandbox_agents.errors import LLMError
from sandbox_agents.llm.base import (
    AssistantTurn,
    LLMProvider,
    LLMRequest,
    Message,
    ToolCall,
    ToolResult,
    ToolSpec,
    TurnKey,
    Usage,
)

logger = logging.getLogger(__name__)

#: Reads the build's unified context; called before every turn so the agent sees the latest.
ContextSource = Callable[[], Awaitable[Mapping[str, Any]]]

CONTINUE_AFTER_CUTOFF = "Your reply was cut off at the token limit. Continue where you stopped."


class ToolBox(Protocol):
    """What the loop needs of its tools (:class:`~sandbox_agents.tools.AgentTools` is one)."""

    exec_count: int

    def specs(self) -> list[ToolSpec]: ...

    async def call(self, call: ToolCall) -> ToolResult: ...

    @property
    def changes(self) -> dict[str, str | None]: ...

    def reset_tracking(self) -> None: ...


async def _no_context() -> Mapping[str, Any]:
    return {}


class AgentLoop:
    """Runs tasks for one agent role: LLM turns and tool calls until done or a limit.

    Args:
        provider: Where assistant turns come from (live or replay).
        tools: The agent's tools on its sandbox.
        role: The agent's role; with the task id and turn index it keys every request.
        limits: Step, token and repetition bounds of one run.
        context_source: Reads the unified context; re-read every turn.
        context_cap: Most characters of rendered context in the system prompt.
        model: Override of the provider's model (tournament strategies).
        temperature: Sampling temperature of every request (tournament strategies); None keeps the provider's.
        workdir: The sandbox's workspace root, for the prompt.
        clock: The wall clock the model's busy intervals are read on.
        on_step: Told of each message of the model and each tool call as they happen (the builder
            view's "what each agent is doing now"); its failures are logged, never the run's.
    """

    def __init__(
        self,
        provider: LLMProvider,
        tools: ToolBox,
        *,
        role: str,
        limits: AgentLimits | None = None,
        context_source: ContextSource | None = None,
        context_cap: int = DEFAULT_CONTEXT_CAP,
        model: str | None = None,
        temperature: float | None = None,
        workdir: str = "/workspace",
        clock: Callable[[], float] = time.time,
        on_step: Callable[[AgentStep], Awaitable[None]] | None = None,
    ) -> None:
        self.provider = provider
        self.tools = tools
        self.role = role
        self.limits = limits or AgentLimits()
        self.context_source = context_source or _no_context
        self.context_cap = context_cap
        self.model = model
        self.temperature = temperature
        self.workdir = workdir
        self.clock = clock
        self.on_step = on_step
        self._last_context: Mapping[str, Any] = {}

    async def run(self, task: AgentTask) -> AgentOutcome:
        """Work on ``task`` until the model is done or a limit is reached.

        Returns:
            The outcome; its status says why the run ended. It never raises for a model's,
            a tool's or a provider's failure.

        Raises:
            asyncio.CancelledError: When the caller cancels the run.
        """
        self.tools.reset_tracking()
        limits = self.limits
        messages = [Message(role="user", content=task_message(task))]
        usage = Usage()
        model = self.model or ""
        turn = 0
        tool_calls = 0
        final_text = ""
        status: AgentStatus = "done"
        error: str | None = None
        last_call: tuple[str, str] | None = None
        repeats = 0
        waiting = BusyIntervals(self.clock)

        while True:
            if turn >= limits.max_steps:
                status, error = "step_limit", f"reached max_steps={limits.max_steps} without finishing"
                break
            if usage.total_tokens >= limits.max_tokens:
                status = "token_budget"
                error = f"spent {usage.total_tokens} tokens, budget max_tokens={limits.max_tokens}"
                break
            request = LLMRequest(
                key=TurnKey(role=self.role, task=task.id, turn=turn),
                system=build_system_prompt(
                    self.role, task, await self._read_context(), context_cap=self.context_cap, workdir=self.workdir
                ),
                messages=list(messages),
                tools=self.tools.specs(),
                max_tokens=limits.max_tokens_per_turn,
                model=self.model,
                temperature=self.temperature,
            )
            try:
                with waiting.busy():
                    reply = await self.provider.complete(request)
            except asyncio.CancelledError:
                raise
            except LLMError as exc:
                status, error = "error", f"{type(exc).__name__}: {exc}"
                logger.warning("agent %s task %s turn %d: provider failed: %s", self.role, task.id, turn, error)
                break
            except Exception as exc:  # an SDK error that escaped translation still ends the run cleanly
                status, error = "error", f"{type(exc).__name__}: {exc}"
                logger.exception("agent %s task %s turn %d: provider raised", self.role, task.id, turn)
                break
            turn += 1
            usage = _add(usage, reply)
            model = reply.model or model
            final_text = reply.text or final_text
            messages.append(Message(role="assistant", content=reply.text, tool_calls=reply.tool_calls))
            if reply.text.strip():
                await self._step(AgentStep(task=task.id, turn=turn, detail=_clip(reply.text)))

            if not reply.tool_calls:
                if reply.stop_reason == "max_tokens":
                    messages.append(Message(role="user", content=CONTINUE_AFTER_CUTOFF))
                    continue
                break

            results: list[ToolResult] = []
            for call in reply.tool_calls:
                signature = (call.name, json.dumps(call.arguments, sort_keys=True, default=str))
                repeats = repeats + 1 if signature == last_call else 1
                last_call = signature
                if repeats >= limits.stuck_repeats:
                    status = "stuck"
                    error = f"tool {call.name} called {repeats} times in a row with the same arguments"
                    break
                result = await self.tools.call(call)
                results.append(result)
                tool_calls += 1
                step = AgentStep(
                    task=task.id, turn=turn, tool=call.name, detail=call_summary(call), ok=not result.is_error
                )
                await self._step(step)
            messages.append(Message(role="tool", tool_results=results))
            if status == "stuck":
                logger.info("agent %s task %s: %s", self.role, task.id, error)
                break

        return AgentOutcome(
            task_id=task.id,
            status=status,
            turns=turn,
            changed_files=self.tools.changes,
            usage=usage,
            role=self.role,
            model=model,
            final_text=final_text,
            tool_calls=tool_calls,
            exec_count=self.tools.exec_count,
            error=error,
            model_busy=rounded(waiting.intervals()),
        )

    async def _step(self, step: AgentStep) -> None:
        if self.on_step is None:
            return
        try:
            await self.on_step(step)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a watcher's failure never stops the agent
            logger.warning("agent %s: reporting a step of %s failed", self.role, step.task, exc_info=True)

    async def _read_context(self) -> Mapping[str, Any]:
        """The current context; on a read failure the last one read, so a bus hiccup does not end the run."""
        try:
            self._last_context = await self.context_source()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("agent %s: context read failed; using the previous context", self.role, exc_info=True)
        return self._last_context


#: Arguments that say what a tool call is on, in the order they are looked for.
_SUBJECTS = ("command", "path", "pattern", "query", "key", "url")


def call_summary(call: ToolCall) -> str:
    """What a tool call is on, in one short line: its command, path, pattern... never a file's content."""
    args = call.arguments
    for name in _SUBJECTS:
        value = args.get(name)
        if isinstance(value, list):
            value = " ".join(str(v) for v in value)
        if isinstance(value, str) and value.strip():
            return _clip(value.strip())
    short = [f"{k}={v}" for k, v in sorted(args.items()) if isinstance(v, int | float | bool)]
    return _clip(" ".join(short))


def _clip(text: str, cap: int = STEP_DETAIL_CAP) -> str:
    line = " ".join(text.split())
    return line if len(line) <= cap else line[: cap - 1] + "…"


def _add(total: Usage, reply: AssistantTurn) -> Usage:
    return Usage(
        input_tokens=total.input_tokens + reply.usage.input_tokens,
        output_tokens=total.output_tokens + reply.usage.output_tokens,
        cost_usd=total.cost_usd + reply.usage.cost_usd,
    )
