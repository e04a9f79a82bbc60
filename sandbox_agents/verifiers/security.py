"""Security scanner: secrets in code, dangerous calls, and manifests that pull in the unknown.

Pattern rules over the component's source and config files, tuned to what generated code
gets wrong: pasted credentials, ``eval`` on input, shell commands built from strings, HTML
injected with ``innerHTML``, SQL glued together, and dependencies pinned to nothing.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import time
from collections import Counter

from sandbox_agents.backends.base import Sandbox
from sandbox_agents.verifiers.base import (
    SOURCE_SUFFIXES,
    SourceFile,
    VerifyTarget,
    build_report,
    list_paths,
    read_sources,
    scan,
)
from sandbox_agents.verifiers.models import Finding, Severity, VerifierReport

E, W = Severity.ERROR, Severity.WARNING
_CONFIG_SUFFIXES = frozenset({".json", ".yml", ".yaml", ".toml", ".cfg", ".ini", ".env", ".txt", ".sh"})
_SECRET_NAMES = r"(?:api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|token|password|passwd)"
_GENERIC_SECRET = re.compile(_SECRET_NAMES + r"""["']?\s*[:=]\s*["']([^"'\s]{16,})["']""", re.IGNORECASE)
_PLACEHOLDER_VALUE = re.compile(r"^(?:x+|\*+|<.*>|\$\{.*\}|your[_-].*|changeme.*|example.*|test.*|dummy.*)$", re.I)

#: Rules that need no more than the line itself.
LINE_RULES: list[tuple[str, Severity, re.Pattern[str], str]] = [
    ("security.aws_key", E, re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "AWS access key id in source; use a secret"),
    (
        "security.aws_secret",
        E,
        re.compile(r"aws_secret_access_key\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}", re.IGNORECASE),
        "AWS secret access key in source",
    ),
    (
        "security.private_key",
        E,
        re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY-----"),
        "private key in the workspace",
    ),
]
#: Dangerous calls, matched on code only (whole-line comments are skipped).
CODE_RULES: list[tuple[str, Severity, re.Pattern[str], str]] = [
    ("security.eval", E, re.compile(r"(?<![\w.$])eval\s*\("), "eval() runs arbitrary code; parse the data instead"),
    ("security.exec", E, re.compile(r"(?<![\w.$])exec\s*\((?!\s*\))"), "exec() runs arbitrary code"),
    ("security.new_function", W, re.compile(r"\bnew\s+Function\s*\("), "new Function() is eval in disguise"),
    (
        "security.shell_true",
        W,
        re.compile(r"\bsubprocess\.\w+\(.*shell\s*=\s*True"),
        "subprocess with shell=True; pass an argv list",
    ),
    ("security.os_system", W, re.compile(r"\bos\.(?:system|popen)\s*\("), "os.system/os.popen run a shell"),
    (
        "security.child_process_exec",
        E,
        re.compile(r"\b(?:child_process\.)?exec(?:Sync)?\s*\(\s*(?:`[^`]*\$\{|[^)]*[\"'`]\s*\+)"),
        "child_process.exec with a command built from input; use execFile with an argv",
    ),
    ("security.inner_html", W, re.compile(r"\.(?:innerHTML|outerHTML)\s*\+?=(?!=)"), "innerHTML assignment (XSS)"),
    ("security.inner_html", W, re.compile(r"dangerouslySetInnerHTML"), "dangerouslySetInnerHTML (XSS)"),
    ("security.document_write", W, re.compile(r"\bdocument\.write\s*\("), "document.write (XSS)"),
    ("security.pickle", W, re.compile(r"\b(?:pickle|cPickle|dill)\.loads?\s*\("), "unpickling runs arbitrary code"),
    (
        "security.yaml_load",
        W,
        re.compile(r"\byaml\.load\s*\((?!.*Loader\s*=\s*yaml\.SafeLoader)"),
        "yaml.load without SafeLoader; use yaml.safe_load",
    ),
    (
        "security.sql_concat",
        E,
        re.compile(
            r"""(?i)["'`]\s*(?:SELECT|INSERT|UPDATE|DELETE)\b[^"'`]*["'`]\s*(?:\+|%\s*[(\w]|\.format\()"""
            r"""|\bf["'](?:SELECT|INSERT|UPDATE|DELETE)\b[^"']*\{|`(?:SELECT|INSERT|UPDATE|DELETE)\b[^`]*\$\{"""
        ),
        "SQL built by string concatenation; use parameters",
    ),
]


