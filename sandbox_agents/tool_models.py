"""Argument models of the agent's tools; their JSON schemas are what the model sees.

Each model forbids extra fields, so a misspelt argument is answered with a clear error
instead of being ignored. Field docstrings become the schema's descriptions, which is
the only documentation the model gets, so they say what a value means and its unit.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandbox_agents.agent_models import PublishKind

#: The longest command an agent may run in one call.
MAX_EXEC_TIMEOUT_S = 600.0


class _ToolArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ReadFileArgs(_ToolArgs):
    """Read a text file of the workspace."""

    path: str = Field(min_length=1)
    """File path, relative to the workspace root."""
    offset: int | None = Field(default=None, ge=1)
    """First line to read, counted from 1; whole file if unset."""
    limit: int | None = Field(default=None, ge=1, le=100_000)
    """Most lines to read from `offset`."""


class WriteFileArgs(_ToolArgs):
    """Create or overwrite a file with the given content."""

    path: str = Field(min_length=1)
    """File path, relative to the workspace root; parent directories are created."""
    content: str
    """The whole new content of the file."""


class EditArgs(_ToolArgs):
    """Replace exact text in a file."""

    path: str = Field(min_length=1)
    """File path, relative to the workspace root."""
    old: str = Field(min_length=1)
    """Exact text to replace, including whitespace; include enough context to be unique."""
    new: str
    """Replacement text."""
    count: int = Field(default=1, ge=1, le=10_000)
    """Most occurrences of `old` allowed; every occurrence is replaced. More than this is an error."""


class ListFilesArgs(_ToolArgs):
    """List files of the workspace matching a glob."""

    pattern: str = Field(default="**/*", min_length=1)
    """Glob relative to the workspace root, e.g. `src/**/*.ts`."""


class SearchArgs(_ToolArgs):
    """Search file contents for a regex or literal text."""

    pattern: str = Field(min_length=1, max_length=1000)
    """Python regular expression (or literal text when `literal` is true)."""
    literal: bool = False
    """Treat `pattern` as plain text rather than a regex."""
    path_glob: str | None = None
    """Only search files matching this glob (relative to the workspace root)."""
    max_results: int = Field(default=50, ge=1, le=500)
    """Most matching lines to return."""


class ExecArgs(_ToolArgs):
    """Run a command in the sandbox."""

    command: list[str] | str
    """An argv list (preferred) or a shell string run through `/bin/sh -c`."""
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_EXEC_TIMEOUT_S)
    """Seconds before the command is killed; a default applies when unset."""
    cwd: str | None = None
    """Working directory, relative to the workspace root."""

    @field_validator("command")
    @classmethod
    def _non_empty(cls, value: list[str] | str) -> list[str] | str:
        if (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value):
            raise ValueError("command must not be empty")
        return value


class RemoveArgs(_ToolArgs):
    """Delete a file (or a directory with `recursive`)."""

    path: str = Field(min_length=1)
    """Path relative to the workspace root."""
    recursive: bool = False
    """Remove a directory and everything in it."""


class PublishArgs(_ToolArgs):
    """Tell every agent of the build something they should know."""

    kind: PublishKind
    """`discovery` (a fact found), `decision` (a choice others must follow) or `error` (a pitfall)."""
    key: str = Field(min_length=1, max_length=200)
    """Short stable name; publishing the same key again replaces the old value."""
    message: str = Field(min_length=1, max_length=4000)
    """What others need to know, in one or a few sentences."""
    file: str | None = None
    """File the item is about, relative to the workspace root."""
    line: int | None = Field(default=None, ge=1)
    """Line in `file`, counted from 1."""


#: Tool name → (argument model, description shown to the model).
TOOL_MODELS: dict[str, tuple[type[_ToolArgs], str]] = {
    "read_file": (ReadFileArgs, "Read a text file of the workspace, optionally a range of lines."),
    "write_file": (WriteFileArgs, "Create or overwrite a whole file. Prefer `edit` for small changes."),
    "edit": (
        EditArgs,
        "Replace exact text `old` with `new` in a file. Fails if `old` is absent or occurs more than `count` "
        "times; then read the file and give more surrounding context.",
    ),
    "list_files": (ListFilesArgs, "List workspace files matching a glob, with their sizes."),
    "search": (SearchArgs, "Search file contents (regex or literal); answers `path:line: text` lines."),
    "exec": (ExecArgs, "Run a command in the sandbox's workspace; answers its exit code, stdout and stderr."),
    "remove": (RemoveArgs, "Delete a file, or a directory with recursive=true."),
    "publish": (
        PublishArgs,
        "Share a discovery, decision or error with every other agent of the build (all sandboxes).",
    ),
}


def tool_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema without pydantic's `title` noise, for `ToolSpec.parameters`.

    Titles repeat the field names and cost prompt tokens on every turn; only schema nodes
    lose them, never a property that happens to be called `title`.
    """
    schema: dict[str, Any] = _strip_titles(model.model_json_schema())
    return schema


def _strip_titles(node: Any) -> Any:
    if isinstance(node, list):
        return [_strip_titles(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs") and isinstance(value, dict):
            out[key] = {name: _strip_titles(sub) for name, sub in value.items()}
        else:
            out[key] = _strip_titles(value)
    return out
