"""Code quality: the project's own linters where configured, plus size and complexity signals.

Linters run only when the sandbox has them (ruff for Python, the project's eslint for
JS/TS); their absence is noted, never a failure. The signals (long files, long functions,
cyclomatic complexity, deep nesting) are computed here from the files themselves, so every
component gets them whatever its toolchain: Python through ``ast``, JS/TS through a brace scan.
"""

from __future__ import annotations

import ast
import json
import logging
import posixpath
import re
import time
from dataclasses import dataclass

from sandbox_agents.backends.base import Sandbox
from sandbox_agents.errors import SandboxTimeoutError
from sandbox_agents.verifiers.base import SourceFile, VerifyTarget, build_report, list_paths, read_sources
from sandbox_agents.verifiers.models import Finding, Severity, VerifierReport

logger = logging.getLogger(__name__)

_CODE_SUFFIXES = frozenset({".py", ".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx"})
_ESLINT_CONFIGS = frozenset(
    {"eslint.config.js", "eslint.config.mjs", "eslint.config.cjs", ".eslintrc", ".eslintrc.js", ".eslintrc.cjs"}
    | {".eslintrc.json", ".eslintrc.yml", ".eslintrc.yaml"}
)
_JS_FUNCTION = re.compile(
    r"\bfunction\b\s*\*?\s*(?P<name>[\w$]*)\s*\([^)]*\)\s*\{"
    r"|(?P<arrow>[\w$]+)\s*=\s*(?:async\s+)?(?:\([^)]*\)|[\w$]+)\s*=>\s*\{"
    r"|^\s*(?:async\s+)?(?P<method>[\w$]+)\s*\([^)]*\)\s*\{",
    re.MULTILINE,
)
_JS_BRANCH = re.compile(r"\b(?:if|for|while|case|catch)\b|&&|\|\||\?\?|\?(?![.?])")
_JS_KEYWORDS = frozenset({"if", "for", "while", "switch", "catch", "function", "return"})
_PY_BRANCHES = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.IfExp, ast.With, ast.AsyncWith)
_PY_NESTING = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.With, ast.AsyncWith, ast.Match)


@dataclass(frozen=True)
class Limits:
    """Where a signal becomes a warning and where an error (an agent should split the code)."""

    file_lines: int = 400
    function_lines_warn: int = 60
    function_lines_error: int = 120
    complexity_warn: int = 10
    complexity_error: int = 20
    depth_warn: int = 4
    depth_error: int = 6


@dataclass(frozen=True)
class FunctionStats:
    """Size and shape of one function."""

    name: str
    line: int
    length: int
    complexity: int
    depth: int


class CodeQuality:
    """Linters where available, plus size/complexity findings with a score."""

    name = "code_quality"

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()

    async def verify(self, sandbox: Sandbox, target: VerifyTarget) -> VerifierReport:
        started = time.monotonic()
        files = await read_sources(sandbox, target, _CODE_SUFFIXES)
        findings: list[Finding] = []
        functions = 0
        for source in files:
            stats = python_functions(source) if source.suffix == ".py" else js_functions(source)
            functions += len(stats)
            findings.extend(self._judge(source, stats))
        linters = await self._linters(sandbox, target, files, findings)
        details = {"files": len(files), "functions": functions, "linters": linters}
        return build_report(self.name, findings, started, details)

    def _judge(self, source: SourceFile, stats: list[FunctionStats]) -> list[Finding]:
        limits, out = self.limits, []
        if (count := len(source.lines)) > limits.file_lines:
            out.append(
                _finding(source, 1, Severity.WARNING, f"file has {count} lines (> {limits.file_lines})", "long_file")
            )
        for fn in stats:
            checks = (
                (fn.length, limits.function_lines_warn, limits.function_lines_error, "lines long", "long_function"),
                (fn.complexity, limits.complexity_warn, limits.complexity_error, "cyclomatic complexity", "complexity"),
                (fn.depth, limits.depth_warn, limits.depth_error, "levels of nesting", "deep_nesting"),
            )
            for value, warn, error, what, rule in checks:
                if value > warn:
                    severity = Severity.ERROR if value > error else Severity.WARNING
                    message = f"function {fn.name!r}: {value} {what} (limit {warn}, hard limit {error}); split it"
                    out.append(_finding(source, fn.line, severity, message, rule))
        return out

    async def _linters(
        self, sandbox: Sandbox, target: VerifyTarget, files: list[SourceFile], findings: list[Finding]
    ) -> dict[str, str]:
        """Run ruff/eslint when present; returns what happened to each, for the report's details."""
        ran: dict[str, str] = {}
        timeout = min(target.command_timeout_s, 60.0)
        if any(f.suffix == ".py" for f in files):
            probe = (
                "command -v ruff >/dev/null && echo ruff || (python3 -m ruff --version >/dev/null 2>&1 && echo module)"
            )
            found = (await sandbox.exec(probe, cwd=target.root, timeout=30)).stdout.strip()
            if found:
                ruff = "ruff" if found == "ruff" else "python3 -m ruff"
                ran["ruff"] = await self._lint(
                    sandbox,
                    target,
                    f"{ruff} check --no-cache --output-format json --exit-zero .",
                    _ruff_findings,
                    findings,
                    timeout,
                )
            else:
                ran["ruff"] = "not installed in the sandbox"
        if any(f.suffix != ".py" for f in files):
            root = posixpath.normpath(target.root)
            names = {posixpath.basename(p) for p in await list_paths(sandbox, target) if _parent(p) == root}
            if not names.intersection(_ESLINT_CONFIGS):
                ran["eslint"] = "not configured"
            else:
                ran["eslint"] = await self._lint(
                    sandbox,
                    target,
                    "test -x node_modules/.bin/eslint || exit 99; node_modules/.bin/eslint -f json .",
                    _eslint_findings,
                    findings,
                    timeout,
                )
        return ran

    async def _lint(self, sandbox, target, command, parse, findings, timeout) -> str:  # type: ignore[no-untyped-def]
        try:
            result = await sandbox.exec(command, cwd=target.root, timeout=timeout, env={"NO_COLOR": "1"})
        except SandboxTimeoutError:
            return "timed out"
        if result.exit_code == 99:
            return "configured but not installed"
        try:
            parsed = parse(json.loads(result.stdout or "[]"), target, sandbox.spec.workdir)
        except (ValueError, KeyError, TypeError) as exc:
            logger.debug("unreadable linter output in %s: %s", sandbox.id, exc)
            return f"unreadable output (exit {result.exit_code})"
        findings.extend(parsed)
        return f"{len(parsed)} findings"


