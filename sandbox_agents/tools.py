"""The agent's tools over one sandbox: read, write, edit, list, search, exec, remove, publish.

Everything goes through the :class:`~sandbox_agents.backends.base.Sandbox` protocol, so the
same tools work on the fake, local and Modal backends. A model's mistake is never an
exception: :meth:`AgentTools.call` answers every bad input (unknown tool, invalid arguments,
a path out of the workspace, a missing file, a command past its timeout) with an error
result the model can read and act on. Only cancellation goes through.

The ``search`` tool's walk over the workspace is in ``sandbox_agents/tool_search.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import posixpath
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from sandbox_agents.agent_models import PublishedItem
from sandbox_agents.backends.base import Sandbox
from sandbox_agents.backends.paths import workspace_relative
from sandbox_agents.errors import (
    InvalidInputError,
    KriptikError,
    SandboxDeadError,
    SandboxPathError,
    SandboxTimeoutError,
)
from sandbox_agents.llm.base import ToolCall, ToolResult, ToolSpec
from sandbox_agents.tool_models import (
    TOOL_MODELS,
    EditArgs,
    ExecArgs,
    ListFilesArgs,
    PublishArgs,
    ReadFileArgs,
    RemoveArgs,
    SearchArgs,
    WriteFileArgs,
    tool_schema,
)
from sandbox_agents.tool_search import search_workspace

logger = logging.getLogger(__name__)

DEFAULT_RESULT_CAP = 16_000
DEFAULT_EXEC_TIMEOUT_S = 120.0
LIST_MAX_ENTRIES = 2_000

#: Publishes an item to the whole build (the agent actor puts it on the context bus).
Publisher = Callable[[PublishedItem], Awaitable[None]]
#: Gives an async lock for one workspace-relative path; one provider per sandbox.
FileLock = Callable[[str], AbstractAsyncContextManager[Any]]


@dataclass
class _PathLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class PathLocks:
    """An in-process :data:`FileLock`: one asyncio lock per path, dropped when nobody uses it.

    Agents of one sandbox that share this object never interleave a read-modify-write of
    the same file. Across processes the owner of the sandbox passes a provider with the
    same shape backed by its own serialisation.
    """

    def __init__(self) -> None:
        self._locks: dict[str, _PathLock] = {}

    @asynccontextmanager
    async def __call__(self, path: str) -> AsyncIterator[None]:
        entry = self._locks.setdefault(path, _PathLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                self._locks.pop(path, None)

    @property
    def active(self) -> int:
        """Paths with a holder or a waiter (entries are dropped when the last one leaves)."""
        return len(self._locks)


class _Refused(Exception):
    """A tool declines the call with a message meant for the model."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cap_text(text: str, cap: int, *, keep: str = "head", hint: str = "") -> str:
    """Cut ``text`` to at most ``cap`` characters with a visible marker saying how much went.

    ``keep="head"`` keeps the start (file reads: the model pages on with offset/limit);
    ``keep="middle"`` keeps start and end (command output: errors are usually at the end).
    """
    if len(text) <= cap:
        return text
    marker = f"\n…[truncated {{}} of {len(text)} characters{hint}]…\n"
    room = max(cap - len(marker.format(len(text))), 0)
    cut = len(text) - room
    if keep == "middle":
        head = room // 2
        return text[:head] + marker.format(cut) + text[len(text) - (room - head) :]
    return text[:room] + marker.format(cut)


