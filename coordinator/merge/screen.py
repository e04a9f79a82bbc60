"""What of a merge request may reach ``main``: paths that cannot change how git treats other components' files.

A component merges its own source. It may not hand the gate git's own metadata or files
that change how git treats everyone's files once ``main`` is cloned, archived or checked out:

- ``.git`` (a directory or a ``gitdir:`` file) at any depth, in any case (``.GIT``, ``git~1``,
  ``.git.``: the names case-insensitive or Windows checkouts read as ``.git``): hooks,
  ``config`` (``core.fsmonitor``), refs;
- ``.gitmodules`` anywhere: ``main`` holds no submodules;
- ``.gitattributes`` and ``.gitignore`` at the root, where they govern every component's
  files (``* export-ignore`` drops them from ``git archive``, ``filter=`` runs programs on
  checkout, ``.gitignore`` hides them from ``git add``); in a subdirectory only while every
  file under it is the component's own (the component whose merge last wrote it); and no
  component's file may be written under another's;
- a symlink whose target is absolute, leaves the repository, passes through another symlink
  or lands on anything but the component's own files;
- paths that are not clean relative paths (``..``, ``/x``, control characters), and a file
  where the tree has a directory or the other way round.

Such a path is *refused*: it is left out of the merge, which goes on with the rest, and a
warning :class:`~sandbox_agents.verifiers.models.Finding` names it and says why. Junk
(:func:`~coordinator.merge.models.is_junk`) is left out silently, as before. The contract
has no per-component directory, so a component's territory is what it has merged itself.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from coordinator.merge.models import MergeRequest, is_junk
from sandbox_agents.verifiers.models import Finding, Severity

#: Files that tell git how to treat other files of their directory and below.
CONTROL_FILES = frozenset({".gitattributes", ".gitignore"})
SUBMODULES_FILE = ".gitmodules"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def is_git_metadata_name(name: str) -> bool:
    """Whether one path segment is, or would be read as, a ``.git`` directory or file."""
    folded = name.lower().rstrip(". ")
    return folded == ".git" or folded == "git~1"


def bad_path_reason(path: str) -> str | None:
    """Why ``path`` is not a clean workspace-relative path (None when it is)."""
    if not path or path.startswith("/"):
        return "is not a relative path"
    if _CONTROL_CHARS.search(path):
        return "holds control characters"
    try:
        path.encode()
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if posixpath.normpath(path) != path or path == "." or path.split("/")[0] == "..":
        return "is not a normalised path inside the workspace (no '.', '..', '//' or trailing '/')"
    return None


@dataclass
class MainState:
    """What the screen needs to know of ``main``: its files by hash, its symlinks, who wrote each path."""

    files: Mapping[str, str] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)
    owners: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Screened:
    """A request's changes against ``main`` once refused paths are left out."""

    files: dict[str, str]
    """Path → sha256 of regular files to write (not junk, different from ``main``)."""
    links: dict[str, str]
    """Path → target of symlinks to write (different from ``main``)."""
    deleted: list[str]
    """Paths to delete from ``main``."""
    findings: list[Finding]
    """One warning per refused path."""

    @property
    def refused(self) -> list[str]:
        return [f.file for f in self.findings if f.file is not None]


def _refusal(path: str, rule: str, why: str) -> Finding:
    message = f"{path} was not merged: {why}"
    return Finding(file=path, message=message, rule=f"merge.{rule}", severity=Severity.WARNING)


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _under(path: str, directory: str) -> bool:
    return directory == "" or path.startswith(directory + "/")


def screen_request(request: MergeRequest, main: MainState) -> Screened:
    """Split ``request`` into what may be merged and findings for what is refused (see the module docstring)."""
    component = request.component
    findings: list[Finding] = []

    def clean(paths: Iterable[str]) -> list[str]:
        kept = []
        for path in paths:
            reason = bad_path_reason(path)
            if reason is not None:
                findings.append(_refusal(path, "bad_path", f"the path {reason}"))
            elif any(is_git_metadata_name(part) for part in path.split("/")):
                why = "it is git metadata (a .git directory or file); main's history is kept outside every sandbox"
                findings.append(_refusal(path, "git_metadata", why + " and only the merge gate writes it"))
            elif not is_junk(path):
                kept.append(path)
        return kept

    files = {p: request.files[p] for p in clean(sorted(request.files)) if main.files.get(p) != request.files[p]}
    links = {p: request.links[p] for p in clean(sorted(request.links)) if main.links.get(p) != request.links[p]}
    deleted = [p for p in clean(sorted(request.deleted)) if p not in request.files and p not in request.links]

    # Refusals change the tree after the merge, which other rules read: repeat until nothing more is refused.
    while True:
        refused = _refuse_in_tree(component, files, links, deleted, main)
        if not refused:
            break
        for path, (rule, why) in refused.items():
            findings.append(_refusal(path, rule, why))
            files.pop(path, None)
            links.pop(path, None)
    return Screened(files=files, links=links, deleted=deleted, findings=findings)


