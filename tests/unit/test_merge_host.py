"""The main repo on the gate's host (real git, a temp dir) and the main-test copy (fake backend)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from coordinator.merge.host_repo import HostGitRepo, MergeGitError
from coordinator.merge.sandbox import MainTestSandbox, SandboxMainCopy, request_from_sandbox
from sandbox_agents.backends.base import Sandbox, SandboxSpec
from sandbox_agents.backends.fake import FakeBackend
from sandbox_agents.errors import InvalidInputError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
async def repo(tmp_path: Path) -> HostGitRepo:
    repo = HostGitRepo(tmp_path / "gates" / "b1.git")
    assert await repo.init()
    return repo


async def merge(repo: HostGitRepo, component: str, files: dict[str, bytes], **kw: object) -> str:
    await repo.stage(f"merge/{component}", files, [], f"m\n\nKriptik-Component: {component}", **kw)  # type: ignore[arg-type]
    return await repo.accept(f"merge/{component}")


async def test_a_new_repo_is_bare_private_and_has_no_hooks(repo: HostGitRepo) -> None:
    assert repo.git_dir.stat().st_mode & 0o777 == 0o700
    assert not (repo.git_dir / "hooks").exists() and (repo.git_dir / "HEAD").exists()
    assert await repo.files() == {} and await repo.merged() == [] and len(await repo.head()) == 40
    assert await repo.tree_hash() == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's empty tree


async def test_merges_commit_files_and_symlinks_and_record_who_wrote_each_path(repo: HostGitRepo) -> None:
    first = await repo.head()
    await merge(repo, "api", {"api/server.py": b"print(1)\n", "README.md": b"hi"})
    head = await merge(
        repo, "web", {"web/index.html": b"<h1>x</h1>", "README.md": b"hi v2"}, links={"web/i": "index.html"}
    )
    assert head == await repo.head() != first
    assert await repo.files() == {
        "README.md": sha(b"hi v2"),
        "api/server.py": sha(b"print(1)\n"),
        "web/index.html": sha(b"<h1>x</h1>"),
    }
    assert await repo.links() == {"web/i": "index.html"}
    assert await repo.owners() == {"README.md": "web", "api/server.py": "api", "web/index.html": "web", "web/i": "web"}
    assert await repo.merged() == ["api", "web"]
    assert await repo.tree(1024) == {
        "README.md": b"hi v2",
        "api/server.py": b"print(1)\n",
        "web/index.html": b"<h1>x</h1>",
    }
    await repo.stage("merge/api", {}, ["README.md"], "m\n\nKriptik-Component: api")
    await repo.accept("merge/api")
    assert "README.md" not in await repo.owners() and "README.md" not in await repo.files()


async def test_the_tree_is_the_same_git_add_would_commit(repo: HostGitRepo, tmp_path: Path) -> None:
    files = {"a.py": b"1\n", "d/b.txt": b"2\n", "d/e/c.md": b"3\n"}
    await merge(repo, "api", files)
    work = tmp_path / "work"
    for path, data in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_bytes(data)
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run(["git", "-C", str(work), "add", "."], check=True)
    expected = subprocess.run(["git", "-C", str(work), "write-tree"], check=True, capture_output=True, text=True)
    assert await repo.tree_hash() == expected.stdout.strip()


async def test_attributes_in_the_tree_change_nothing_the_gate_reads(repo: HostGitRepo) -> None:
    files = {".gitattributes": b"* export-ignore\n*.py filter=evil\n", ".gitignore": b"*\n", "api/s.py": b"x"}
    await merge(repo, "api", files)  # the screen would refuse the first two; the repo must not care either way
    assert await repo.tree(1024) == files
    assert set(await repo.files()) == set(files)


async def test_a_hook_in_the_repo_never_runs(repo: HostGitRepo, tmp_path: Path) -> None:
    marker = tmp_path / "hook-ran"
    hooks = repo.git_dir / "hooks"
    hooks.mkdir()
    for name in ("pre-commit", "post-commit", "reference-transaction", "post-update"):
        (hooks / name).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (hooks / name).chmod(0o755)
    await merge(repo, "api", {"api/s.py": b"x"})
    await repo.stage("merge/web", {"web/i.html": b"y"}, [], "m\n\nKriptik-Component: web")
    await repo.discard("merge/web")
    assert not marker.exists()


async def test_a_path_git_would_drop_fails_the_stage_instead_of_vanishing(repo: HostGitRepo) -> None:
    with pytest.raises(MergeGitError, match="left out"):
        await repo.stage("merge/api", {".git/hooks/pre-commit": b"evil", "api/s.py": b"x"}, [], "m")
    assert await repo.files() == {}


async def test_discard_leaves_main_and_a_restarted_repo_drops_merge_branches(repo: HostGitRepo) -> None:
    await merge(repo, "api", {"api/s.py": b"x"})
    head, tree = await repo.head(), await repo.tree_hash()
    await repo.stage("merge/web", {"web/i.html": b"y"}, ["api/s.py"], "m\n\nKriptik-Component: web")
    assert await repo.head() == head
    again = HostGitRepo(repo.git_dir)
    assert not await again.init()
    refs = subprocess.run(["git", "--git-dir", str(repo.git_dir), "for-each-ref"], capture_output=True, text=True)
    assert "merge/" not in refs.stdout
    assert (await again.head(), await again.tree_hash(), await again.merged()) == (head, tree, ["api"])
    await again.discard("merge/web")  # gone already: fine


async def test_accept_is_a_fast_forward_only(repo: HostGitRepo) -> None:
    await repo.stage("merge/api", {"api/s.py": b"x"}, [], "m\n\nKriptik-Component: api")
    await merge(repo, "web", {"web/i.html": b"y"})  # main moved on since merge/api was staged
    with pytest.raises(MergeGitError):
        await repo.accept("merge/api")
    assert await repo.merged() == ["web"]


async def test_a_commits_changes_are_each_files_patch_against_its_parent(repo: HostGitRepo) -> None:
    first = await merge(repo, "api", {"api/a.py": b"a = 1\n", "api/old.py": b"x\n", "api/diff --git b.txt": b"y\n"})
    await repo.stage("merge/api", {"api/a.py": b"a = 2\n", "api/new.py": b"+diff --git a/x b/x\n"}, ["api/old.py"], "m")
    second = await repo.accept("merge/api")
    commit, parent, message = await repo.commit_of(second[:12])
    assert (commit, parent, message) == (second, first, "m")
    changes = {path: (status, patch.decode()) for status, path, patch in await repo.changes(parent, commit)}
    assert {path: status for path, (status, _) in changes.items()} == {
        "api/a.py": "M",
        "api/new.py": "A",
        "api/old.py": "D",
    }
    assert "-a = 1\n+a = 2" in changes["api/a.py"][1] and changes["api/new.py"][1].startswith("diff --git a/api/new.py")
    assert (
        "++diff --git a/x b/x" in changes["api/new.py"][1]
    )  # a content line that looks like a header stays in its file
    with pytest.raises(InvalidInputError):
        await repo.commit_of("main~1")
    with pytest.raises(LookupError):
        await repo.commit_of("0" * 40)


async def test_tree_refuses_more_than_max_bytes(repo: HostGitRepo) -> None:
    await merge(repo, "api", {"api/big": b"x" * 100})
    with pytest.raises(ValueError, match="more than 10"):
        await repo.tree(10)


# --- the main-test copy --------------------------------------------------------------------


class Renewer:
    """Fresh fake sandboxes; counts them and terminates the one replaced."""

    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self.made: list[Sandbox] = []

    async def __call__(self) -> Sandbox:
        sandbox = await self.backend.create(SandboxSpec())
        self.made.append(sandbox)
        return sandbox


async def test_the_copy_applies_changes_and_a_reset_renews_the_sandbox_with_main_only() -> None:
    backend = FakeBackend()
    first = await backend.create(SandboxSpec())
    renew = Renewer(backend)
    copy = SandboxMainCopy(MainTestSandbox(first), renew)
    await copy.apply({"api/s.py": b"x", "web/.gitignore": b"*.log"}, {}, [])
    await first.write_file("api/s.py", b"tampered by a candidate")
    await first.write_file(".git/hooks/pre-commit", b"evil")
    await first.write_file(".gitattributes", b"* export-ignore")
    assert await copy.strays() == [".git/hooks/pre-commit", ".gitattributes"]  # web/.gitignore is the tree's
    await copy.apply({}, {}, ["api/s.py"])
    assert [f.path for f in await first.list_files() if not f.is_dir] == [
        ".git/hooks/pre-commit",
        ".gitattributes",
        "web/.gitignore",
    ]

    await copy.reset({"api/s.py": b"main"}, {})
    fresh = copy.sandbox.current
    assert renew.made == [fresh] and fresh.id != first.id
    assert [f.path for f in await fresh.list_files() if not f.is_dir] == ["api/s.py"]
    assert await fresh.read_file("api/s.py") == b"main" and await copy.strays() == []


async def test_the_copy_names_the_files_checks_changed_added_or_removed_and_leaves_junk_alone() -> None:
    backend = FakeBackend()
    sandbox = await backend.create(SandboxSpec())
    copy = SandboxMainCopy(MainTestSandbox(sandbox), Renewer(backend))
    main = {"api/s.py": b"x", "api/store.py": b"y", "api/gone.py": b"z"}
    await copy.apply(main, {}, [])
    await sandbox.write_file("api/store.py", b"rewritten by a check")
    await sandbox.remove("api/gone.py")
    await sandbox.write_file("api/notes.json", b'["buy milk"]')
    await sandbox.write_file("node_modules/x/index.js", b"installed")
    stale, extra = await copy.drift({p: sha(b) for p, b in main.items()})
    assert (stale, extra) == (["api/gone.py", "api/store.py"], ["api/notes.json"])


# --- merge requests --------------------------------------------------------------------------


async def test_a_merge_request_leaves_out_what_the_workspaces_gitignore_files_ignore() -> None:
    sandbox = await FakeBackend().create(SandboxSpec())
    workspace = {
        ".gitignore": b"*.sqlite\n",
        "backend/.gitignore": b"*.json\n!package.json\ndata/\n",
        "backend/server.py": b"print(1)\n",
        "backend/package.json": b"{}",
        "backend/notes.json": b'["written by the unit test"]',
        "backend/data/cache.json": b"{}",
        "backend/app.sqlite": b"db",
        "web/notes.json": b"[]",  # backend/.gitignore does not reach web/
    }
    for path, data in workspace.items():
        await sandbox.write_file(path, data)
    request = await request_from_sandbox(sandbox, build_id="b1", component="backend", slot="backend")
    assert sorted(request.files) == [
        ".gitignore",
        "backend/.gitignore",
        "backend/package.json",
        "backend/server.py",
        "web/notes.json",
    ]
    assert request.files["backend/server.py"] == sha(b"print(1)\n")