def _parent(path: str) -> str:
    return posixpath.dirname(path) or "."


def _finding(source: SourceFile, line: int, severity: Severity, message: str, rule: str) -> Finding:
    return Finding(file=source.path, line=line, severity=severity, message=message, rule=f"code_quality.{rule}")


def _rel(path: str, target: VerifyTarget, workdir: str) -> str:
    if posixpath.isabs(path) and path.startswith(workdir.rstrip("/") + "/"):
        return posixpath.relpath(path, workdir)
    return posixpath.normpath(posixpath.join(target.root, path))


def _ruff_findings(items: list[dict], target: VerifyTarget, workdir: str) -> list[Finding]:  # type: ignore[type-arg]
    out = []
    for item in items:
        code = item.get("code") or "syntax"
        severe = (
            code.startswith(("F8", "E9")) or code == "syntax"
        )  # undefined names and syntax errors break at run time
        out.append(
            Finding(
                file=_rel(item["filename"], target, workdir),
                line=max(1, int((item.get("location") or {}).get("row") or 1)),
                severity=Severity.ERROR if severe else Severity.WARNING,
                message=f"{code}: {item.get('message', '')}",
                rule=f"code_quality.ruff.{code}",
            )
        )
    return out


def _eslint_findings(items: list[dict], target: VerifyTarget, workdir: str) -> list[Finding]:  # type: ignore[type-arg]
    out = []
    for item in items:
        for message in item.get("messages", []):
            severity = Severity.ERROR if message.get("severity") == 2 else Severity.WARNING
            rule = message.get("ruleId") or "parse"
            out.append(
                Finding(
                    file=_rel(item["filePath"], target, workdir),
                    line=max(1, int(message.get("line") or 1)),
                    severity=severity,
                    message=f"{rule}: {message.get('message', '')}",
                    rule=f"code_quality.eslint.{rule}",
                )
            )
    return out


def python_functions(source: SourceFile) -> list[FunctionStats]:
    """Length, cyclomatic complexity and nesting depth of each Python function (none if unparsable)."""
    try:
        tree = ast.parse(source.text)
    except (SyntaxError, ValueError):
        return []  # the error checker reports syntax errors
    stats = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            complexity = 1
            for child in ast.walk(node):
                if isinstance(child, _PY_BRANCHES):
                    complexity += 1
                elif isinstance(child, ast.BoolOp):
                    complexity += len(child.values) - 1
                elif isinstance(child, ast.comprehension):
                    complexity += 1 + len(child.ifs)
                elif isinstance(child, ast.match_case):
                    complexity += 1
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            stats.append(FunctionStats(node.name, node.lineno, length, complexity, _py_depth(node, 0)))
    return stats


def _py_depth(node: ast.AST, depth: int) -> int:
    deepest = depth
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue  # a nested function is measured on its own
        deeper = depth + 1 if isinstance(child, _PY_NESTING) else depth
        deepest = max(deepest, _py_depth(child, deeper))
    return deepest


def js_functions(source: SourceFile) -> list[FunctionStats]:
    """The same signals for JS/TS by brace matching: a heuristic, good enough to flag monsters."""
    text = _blank_strings_and_comments(source.text)
    stats = []
    for match in _JS_FUNCTION.finditer(text):
        name = match["name"] or match["arrow"] or match["method"] or "<anonymous>"
        if name in _JS_KEYWORDS:
            continue
        start = match.end() - 1  # the opening brace
        depth, deepest, end = 0, 0, len(text)
        for index in range(start, len(text)):
            char = text[index]
            if char == "{":
                depth += 1
                deepest = max(deepest, depth)
            elif char == "}":
                depth -= 1
                if depth == 0:
                    end = index
                    break
        body = text[start:end]
        line = source.line_of(match.start())
        length = source.line_of(end) - line + 1
        stats.append(FunctionStats(name, line, length, 1 + len(_JS_BRANCH.findall(body)), max(0, deepest - 1)))
    return stats


def _blank_strings_and_comments(text: str) -> str:
    """Replace string and comment contents with spaces (keeping newlines) so braces inside them don't count."""

    def blank(match: re.Match[str]) -> str:
        return re.sub(r"[^\n]", " ", match.group(0))

    pattern = r"//[^\n]*|/\*.*?\*/|'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\"|`(?:\\.|[^`\\])*`"
    return re.sub(pattern, blank, text, flags=re.DOTALL)
