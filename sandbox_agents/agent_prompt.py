"""The agent's system prompt: its role, its task, and the build's unified context.

The context is rebuilt every turn from what every sandbox of the build has published, so
an error found in one sandbox reaches the agents of all others before they repeat it.
It arrives as a plain mapping (key → value) whose shape the bus decides; this module reads
the shapes it is likely to have — items like :class:`PublishedItem`, sections of items,
file-hash maps, plain strings — and renders them compactly: known errors first, then
decisions, discoveries, anything else and file hashes, newest first within each, cut to a
character cap with a marker saying how much was left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from sandbox_agents.agent_models import AgentTask

DEFAULT_CONTEXT_CAP = 6_000
ENTRY_CAP = 500
#: Render order: what costs most to ignore comes first, so the cap cuts the least useful.
KIND_ORDER = ("error", "decision", "discovery", "other", "file")
_HEADINGS = {
    "error": "Known errors (found by any agent of the build; do not repeat them)",
    "decision": "Decisions (follow them)",
    "discovery": "Discoveries",
    "other": "Other context",
    "file": "Files (path @ sha256 prefix)",
}
_KIND_WORDS = {
    "error": "error",
    "errors": "error",
    "known_errors": "error",
    "known_error": "error",
    "decision": "decision",
    "decisions": "decision",
    "discovery": "discovery",
    "discoveries": "discovery",
    "file": "file",
    "files": "file",
    "file_hashes": "file",
    "hashes": "file",
}
_TIME_FIELDS = ("at", "ts", "timestamp", "time", "updated_at", "seq")


@dataclass(frozen=True)
class _Entry:
    kind: str
    key: str
    text: str
    order: tuple[int, float]
    """Larger is newer: ``(1, stamp)`` from the value's own time or sequence, else ``(0, position)``.

    A stamp is a better clue to recency than a position in the mapping, so stamped entries rank first.
    """


def build_system_prompt(
    role: str,
    task: AgentTask,
    context: Mapping[str, Any] | None = None,
    *,
    context_cap: int = DEFAULT_CONTEXT_CAP,
    workdir: str = "/workspace",
) -> str:
    """The system prompt of one turn.

    Args:
        role: The agent's role (``agent:backend:0``…), said to the model so it keeps to its part.
        task: The task it works on.
        context: The build's unified context as read this turn.
        context_cap: Most characters of the rendered context.
        workdir: The sandbox's workspace root, where relative paths resolve.
    """
    parts = [
        f"You are {role}, one agent of a team building an app in an isolated sandbox. Other agents work in the "
        "same workspace and in other sandboxes at the same time; the build context below is what they shared.",
        *(["# The app you are building\n" + task.brief.strip()] if task.brief.strip() else []),
        "# Your task\n" + _render_task(task),
        "# How to work\n"
        f"- Paths are relative to the workspace root {workdir}; nothing outside it is reachable.\n"
        "- Read a file before you change it; use `edit` for small changes and `write_file` for new files. "
        "Files may change under you: re-read before editing if in doubt.\n"
        "- Use `exec` to build and test; a failing command's output tells you what to fix.\n"
        "- The sandbox has no network. To add a dependency, add it to the manifest (package.json, "
        "requirements.txt) with an exact version; the install phase installs it before the next check. "
        "Never run `npm install` or `pip install` yourself.\n"
        "- `publish` what others must know: an error and its fix, an API shape, a decision they must follow.\n"
        "- Do only your task; do not undo other agents' work.\n"
        "- When the task is done (run the check first when there is one), reply with a short summary "
        "and no tool call.",
        "# Build context (shared by every agent, newest first)\n" + render_context(context or {}, cap=context_cap),
    ]
    return "\n\n".join(parts)


def task_message(task: AgentTask) -> str:
    """The first user message of a task's conversation."""
    return f"Start task {task.id}: {task.title}"


def _render_task(task: AgentTask) -> str:
    lines = [f"id: {task.id}", f"title: {task.title}"]
    if task.instructions:
        lines.append(f"instructions:\n{task.instructions.strip()}")
    if task.acceptance:
        lines.append(f"done when: {task.acceptance.strip()}")
    if task.check_command:
        command = task.check_command if isinstance(task.check_command, str) else " ".join(task.check_command)
        lines.append(f"check (must exit 0 before you finish): `{command}`")
    if task.files:
        lines.append("files you will likely touch: " + ", ".join(task.files))
    return "\n".join(lines)


