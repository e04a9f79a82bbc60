"""The local sandboxes' seccomp filter: built by libseccomp, every rule documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sandbox_agents.backends.local import seccomp

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def test_the_filter_compiles_to_whole_bpf_instructions() -> None:
    program = seccomp.compile_filter()
    assert program and len(program) % 8 == 0
    assert len(program) // 8 <= 4096  # BPF_MAXINSNS


def test_the_filter_file_is_written_once_and_read_only(tmp_path: Path) -> None:
    first = seccomp.filter_file(tmp_path)
    mtime = first.stat().st_mtime_ns
    again = seccomp.filter_file(tmp_path)
    assert again == first and again.stat().st_mtime_ns == mtime
    assert first.stat().st_mode & 0o777 == 0o444
    assert first.read_bytes() == seccomp.compile_filter()


@pytest.mark.parametrize("name", [*seccomp.DENIED, *seccomp.ENOSYS, *seccomp.CONDITIONAL])
def test_every_filtered_syscall_is_documented_with_its_reason(name: str) -> None:
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ") and f"`{name}`" in line]
    assert rows, f"docs/security.md does not say why {name} is filtered"


def test_the_docs_name_no_syscall_the_filter_does_not_handle() -> None:
    table = [line for line in DOC.read_text().splitlines() if line.startswith("| `")]
    documented = {m for line in table for m in re.findall(r"`([a-z_0-9]+)`", line.split("|")[1])}
    assert documented <= {*seccomp.DENIED, *seccomp.ENOSYS, *seccomp.CONDITIONAL}