def _refuse_in_tree(
    component: str, files: Mapping[str, str], links: Mapping[str, str], deleted: list[str], main: MainState
) -> dict[str, tuple[str, str]]:
    """Paths written by the request that the tree after the merge shows must be refused: path → (rule, why)."""
    owners = {p: o for p, o in main.owners.items() if p not in deleted}
    owners.update({p: component for p in (*files, *links)})
    all_links = {**{p: t for p, t in main.links.items() if p not in deleted and p not in files}, **links}
    all_links = {p: t for p, t in all_links.items() if owners.get(p) is not None}
    written = {*files, *links}
    refused: dict[str, tuple[str, str]] = {}

    kept = {p for p in owners if p not in written}  # what the tree keeps of main
    kept_directories = {d for p in kept for d in _parents(p)}
    for path in sorted(written):
        clash = next((d for d in _parents(path) if d in kept), None)
        if clash is not None:
            refused[path] = ("path_conflict", f"{clash} is a file or symlink in main, not a directory")
        elif path in kept_directories:
            refused[path] = ("path_conflict", "main has a directory of that name")
    if not refused:  # the request against itself: a file where it also writes a directory
        directories = {d for p in written for d in _parents(p)}
        for path in sorted(written & directories):
            refused[path] = ("path_conflict", "the request also writes a directory of that name")

    for path in sorted(written - set(refused)):
        name = posixpath.basename(path).lower()
        directory = posixpath.dirname(path)
        if name == SUBMODULES_FILE:
            refused[path] = ("git_control", "submodules are not merged: main holds no gitlinks")
        elif name in CONTROL_FILES and directory == "":
            why = f"a {name} at the root changes how git treats every component's files; put it in a directory"
            refused[path] = ("git_control", why + f" that holds only {component}'s files")
        elif name in CONTROL_FILES:
            foreign = next((p for p in sorted(owners) if _under(p, directory) and owners[p] != component), None)
            if foreign is not None:
                why = f"it would change how git treats {foreign}, which {owners[foreign]} merged"
                refused[path] = ("git_control", why)

    controls = {p: o for p, o in owners.items() if posixpath.basename(p).lower() in CONTROL_FILES}
    for path in sorted(written - set(refused)):
        others = (c for c, o in controls.items() if o != component and _under(path, posixpath.dirname(c)))
        governing = next(others, None)
        if governing is not None:
            why = f"{governing}, which {controls[governing]} merged, would change how git treats it"
            refused[path] = ("git_control", why)

    for path in sorted(set(links) - set(refused)):
        escape = _link_escapes(path, links[path], component, owners, all_links)
        if escape is not None:
            refused[path] = ("symlink", escape)
    return refused


def _link_escapes(
    path: str, target: str, component: str, owners: Mapping[str, str], links: Mapping[str, str]
) -> str | None:
    """Why the symlink ``path`` → ``target`` points out of the component's own files (None when it does not)."""
    if not target or target.startswith("/"):
        return f"the symlink's target {target!r} is absolute or empty"
    if _CONTROL_CHARS.search(target):
        return "the symlink's target holds control characters"
    resolved = posixpath.dirname(path)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if resolved == "":
                return f"the symlink's target {target!r} leaves the repository"
            resolved = posixpath.dirname(resolved)
            continue
        resolved = posixpath.join(resolved, part) if resolved else part
        if resolved in links and resolved != path:
            return f"the symlink's target {target!r} passes through the symlink {resolved}"
    if resolved == "" or resolved == path:
        return f"the symlink's target {target!r} points at the repository's root or at itself"
    reached = sorted(p for p in owners if p == resolved or _under(p, resolved))
    if not reached:
        return f"the symlink's target {target!r} points at nothing in main"
    foreign = next((p for p in reached if owners[p] != component), None)
    if foreign is not None:
        return f"the symlink's target {target!r} reaches {foreign}, which {owners[foreign]} merged"
    return None