class AgentTools:
    """The tools one agent uses on one sandbox, and a record of what they changed.

    Args:
        sandbox: Where the tools act.
        publish: Sends an item to the rest of the build; without it the ``publish`` tool is not offered.
        result_cap: Most characters of any one tool result; longer results are cut with a marker.
        exec_timeout_default: Seconds a command may run when the model gives no timeout.
        file_lock: Serialises writes and edits per path (shared by all agents of the sandbox).
    """

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        publish: Publisher | None = None,
        result_cap: int = DEFAULT_RESULT_CAP,
        exec_timeout_default: float = DEFAULT_EXEC_TIMEOUT_S,
        file_lock: FileLock | None = None,
    ) -> None:
        if result_cap < 512:
            raise InvalidInputError("result_cap must be at least 512 characters", field="result_cap")
        if exec_timeout_default <= 0:
            raise InvalidInputError("exec_timeout_default must be positive", field="exec_timeout_default")
        self.sandbox = sandbox
        self._publish = publish
        self.result_cap = result_cap
        self.exec_timeout_default = exec_timeout_default
        self._file_lock: FileLock = file_lock if file_lock is not None else PathLocks()
        self._workdir: str | None = None
        self._handlers: dict[str, Callable[[Any], Awaitable[str]]] = {
            "read_file": self._read_file,
            "write_file": self._write_file,
            "edit": self._edit,
            "list_files": self._list_files,
            "search": self._search,
            "exec": self._exec,
            "remove": self._remove,
        }
        if publish is not None:
            self._handlers["publish"] = self._publish_item
        self._specs = [
            ToolSpec(name=name, description=TOOL_MODELS[name][1], parameters=tool_schema(TOOL_MODELS[name][0]))
            for name in self._handlers
        ]
        self._changes: dict[str, str | None] = {}
        self.exec_count = 0
        self.call_count = 0

    # --- public ---------------------------------------------------------------------

    def specs(self) -> list[ToolSpec]:
        """The tools offered to the model, in a stable order (it is part of every request)."""
        return list(self._specs)

    @property
    def changes(self) -> dict[str, str | None]:
        """Path → sha256 of the content the tools last wrote; ``None`` for a removed path."""
        return dict(self._changes)

    def reset_tracking(self) -> None:
        """Forget recorded changes and counts (the loop calls it when a new task starts)."""
        self._changes.clear()
        self.exec_count = 0
        self.call_count = 0

    async def call(self, call: ToolCall) -> ToolResult:
        """Run one tool call and answer it; every failure becomes an error result, never an exception.

        Raises:
            asyncio.CancelledError: Only when the caller is cancelled.
        """
        self.call_count += 1
        handler = self._handlers.get(call.name)
        if handler is None:
            return self._error(call, f"unknown tool {call.name!r}; available tools: {', '.join(self._handlers)}")
        try:
            args = TOOL_MODELS[call.name][0].model_validate(call.arguments)
        except ValidationError as exc:
            return self._error(call, f"invalid arguments for {call.name}: {_describe(exc)}")
        try:
            content = await handler(args)
        except _Refused as exc:
            return self._error(call, str(exc))
        except SandboxPathError as exc:
            return self._error(call, f"path refused: {exc}")
        except SandboxTimeoutError as exc:
            partial = _exec_text(None, exc.stdout, exc.stderr, self.result_cap - 200)
            return self._error(call, f"command timed out after {exc.timeout_s:g}s and was killed\n{partial}")
        except SandboxDeadError as exc:
            return self._error(call, f"the sandbox is not running any more: {exc}")
        except FileNotFoundError as exc:
            return self._error(call, f"not found: {exc}")
        except (IsADirectoryError, NotADirectoryError) as exc:
            return self._error(call, f"{type(exc).__name__}: {exc}")
        except (KriptikError, OSError, ValueError) as exc:
            return self._error(call, f"{call.name} failed: {type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug below us must not end the agent's turn
            logger.exception("tool %s failed unexpectedly on sandbox %s", call.name, self.sandbox.id)
            return self._error(call, f"internal error in {call.name}: {type(exc).__name__}: {exc}")
        return ToolResult(call_id=call.id, content=cap_text(content, self.result_cap, keep="middle"))

    # --- helpers --------------------------------------------------------------------

    def _error(self, call: ToolCall, message: str) -> ToolResult:
        logger.debug("tool %s refused: %s", call.name, message)
        return ToolResult(call_id=call.id, content=cap_text(message, self.result_cap, keep="middle"), is_error=True)

    @property
    def workdir(self) -> str:
        if self._workdir is None:
            self._workdir = self.sandbox.spec.workdir
        return self._workdir

    def _rel(self, path: str, *, allow_root: bool = False) -> str:
        rel = workspace_relative(path, workdir=self.workdir, sandbox_id=self.sandbox.id)
        if rel == "." and not allow_root:
            raise SandboxPathError("the workspace root is not a file", path=path, sandbox_id=self.sandbox.id)
        return rel

    def _glob(self, pattern: str) -> str:
        """A glob relative to the workspace, refusing one that climbs out of it."""
        root = self.workdir.rstrip("/") + "/"
        rel = pattern[len(root) :] if pattern.startswith(root) else pattern
        if posixpath.isabs(rel) or ".." in rel.split("/") or "\0" in rel:
            raise SandboxPathError(f"glob {pattern!r} reaches outside the workspace", path=pattern)
        return rel

    def _record(self, rel: str, digest: str | None) -> None:
        self._changes.pop(rel, None)  # re-insert so the order is that of the last change
        self._changes[rel] = digest

    # --- tools ----------------------------------------------------------------------

    async def _read_file(self, args: ReadFileArgs) -> str:
        rel = self._rel(args.path)
        data = await self.sandbox.read_file(rel)
        if b"\0" in data[:8192]:
            return f"{rel} is a binary file of {len(data)} bytes; not shown"
        text = data.decode("utf-8", errors="replace")
        if args.offset is None and args.limit is None:
            body = text if text else f"({rel} is empty)"
            return cap_text(body, self.result_cap, hint="; read the rest with offset/limit (lines)")
        lines = text.splitlines(keepends=True)
        start = (args.offset or 1) - 1
        if start >= len(lines) and start > 0:
            raise _Refused(f"offset {args.offset} is past the end of {rel} ({len(lines)} lines)")
        end = len(lines) if args.limit is None else min(start + args.limit, len(lines))
        header = f"[{rel}: lines {start + 1}-{end} of {len(lines)}]\n"
        body = header + "".join(lines[start:end])
        return cap_text(body, self.result_cap, hint="; read the rest with a larger offset")

    async def _write_file(self, args: WriteFileArgs) -> str:
        rel = self._rel(args.path)
        payload = args.content.encode()
        async with self._file_lock(rel):
            await self.sandbox.write_file(rel, payload)
            self._record(rel, sha256_hex(payload))
        return f"wrote {rel} ({len(payload)} bytes)"

    async def _edit(self, args: EditArgs) -> str:
        rel = self._rel(args.path)
        # Read, replace and write under one lock: another agent's write in between would be lost.
        async with self._file_lock(rel):
            data = await self.sandbox.read_file(rel)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise _Refused(f"{rel} is not UTF-8 text; use write_file to replace it whole") from None
            found = text.count(args.old)
            if found == 0:
                raise _Refused(f"`old` text not found in {rel}; read the file and copy the exact text")
            if found > args.count:
                raise _Refused(
                    f"`old` text occurs {found} times in {rel} but count is {args.count}; "
                    "give more surrounding context to make it unique, or raise count"
                )
            payload = text.replace(args.old, args.new).encode()
            await self.sandbox.write_file(rel, payload)
            self._record(rel, sha256_hex(payload))
        return f"edited {rel}: replaced {found} occurrence{'s' if found != 1 else ''}"

    async def _list_files(self, args: ListFilesArgs) -> str:
        pattern = self._glob(args.pattern)
        entries = await self.sandbox.list_files(pattern)
        if not entries:
            return f"no files match {args.pattern!r}"
        lines = [f"{e.path}/" if e.is_dir else f"{e.path} ({e.size} B)" for e in entries[:LIST_MAX_ENTRIES]]
        if len(entries) > LIST_MAX_ENTRIES:
            lines.append(f"…[{len(entries) - LIST_MAX_ENTRIES} more entries; narrow the pattern]")
        return "\n".join(lines)

    async def _search(self, args: SearchArgs) -> str:
        try:
            regex = re.compile(re.escape(args.pattern) if args.literal else args.pattern)
        except re.error as exc:
            raise _Refused(f"invalid regular expression {args.pattern!r}: {exc}; pass literal=true") from None
        hits, summary = await search_workspace(
            self.sandbox, regex, self._glob(args.path_glob or "**/*"), args.max_results
        )
        if not hits:
            return f"no matches for {args.pattern!r} ({summary})"
        return "\n".join(hits) + f"\n[{summary}]"

    async def _exec(self, args: ExecArgs) -> str:
        cwd = (
            posixpath.normpath(posixpath.join(self.workdir, self._rel(args.cwd, allow_root=True))) if args.cwd else None
        )
        self.exec_count += 1
        result = await self.sandbox.exec(args.command, cwd=cwd, timeout=args.timeout_s or self.exec_timeout_default)
        text = _exec_text(result.exit_code, result.stdout, result.stderr, self.result_cap - 200)
        if result.truncated:
            text += "\n[the sandbox cut this command's output at its output cap]"
        return text

    async def _remove(self, args: RemoveArgs) -> str:
        rel = self._rel(args.path)
        async with self._file_lock(rel):
            await self.sandbox.remove(rel, recursive=args.recursive)
            self._record(rel, None)
        return f"removed {rel}"

    async def _publish_item(self, args: PublishArgs) -> str:
        assert self._publish is not None  # the tool is only offered with a publisher
        item = PublishedItem(
            kind=args.kind,
            key=args.key,
            message=args.message,
            file=self._rel(args.file) if args.file else None,
            line=args.line,
            sandbox_id=self.sandbox.id,
        )
        await self._publish(item)
        return f"published {item.kind} {item.key!r} to the build"


def _exec_text(exit_code: int | None, stdout: str, stderr: str, budget: int) -> str:
    """Exit code, stdout and stderr, each stream cut in the middle so both fit ``budget``."""
    err_room = min(len(stderr), budget // 2)
    parts = [] if exit_code is None else [f"exit code: {exit_code}"]
    if stdout:
        parts.append("--- stdout ---\n" + cap_text(stdout, max(budget - err_room, 256), keep="middle"))
    if stderr:
        parts.append("--- stderr ---\n" + cap_text(stderr, max(err_room, 256), keep="middle"))
    if not stdout and not stderr:
        parts.append("(no output)")
    return "\n".join(parts)


def _describe(exc: ValidationError) -> str:
    """A short, input-free account of what was wrong (inputs may be huge file contents)."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown argument {where!r}")
        elif err["type"] == "missing":
            problems.append(f"missing required argument {where!r}")
        else:
            problems.append(f"{where}: {err['msg']}")
    return "; ".join(dict.fromkeys(problems))
