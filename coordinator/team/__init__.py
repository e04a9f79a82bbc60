"""A component's team: 3–5 agents build its tasks in one sandbox, escalating failures (floor 2, no Ray).

This is the plan's per-sandbox build runner. :class:`TeamRunner` (:mod:`.runner`) splits a
component's tasks among the agents in dependency order, runs each task's check, escalates a
failed task (retry, hand-off, re-plan, blocked) and reports a :class:`TeamReport`. The task
models and the ports it is handed (agents, check runner, planner, events, context reader) are
in :mod:`.models`, the per-file lock service of a sandbox in :mod:`.locks`, and the LLM
re-planner and the context agents read in :mod:`.llm`. The SandboxTeam actor
(``actors/team.py``) owns one runner. See docs/agents.md.
"""

from coordinator.team.llm import REPLACE_TOOL, LLMPlanner, prompt_context
from coordinator.team.locks import FileLockService
from coordinator.team.models import (
    AttemptRecord,
    CheckRunner,
    ComponentWork,
    ContextReader,
    Planner,
    TeamAgent,
    TeamEvents,
    TeamReport,
    TeamTask,
    agent_role,
    assign,
    topological,
)
from coordinator.team.runner import TeamRunner

__all__ = [
    "REPLACE_TOOL",
    "AttemptRecord",
    "CheckRunner",
    "ComponentWork",
    "ContextReader",
    "FileLockService",
    "LLMPlanner",
    "Planner",
    "TeamAgent",
    "TeamEvents",
    "TeamReport",
    "TeamRunner",
    "TeamTask",
    "agent_role",
    "assign",
    "prompt_context",
    "topological",
]