class SecurityScanner:
    """Secrets, dangerous calls and manifest sanity."""

    name = "security"

    async def verify(self, sandbox: Sandbox, target: VerifyTarget) -> VerifierReport:
        started = time.monotonic()
        files = await read_sources(
            sandbox, target, SOURCE_SUFFIXES | _CONFIG_SUFFIXES, names=frozenset({".env", "Dockerfile"})
        )
        code = [f for f in files if f.suffix in SOURCE_SUFFIXES]
        findings = scan(files, LINE_RULES) + scan(code, CODE_RULES, code_only=True) + generic_secrets(files)
        findings += await env_files(sandbox, target)
        for source in files:
            name = posixpath.basename(source.path)
            if name == "package.json":
                findings += package_json(source)
            elif name.startswith("requirements") and name.endswith(".txt"):
                findings += requirements(source)
        return build_report(self.name, findings, started, {"files": len(files)}, error_weight=0.3)


def entropy(value: str) -> float:
    """Shannon entropy in bits per character: real keys are near 4+, words and placeholders lower."""
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def generic_secrets(files: list[SourceFile]) -> list[Finding]:
    """``api_key = "…"`` style assignments whose value looks random enough to be a real credential."""
    out = []
    for source in files:
        for match in _GENERIC_SECRET.finditer(source.text):
            value = match.group(1)
            if _PLACEHOLDER_VALUE.match(value) or entropy(value) < 3.5 or re.search(r"AKIA|ASIA", value):
                continue  # placeholders, words, and AWS ids already reported by their own rule
            out.append(
                Finding(
                    file=source.path,
                    line=source.line_of(match.start()),
                    message="hard-coded credential-like value; read it from the environment",
                    rule="security.hardcoded_secret",
                )
            )
    return out


async def env_files(sandbox: Sandbox, target: VerifyTarget) -> list[Finding]:
    """A ``.env`` in the workspace that ``.gitignore`` does not exclude would be committed with its secrets."""
    paths = await list_paths(sandbox, target)
    envs = [p for p in paths if re.fullmatch(r"\.env(?:\.(?!example|sample|template)[\w.-]+)?", posixpath.basename(p))]
    if not envs:
        return []
    ignored: list[str] = []
    for gitignore in (p for p in paths if posixpath.basename(p) == ".gitignore"):
        ignored += (await sandbox.read_file(gitignore)).decode(errors="replace").split()
    out = []
    for path in envs:
        name = posixpath.basename(path)
        if not any(pattern.strip("/") in (name, ".env*", ".env.*", "*.env") for pattern in ignored):
            out.append(
                Finding(file=path, message=f"{name} would be committed: add it to .gitignore", rule="security.env_file")
            )
    return out


def package_json(source: SourceFile) -> list[Finding]:
    """Wildcard or floating versions, git/URL dependencies and install-time scripts."""
    try:
        manifest = json.loads(source.text)
    except ValueError:
        return [Finding(file=source.path, line=1, message="package.json is not valid JSON", rule="security.manifest")]
    out = []
    for section in ("dependencies", "devDependencies", "optionalDependencies", "peerDependencies"):
        for name, spec in (manifest.get(section) or {}).items():
            spec = str(spec).strip()
            line = _line_of(source, f'"{name}"')
            if spec in ("*", "", "latest", "x") or spec.startswith(">="):
                message = f"{name}@{spec or '(empty)'} floats to any version; pin a range"
                out.append(Finding(file=source.path, line=line, message=message, rule="security.unpinned_dependency"))
            elif re.match(r"(?:git\+|git://|github:|https?://|file:)", spec) or re.fullmatch(
                r"[\w-]+/[\w.-]+(#.*)?", spec
            ):
                message = f"{name} comes from {spec}, outside the registry: unreviewable and mutable"
                out.append(Finding(file=source.path, line=line, message=message, rule="security.url_dependency"))
    for hook in ("preinstall", "install", "postinstall", "prepare"):
        if hook in (manifest.get("scripts") or {}):
            out.append(
                Finding(
                    file=source.path,
                    line=_line_of(source, f'"{hook}"'),
                    severity=W,
                    message=f"{hook} script runs code at install time",
                    rule="security.install_script",
                )
            )
    return out


def requirements(source: SourceFile) -> list[Finding]:
    """``pkg==*``, VCS and URL requirements in a pip requirements file."""
    out = []
    for number, raw in enumerate(source.lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-r"):
            continue
        if re.search(r"(?:git\+|hg\+|svn\+|https?://)", line):
            message = f"{line} installs from a URL or VCS"
            out.append(Finding(file=source.path, line=number, message=message, rule="security.url_dependency"))
        elif re.search(r"[=<>~]=?\s*\*", line):
            out.append(
                Finding(
                    file=source.path,
                    line=number,
                    message=f"{line}: wildcard version",
                    rule="security.unpinned_dependency",
                )
            )
    return out


def _line_of(source: SourceFile, needle: str) -> int:
    index = source.text.find(needle)
    return source.line_of(index) if index >= 0 else 1
