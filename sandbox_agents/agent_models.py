"""Typed messages of one agent: the task it gets, the limits it runs under, what it publishes and returns.

These cross the actor boundary (``actors/agent.py`` hands an :class:`AgentTask` in and an
:class:`AgentOutcome` out), so they are plain pydantic models with no sandbox or provider
objects inside.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sandbox_agents.llm.base import Usage

#: Why an agent loop ended.
AgentStatus = Literal["done", "step_limit", "token_budget", "stuck", "error"]

#: Most characters of an :class:`AgentStep`'s detail.
STEP_DETAIL_CAP = 200

#: What a published item tells the other agents and sandboxes of the build.
PublishKind = Literal["discovery", "decision", "error"]


class AgentStep(BaseModel):
    """One thing an agent just did, for whoever watches the build: a message of the model or a tool call.

    Short by construction (a summary of the call's arguments, the message's first lines), so a
    watcher sees what the agent is on without the file contents or command output it handled.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    turn: int = Field(ge=0)
    tool: str = ""
    """The tool called ("" for a message of the model)."""
    detail: str = Field(default="", max_length=STEP_DETAIL_CAP)
    """For a tool call, what it was called on (a path, a command); for a message, its beginning."""
    ok: bool = True
    """False when the tool call failed."""


class AgentTask(BaseModel):
    """One unit of work for one agent, from the build plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    """Stable task id; it is the ``task`` of every TurnKey, so replay finds the turns."""
    title: str
    """One line saying what the task is."""
    instructions: str = ""
    """What to do, in full."""
    acceptance: str = ""
    """What must hold for the task to count as done, in words."""
    check_command: list[str] | str | None = None
    """A command whose exit code 0 shows the task is done (the agent runs it before finishing)."""
    files: tuple[str, ...] = ()
    """Files the task is expected to touch, as a hint to the agent (not enforced)."""
    brief: str = Field(default="", max_length=20_000)
    """The app being built and this agent's part of it (summary, component, stack, neighbours, criteria)."""


class AgentLimits(BaseModel):
    """Bounds on one run of the agent loop; reaching one ends the run with its status."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int = Field(default=40, ge=1, le=10_000)
    """Most LLM turns in one run (``step_limit``)."""
    max_tokens: int = Field(default=400_000, ge=1)
    """Most input+output tokens over the whole run (``token_budget``)."""
    stuck_repeats: int = Field(default=3, ge=2, le=100)
    """The same tool call with the same arguments this many times in a row means ``stuck``."""
    max_tokens_per_turn: int = Field(default=4096, ge=1, le=200_000)
    """The ``max_tokens`` of each request (the model's answer length)."""


class PublishedItem(BaseModel):
    """Something an agent tells the whole build: a discovery, a decision or an error.

    The publisher (the agent actor) puts it on the context bus; it comes back to every agent
    of every sandbox through the unified context, so others learn from it and avoid the
    same errors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: PublishKind
    key: str = Field(min_length=1, max_length=200)
    """Stable name of the item; publishing the same key again replaces the older value."""
    message: str = Field(min_length=1, max_length=4000)
    file: str | None = None
    """Workspace-relative file the item is about, if any."""
    line: int | None = Field(default=None, ge=1)
    sandbox_id: str | None = None
    """The sandbox the item came from (filled in by the tools, not the model)."""


class AgentOutcome(BaseModel):
    """What one run of the agent loop did and why it stopped."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    status: AgentStatus
    turns: int = 0
    """LLM turns taken (answered requests)."""
    changed_files: dict[str, str | None] = Field(default_factory=dict)
    """Path → sha256 of its new content; ``None`` when the file was removed."""
    usage: Usage = Field(default_factory=Usage)
    """Token and cost totals over every turn of the run."""
    role: str = ""
    """Who ran it (``agent:{component}:{n}``): with ``model``, what the budget ledger charges."""
    model: str = ""
    """The model that answered (as the provider names it; the last turn's)."""
    final_text: str = ""
    """The model's last non-empty text (its summary when it ends with ``done``)."""
    tool_calls: int = 0
    exec_count: int = 0
    error: str | None = None
    """Why the run failed or stopped early (LLM error text, stuck call, exhausted limit)."""
    model_busy: list[tuple[float, float]] = Field(default_factory=list)
    """When the run waited on the model: wall-clock ``(start, end)`` of its requests, sorted and disjoint."""

    @property
    def ok(self) -> bool:
        return self.status == "done"
