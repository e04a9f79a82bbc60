"""Host-side reads of a local sandbox's workspace: regular files only, bounded, never blocking."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from sandbox_agents.backends.local.fs import WorkspaceFS
from sandbox_agents.errors import SandboxPathError

CAP = 1024


@pytest.fixture
def workspace(tmp_path: Path) -> WorkspaceFS:
    root = tmp_path / "ws"
    root.mkdir()
    return WorkspaceFS(root, uid=os.geteuid(), gid=os.getegid(), sandbox_id="sbx-test", read_cap=CAP)


def test_a_file_within_the_cap_reads_whole(workspace: WorkspaceFS) -> None:
    (workspace.root / "f").write_bytes(b"x" * CAP)
    assert workspace.read("f") == b"x" * CAP


@pytest.mark.timeout(10)
def test_a_huge_sparse_file_is_refused_naming_path_and_cap(workspace: WorkspaceFS) -> None:
    with open(workspace.root / "huge", "wb") as handle:
        handle.truncate(50 * 1024**3)
    with pytest.raises(SandboxPathError) as info:
        workspace.read("huge")
    assert info.value.path == "huge" and str(CAP) in str(info.value)


def test_the_cap_holds_on_what_is_read_even_if_st_size_lies(
    workspace: WorkspaceFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that grows after fstat (or reports a small size) is cut at cap + 1 bytes and refused."""
    (workspace.root / "growing").write_bytes(b"y" * (10 * CAP))
    real_fstat = os.fstat

    def small_fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, *st[1:6], 10, *st[7:]))

    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        reads.append(len(data))
        return data

    monkeypatch.setattr(os, "fstat", small_fstat)  # fs.py calls os.fstat / os.read
    monkeypatch.setattr(os, "read", counting_read)
    with pytest.raises(SandboxPathError, match="read cap"):
        workspace.read("growing")
    assert sum(reads) == CAP + 1


@pytest.mark.timeout(10)
def test_a_fifo_is_refused_at_once_for_reading_and_writing(workspace: WorkspaceFS) -> None:
    os.mkfifo(workspace.root / "pipe")
    with pytest.raises(SandboxPathError, match="FIFO"):
        workspace.read("pipe")
    with pytest.raises(SandboxPathError, match="FIFO"):
        workspace.write("pipe", b"data", None)


@pytest.mark.timeout(10)
def test_a_socket_is_refused(workspace: WorkspaceFS) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(workspace.root / "sock"))
        with pytest.raises(SandboxPathError):
            workspace.read("sock")


def test_a_directory_still_reads_as_is_a_directory(workspace: WorkspaceFS) -> None:
    (workspace.root / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        workspace.read("d")


def test_listing_walks_directory_fds_and_never_follows_links(workspace: WorkspaceFS, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    (workspace.root / "src").mkdir()
    (workspace.root / "src" / "a.py").write_text("a")
    (workspace.root / "link").symlink_to(outside)
    os.mkfifo(workspace.root / "pipe")
    listed = {f.path: f for f in workspace.list("**/*")}
    assert set(listed) == {"src", "src/a.py", "link", "pipe"}
    assert listed["src"].is_dir and not listed["link"].is_dir


def test_a_directory_made_by_a_concurrent_write_is_used_not_an_error(
    workspace: WorkspaceFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race of two writes under one new directory, made certain: the other one mkdirs first."""
    real_mkdir = os.mkdir

    def other_writer_first(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)  # the concurrent write's mkdir
        real_mkdir(path, mode, dir_fd=dir_fd)  # ours: FileExistsError

    monkeypatch.setattr(os, "mkdir", other_writer_first)
    workspace.write("api/server.py", b"print(1)\n", None)
    monkeypatch.undo()
    assert workspace.read("api/server.py") == b"print(1)\n"


def test_many_concurrent_writes_under_new_directories_all_land(workspace: WorkspaceFS) -> None:
    from concurrent.futures import ThreadPoolExecutor

    paths = [f"d{round_}/sub/f{i}.txt" for round_ in range(20) for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda p: workspace.write(p, p.encode(), None), paths))
    assert all(workspace.read(p) == p.encode() for p in paths)
