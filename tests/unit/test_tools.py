"""AgentTools on the fake backend: every tool, and every bad input answered rather than raised."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from sandbox_agents.agent_models import PublishedItem
from sandbox_agents.backends.base import ExecRequest, ExecResult, SandboxSpec
from sandbox_agents.backends.fake import FakeBackend, FakeSandbox
from sandbox_agents.llm.base import ToolCall, ToolResult
from sandbox_agents.tools import AgentTools, PathLocks, cap_text


@pytest.fixture
async def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def sandbox(backend: FakeBackend) -> FakeSandbox:
    return await backend.create(SandboxSpec())


@pytest.fixture
def published() -> list[PublishedItem]:
    return []


@pytest.fixture
def tools(sandbox: FakeSandbox, published: list[PublishedItem]) -> AgentTools:
    async def publish(item: PublishedItem) -> None:
        published.append(item)

    return AgentTools(sandbox, publish=publish, result_cap=2_000, exec_timeout_default=5.0)


async def call(tools: AgentTools, name: str, **arguments: object) -> ToolResult:
    return await tools.call(ToolCall(id=f"c-{name}", name=name, arguments=arguments))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- specs -----------------------------------------------------------------------------


def test_specs_are_strict_schemas(tools: AgentTools, sandbox: FakeSandbox) -> None:
    names = [spec.name for spec in tools.specs()]
    assert names == ["read_file", "write_file", "edit", "list_files", "search", "exec", "remove", "publish"]
    for spec in tools.specs():
        assert spec.parameters["type"] == "object"
        assert spec.parameters["additionalProperties"] is False
        assert "title" not in spec.parameters
    edit = next(s for s in tools.specs() if s.name == "edit")
    assert set(edit.parameters["required"]) == {"path", "old", "new"}
    assert "publish" not in [s.name for s in AgentTools(sandbox).specs()]


# --- happy paths -----------------------------------------------------------------------


async def test_write_then_read_records_the_change(tools: AgentTools, sandbox: FakeSandbox) -> None:
    result = await call(tools, "write_file", path="src/app.py", content="print('hi')\n")
    assert not result.is_error and "src/app.py" in result.content
    assert await sandbox.read_file("src/app.py") == b"print('hi')\n"
    read = await call(tools, "read_file", path="/workspace/src/app.py")
    assert read.content == "print('hi')\n" and not read.is_error
    assert tools.changes == {"src/app.py": sha("print('hi')\n")}


async def test_read_a_range_of_lines(tools: AgentTools, sandbox: FakeSandbox) -> None:
    await sandbox.write_file("f.txt", "".join(f"line {i}\n" for i in range(1, 11)))
    result = await call(tools, "read_file", path="f.txt", offset=3, limit=2)
    assert result.content == "[f.txt: lines 3-4 of 10]\nline 3\nline 4\n"
    past = await call(tools, "read_file", path="f.txt", offset=50)
    assert past.is_error and "past the end" in past.content


async def test_edit_replaces_exact_text(tools: AgentTools, sandbox: FakeSandbox) -> None:
    await sandbox.write_file("a.py", "x = 1\ny = 1\n")
    result = await call(tools, "edit", path="a.py", old="x = 1", new="x = 2")
    assert not result.is_error and "1 occurrence" in result.content
    assert await sandbox.read_file("a.py") == b"x = 2\ny = 1\n"
    assert tools.changes["a.py"] == sha("x = 2\ny = 1\n")


async def test_edit_refuses_missing_or_ambiguous_text(tools: AgentTools, sandbox: FakeSandbox) -> None:
    await sandbox.write_file("a.py", "v = 1\nv = 1\n")
    missing = await call(tools, "edit", path="a.py", old="w = 1", new="w = 2")
    assert missing.is_error and "not found" in missing.content
    ambiguous = await call(tools, "edit", path="a.py", old="v = 1", new="v = 2")
    assert ambiguous.is_error and "2 times" in ambiguous.content
    assert await sandbox.read_file("a.py") == b"v = 1\nv = 1\n"
    assert tools.changes == {}
    both = await call(tools, "edit", path="a.py", old="v = 1", new="v = 2", count=2)
    assert not both.is_error and "2 occurrences" in both.content
    assert await sandbox.read_file("a.py") == b"v = 2\nv = 2\n"


async def test_list_files(tools: AgentTools, sandbox: FakeSandbox) -> None:
    await sandbox.write_file("src/a.ts", "abc")
    await sandbox.write_file("README.md", "r")
    listing = await call(tools, "list_files")
    assert listing.content.splitlines() == ["README.md (1 B)", "src/", "src/a.ts (3 B)"]
    only_ts = await call(tools, "list_files", pattern="src/*.ts")
    assert only_ts.content == "src/a.ts (3 B)"
    none = await call(tools, "list_files", pattern="*.rs")
    assert not none.is_error and "no files match" in none.content


async def test_search_regex_literal_and_glob(tools: AgentTools, sandbox: FakeSandbox) -> None:
    await sandbox.write_file("src/a.ts", "const a = 1;\nexport function foo() {}\n")
    await sandbox.write_file("src/b.py", "def foo():\n    return a.b\n")
    await sandbox.write_file("node_modules/x/index.js", "function foo() {}\n")
    regex = await call(tools, "search", pattern=r"foo\(")
    assert regex.content.splitlines()[:2] == ["src/a.ts:2: export function foo() {}", "src/b.py:1: def foo():"]
    assert "node_modules" not in regex.content
    literal = await call(tools, "search", pattern="a.b", literal=True)
    assert literal.content.startswith("src/b.py:2: return a.b")
    globbed = await call(tools, "search", pattern="foo", path_glob="**/*.py")
    assert globbed.content.startswith("src/b.py:1:") and "src/a.ts" not in globbed.content
    limited = await call(tools, "search", pattern=".", max_results=1)
    assert limited.content.count("\n") == 1 and "max_results=1" in limited.content
    nothing = await call(tools, "search", pattern="zzz")
    assert not nothing.is_error and "no matches" in nothing.content
    bad = await call(tools, "search", pattern="(unclosed")
    assert bad.is_error and "literal=true" in bad.content


async def test_exec_runs_in_the_sandbox(tools: AgentTools, backend: FakeBackend, sandbox: FakeSandbox) -> None:
    seen: list[ExecRequest] = []

    def npm(_sb: FakeSandbox, request: ExecRequest) -> ExecResult:
        seen.append(request)
        return ExecResult(exit_code=1, stdout="building\n", stderr="error TS2304\n")

    backend.script("npm", npm)
    result = await call(tools, "exec", command=["npm", "run", "build"], cwd="web")
    assert not result.is_error  # a failing command is an answer, not a tool failure
    assert result.content.startswith("exit code: 1")
    assert "--- stderr ---\nerror TS2304" in result.content
    assert seen[0].cwd == "/workspace/web" and seen[0].timeout_s == 5.0
    await call(tools, "exec", command="echo hi", timeout_s=10)
    assert tools.exec_count == 2 and sandbox.exec_log[-1] == ["/bin/sh", "-c", "echo hi"]


async def test_remove_records_none(tools: AgentTools, sandbox: FakeSandbox) -> None:
    await call(tools, "write_file", path="tmp.txt", content="x")
    result = await call(tools, "remove", path="tmp.txt")
    assert not result.is_error and tools.changes == {"tmp.txt": None}
    again = await call(tools, "remove", path="tmp.txt")
    assert again.is_error and "not found" in again.content


async def test_publish_an_error_item(tools: AgentTools, sandbox: FakeSandbox, published: list[PublishedItem]) -> None:
    result = await call(
        tools, "publish", kind="error", key="npm-peer", message="use --legacy-peer-deps", file="./web/package.json"
    )
    assert not result.is_error
    assert published == [
        PublishedItem(
            kind="error",
            key="npm-peer",
            message="use --legacy-peer-deps",
            file="web/package.json",
            sandbox_id=sandbox.id,
        )
    ]
    bad_kind = await call(tools, "publish", kind="rumour", key="k", message="m")
    assert bad_kind.is_error and len(published) == 1


# --- bad input is answered, never raised ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("rm_rf", {}, "unknown tool 'rm_rf'"),
        ("read_file", {}, "missing required argument 'path'"),
        ("read_file", {"path": "a", "encoding": "latin1"}, "unknown argument 'encoding'"),
        ("read_file", {"path": "a", "offset": 0}, "offset"),
        ("write_file", {"path": "a", "content": 3}, "content"),
        ("edit", {"path": "a", "old": "", "new": "x"}, "old"),
        ("exec", {"command": ["sleep", "1"], "timeout_s": 601}, "timeout_s"),
        ("exec", {"command": []}, "command"),
        ("search", {"pattern": "x", "max_results": 0}, "max_results"),
        ("read_file", {"path": "missing.txt"}, "not found"),
        ("exec", {"command": ["nosuchprogram"]}, "exit code: 127"),
    ],
)
async def test_bad_calls_are_answered(tools: AgentTools, name: str, arguments: dict, expected: str) -> None:
    result = await tools.call(ToolCall(id="x", name=name, arguments=arguments))
    assert result.call_id == "x"
    assert expected in result.content
    assert result.is_error is (expected != "exit code: 127")


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("read_file", {"path": "../etc/passwd"}),
        ("read_file", {"path": "/etc/passwd"}),
        ("write_file", {"path": "a/../../x", "content": "x"}),
        ("edit", {"path": "/workspace/../root/x", "old": "a", "new": "b"}),
        ("exec", {"command": ["ls"], "cwd": "../.."}),
        ("list_files", {"pattern": "../**/*"}),
        ("search", {"pattern": "x", "path_glob": "/etc/*"}),
        ("remove", {"path": "."}),
        ("publish", {"kind": "error", "key": "k", "message": "m", "file": "../../x"}),
    ],
)
async def test_path_escapes_are_refused(tools: AgentTools, name: str, arguments: dict) -> None:
    result = await tools.call(ToolCall(id="x", name=name, arguments=arguments))
    assert result.is_error and result.content.startswith("path refused")
    assert tools.changes == {} and tools.exec_count == 0


async def test_exec_timeout_is_answered(tools: AgentTools, backend: FakeBackend) -> None:
    never = asyncio.Event()

    async def hang(_sb: FakeSandbox, _request: ExecRequest) -> ExecResult:
        await never.wait()
        return ExecResult(exit_code=0)

    backend.script("serve", hang)
    result = await call(tools, "exec", command=["serve"], timeout_s=0.01)
    assert result.is_error and "timed out after 0.01s" in result.content


async def test_dead_sandbox_and_crashing_backend_are_answered(
    tools: AgentTools, backend: FakeBackend, sandbox: FakeSandbox
) -> None:
    def crash(_sb: FakeSandbox, _request: ExecRequest) -> ExecResult:
        raise RuntimeError("backend bug")

    backend.script("crash", crash)
    crashed = await call(tools, "exec", command=["crash"])
    assert crashed.is_error and "internal error in exec: RuntimeError: backend bug" in crashed.content
    sandbox.kill()
    dead = await call(tools, "read_file", path="a.txt")
    assert dead.is_error and "not running" in dead.content


# --- size cap --------------------------------------------------------------------------


async def test_results_are_capped_with_a_marker(tools: AgentTools, backend: FakeBackend, sandbox: FakeSandbox) -> None:
    await sandbox.write_file("big.txt", "x" * 10_000)
    read = await call(tools, "read_file", path="big.txt")
    assert len(read.content) <= 2_000 and "truncated" in read.content and "offset/limit" in read.content

    backend.script("noisy", lambda _sb, _r: ExecResult(exit_code=2, stdout="o" * 50_000 + "END", stderr="e" * 9_000))
    noisy = await call(tools, "exec", command=["noisy"])
    assert len(noisy.content) <= 2_000 and noisy.content.startswith("exit code: 2")
    assert "END" in noisy.content and "truncated" in noisy.content  # the tail survives

    bad = await call(tools, "write_file", path="x", content="y", **{f"extra{i}": "z" * 50 for i in range(100)})
    assert bad.is_error and len(bad.content) <= 2_000


def test_cap_text() -> None:
    assert cap_text("short", 100) == "short"
    capped = cap_text("a" * 500 + "b" * 500, 200, keep="middle")
    assert len(capped) <= 200 and capped.startswith("a") and capped.endswith("b") and "truncated" in capped


# --- concurrency -----------------------------------------------------------------------


class _SlowSandbox(FakeSandbox):
    """Yields to the event loop between reading and writing, as a remote sandbox would."""

    async def read_file(self, path: str) -> bytes:
        data = await super().read_file(path)
        for _ in range(3):
            await asyncio.sleep(0)  # a yield, not a wait: let the other agent run
        return data


async def _two_agents_edit(backend: FakeBackend, locks_a: PathLocks, locks_b: PathLocks) -> bytes:
    sandbox = _SlowSandbox(backend, (await backend.create(SandboxSpec())).id)
    await sandbox.write_file("config.py", "a = 1\nb = 1\n")
    agent_a = AgentTools(sandbox, file_lock=locks_a)
    agent_b = AgentTools(sandbox, file_lock=locks_b)
    results = await asyncio.gather(
        agent_a.call(ToolCall(id="a", name="edit", arguments={"path": "config.py", "old": "a = 1", "new": "a = 2"})),
        agent_b.call(ToolCall(id="b", name="edit", arguments={"path": "config.py", "old": "b = 1", "new": "b = 2"})),
    )
    assert not any(r.is_error for r in results)
    return await sandbox.read_file("config.py")


async def test_shared_file_lock_serialises_edits(backend: FakeBackend) -> None:
    shared = PathLocks()
    assert await _two_agents_edit(backend, shared, shared) == b"a = 2\nb = 2\n"
    assert shared.active == 0  # locks are dropped once nobody holds them
    # Without a shared lock the same interleaving loses an update: the lock is what prevents it.
    assert await _two_agents_edit(backend, PathLocks(), PathLocks()) != b"a = 2\nb = 2\n"
