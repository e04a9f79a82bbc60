"""The team's two LLM-facing translations: re-planning a failed task, and the context agents read.

:class:`LLMPlanner` is the team's :class:`~coordinator.team.models.Planner` over an LLM
provider (escalation level 3; replay answers come from role ``planner``).
:func:`prompt_context` turns the bus's unified context into the shapes
``sandbox_agents.agent_prompt.render_context`` renders, which every agent reads before each turn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from coordinator.bus.models import UnifiedContext
from coordinator.team.models import REPLAN_SUFFIX, TeamTask
from sandbox_agents.errors import InvalidInputError
from sandbox_agents.llm.base import LLMProvider, LLMRequest, Message, ToolSpec, TurnKey

# --- the planner over an LLM provider (replay answers from role "planner") -----------------

_TASKS: TypeAdapter[list[TeamTask]] = TypeAdapter(list[TeamTask])
REPLACE_TOOL = ToolSpec(
    name="replace_tasks",
    description="Answer the tasks that replace the failed one, in order.",
    parameters={
        "type": "object",
        "properties": {"tasks": {"type": "array", "items": TeamTask.model_json_schema()}},
        "required": ["tasks"],
    },
)


class LLMPlanner:
    """Asks a provider for replacement tasks: key ``(planner, {task}#replan, 0)``.

    The answer is a ``replace_tasks`` tool call with ``{"tasks": [...]}``, or text holding a
    YAML/JSON list of tasks (or ``{tasks: [...]}``).
    """

    def __init__(self, provider: LLMProvider, *, role: str = "planner") -> None:
        self.provider = provider
        self.role = role

    async def replan(self, task: TeamTask, failure: str) -> list[TeamTask]:
        request = LLMRequest(
            key=TurnKey(role=self.role, task=task.id + REPLAN_SUFFIX, turn=0),
            system="You re-plan a failed task of a software build into smaller replacement tasks.",
            messages=[
                Message(role="user", content=f"Task:\n{task.model_dump_json()}\n\nIt failed three times:\n{failure}")
            ],
            tools=[REPLACE_TOOL],
        )
        reply = await self.provider.complete(request)
        calls = [c for c in reply.tool_calls if c.name == REPLACE_TOOL.name]
        raw: Any = calls[0].arguments.get("tasks") if calls else yaml.safe_load(reply.text or "[]")
        if isinstance(raw, dict):
            raw = raw.get("tasks")
        try:
            return _TASKS.validate_python(raw)
        except ValidationError as exc:
            raise InvalidInputError(f"the planner's replacement tasks are invalid: {exc}", field="tasks") from exc


# --- the unified context as the agent prompt reads it --------------------------------------


def prompt_context(unified: UnifiedContext) -> dict[str, Any]:
    """The bus's unified context in the shapes ``agent_prompt.render_context`` renders: errors first."""
    errors = {
        key: {
            "kind": "error",
            "key": e.source,
            "message": e.message,
            "file": e.file,
            "line": e.line or None,
            "source": e.sender,
            "ts": e.ts,
        }
        for key, e in unified.errors.items()
    }
    decisions: dict[str, Any] = {}
    discoveries: dict[str, Any] = {}
    for key, v in unified.context.items():
        value = v.value if isinstance(v.value, Mapping) else {"message": str(v.value)}
        item = {
            "kind": "decision" if v.kind == "decision" else "discovery",
            "key": key,
            "source": v.sender,
            "ts": v.ts,
            **{k: value.get(k) for k in ("message", "file", "line") if value.get(k) is not None},
        }
        item.setdefault("message", str(v.value))
        (decisions if v.kind == "decision" else discoveries)[key] = item
    files = {path: state.sha256 for path, state in unified.files.items()}
    return {"errors": errors, "decisions": decisions, "discoveries": discoveries, "files": files}