def render_context(context: Mapping[str, Any], *, cap: int = DEFAULT_CONTEXT_CAP) -> str:
    """Render the unified context within ``cap`` characters, most important and newest first."""
    entries = _entries(context)
    if not entries:
        return "(nothing shared yet)"
    by_kind: dict[str, list[_Entry]] = {kind: [] for kind in KIND_ORDER}
    for entry in entries:
        by_kind[entry.kind].append(entry)
    lines: list[str] = []
    used = 0
    shown = 0
    full = False
    for kind in KIND_ORDER:
        group = sorted(by_kind[kind], key=lambda e: e.order, reverse=True)
        heading = f"## {_HEADINGS[kind]}"
        for index, entry in enumerate(group):
            line = f"- {entry.key} @ {entry.text[:12]}" if kind == "file" else f"- {entry.key}: {entry.text}"
            line = line if len(line) <= ENTRY_CAP else line[: ENTRY_CAP - 1] + "…"
            cost = len(line) + 1 + (len(heading) + 1 if index == 0 else 0)
            # Stop at the first entry that does not fit, so nothing less important shows in its place.
            full = used + cost > cap - 60  # keep room for the omission marker
            if full:
                break
            if index == 0:
                lines.append(heading)
            lines.append(line)
            used += cost
            shown += 1
        if full:
            break
    if shown < len(entries):
        lines.append(f"…[{len(entries) - shown} more context entries omitted]")
    return "\n".join(lines)


def _entries(context: Mapping[str, Any]) -> list[_Entry]:
    out: list[_Entry] = []
    for position, (key, value) in enumerate(context.items()):
        key = str(key)
        value = _plain(value)
        section = _kind_of(key)
        if isinstance(value, (list, tuple)) and section not in ("other", "file"):
            for sub, item in enumerate(value):
                out.append(_entry(f"{key}[{sub}]", _plain(item), section, position + sub / (len(value) + 1)))
        elif isinstance(value, Mapping) and not _looks_like_item(value) and section != "other":
            for sub, (name, item) in enumerate(value.items()):
                out.append(_entry(str(name), _plain(item), section, position + sub / (len(value) + 1)))
        else:
            out.append(_entry(key, value, section, float(position)))
    return out


def _entry(key: str, value: Any, section: str, position: float) -> _Entry:
    if isinstance(value, Mapping) and _looks_like_item(value):
        kind = _kind_of(str(value.get("kind", ""))) if value.get("kind") else section
        kind = section if kind == "other" else kind
        key = str(value.get("key") or key)
        text = str(value.get("message") or value.get("text") or value.get("value") or "")
        if value.get("file"):
            where = f"{value['file']}:{value['line']}" if value.get("line") else str(value["file"])
            text += f" ({where})"
        source = value.get("sandbox_id") or value.get("source")
        if source:
            text += f" [from {source}]"
        return _Entry(kind, key, text, _order(value, position))
    if section == "file" and isinstance(value, str):
        return _Entry("file", key, value, (0, position))
    text = value if isinstance(value, str) else _compact(value)
    return _Entry(section, key, " ".join(text.split()), (0, position))


def _kind_of(name: str) -> str:
    """The kind a key or ``kind`` field names: its first segment (``error:npm-peer`` → error)."""
    head = name.lower().replace("/", ":").replace(".", ":").split(":", 1)[0].strip()
    return _KIND_WORDS.get(head, "other")


def _looks_like_item(value: Mapping[str, Any]) -> bool:
    return "message" in value or ("kind" in value and ("text" in value or "value" in value))


def _order(value: Mapping[str, Any], position: float) -> tuple[int, float]:
    for name in _TIME_FIELDS:
        stamp = value.get(name)
        if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
            return (1, float(stamp))
    return (0, position)


def _plain(value: Any) -> Any:
    return value.model_dump(exclude_none=True) if isinstance(value, BaseModel) else value


def _compact(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_compact(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    return str(value)
