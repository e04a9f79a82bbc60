"""The local sandbox against an attacker inside it (issue 14): each layer, tried from inside.

Every command here runs as untrusted code would: through ``exec`` of the local backend,
with the native entry helper and with the shell fallback chain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandbox_agents.backends.base import MAX_READ_BYTES, ExecResult, SandboxSpec, SandboxStatus
from sandbox_agents.backends.config import LocalBackendConfig
from sandbox_agents.backends.local import cgroup as cgroup_module
from sandbox_agents.backends.local.backend import ALLOW_UNLIMITED_ENV, LocalBackend
from sandbox_agents.errors import BackendUnavailableError, SandboxPathError
from tests.integration.sandbox_backends import open_backend

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers below are x86-64's")

#: x86-64 syscall numbers the probe calls: each must fail with EPERM inside a sandbox.
DENIED_PROBES = {
    "keyctl": (250, (0, 0)),
    "add_key": (248, (0, 0, 0, 0, 0)),
    "request_key": (249, (0, 0, 0, 0)),
    "bpf": (321, (0, 0, 0)),
    "io_uring_setup": (425, (1, 0)),
    "perf_event_open": (298, (0, 0, -1, -1, 0)),
    "userfaultfd": (323, (0,)),
    "unshare(CLONE_NEWUSER)": (272, (0x10000000,)),
    "unshare(CLONE_NEWNS)": (272, (0x00020000,)),
    "setns": (308, (0, 0)),
    "mount": (165, (0, 0, 0, 0, 0)),
    "umount2": (166, (0, 0)),
    "pivot_root": (155, (0, 0)),
    "open_tree": (428, (-100, 0, 0)),
    "fsopen": (430, (0, 0)),
    "move_mount": (429, (0, 0, 0, 0, 0)),
    "open_by_handle_at": (304, (0, 0, 0)),
    "kexec_load": (246, (0, 0, 0, 0)),
    "init_module": (175, (0, 0, 0)),
    "finit_module": (313, (0, 0, 0)),
    "ptrace(PTRACE_ATTACH, 1)": (101, (16, 1, 0, 0)),
    "process_vm_readv": (310, (1, 0, 0, 0, 0, 0)),
    "personality(ADDR_NO_RANDOMIZE)": (135, (0x0040000,)),
    "syslog": (103, (3, 0, 0)),
    "acct": (163, (0,)),
    "swapon": (167, (0, 0)),
    "reboot": (169, (0, 0, 0, 0)),
    "settimeofday": (164, (0, 0)),
    "clock_settime": (227, (0, 0)),
    "quotactl": (179, (0, 0, 0, 0)),
    "name_to_handle_at": (303, (0, 0, 0, 0, 0)),
    "lookup_dcookie": (212, (0, 0, 0)),
    "clone(CLONE_NEWUSER)": (56, (0x10000000 | 17, 0, 0, 0, 0)),
    "clone(CLONE_NEWNET)": (56, (0x40000000 | 17, 0, 0, 0, 0)),
}

_PROBE = """
import ctypes, errno, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
for name, (nr, args) in json.loads(sys.argv[1]).items():
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    out[name] = "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
print(json.dumps(out))
"""

ENTRIES = ["native", "shell"]


async def poll(check, timeout_s: float, every_s: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if await check():
            return True
        await asyncio.sleep(every_s)
    return False


@pytest.fixture(params=ENTRIES)
async def local(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LocalBackend]:
    """The local backend, entering commands with the native helper or with the shell chain."""
    if request.param == "shell":
        monkeypatch.setenv("KRIPTIK_ENTER", "shell")
    async with open_backend("local", tmp_path) as opened:
        assert isinstance(opened.backend, LocalBackend)
        yield opened.backend


# --- layer 1: the syscall filter and no nested user namespaces ------------------------------


async def test_the_init_and_every_entered_command_run_under_the_seccomp_filter(local: LocalBackend) -> None:
    sandbox = await local.create(SandboxSpec())
    result = await sandbox.exec(
        "grep '^Seccomp:' /proc/1/status /proc/self/status; sh -c \"grep '^Seccomp:' /proc/self/status\""
    )
    assert result.ok, result.stderr
    assert [line.split()[-1] for line in result.stdout.splitlines()] == ["2", "2", "2"]
    await sandbox.terminate()


async def test_dangerous_syscalls_answer_eperm(local: LocalBackend) -> None:
    import json

    sandbox = await local.create(SandboxSpec())
    probes = {name: [nr, list(args)] for name, (nr, args) in DENIED_PROBES.items()}
    result = await sandbox.exec(["python3", "-c", _PROBE, json.dumps(probes)], timeout=30)
    assert result.ok, result.stderr
    answers = json.loads(result.stdout)
    assert answers == dict.fromkeys(DENIED_PROBES, "EPERM")
    await sandbox.terminate()


async def test_nested_user_namespaces_fail(local: LocalBackend) -> None:
    sandbox = await local.create(SandboxSpec())
    for command in ("unshare -U true", "unshare -Ur true", "unshare -Urm true", "unshare -n true"):
        result = await sandbox.exec(command)
        assert result.exit_code != 0, f"{command!r} succeeded inside the sandbox"
    await sandbox.terminate()


async def test_normal_programs_still_work_under_the_filter(local: LocalBackend) -> None:
    """Threads, fork, plain clone(2), pipes, python, git and (when installed) node all run."""
    sandbox = await local.create(SandboxSpec())
    threads = (
        "import threading, subprocess, os\n"
        "seen = []\n"
        "ts = [threading.Thread(target=seen.append, args=(i,)) for i in range(8)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "pid = os.fork()\n"
        "if pid == 0: os._exit(7)\n"
        "assert os.waitpid(pid, 0)[1] >> 8 == 7\n"
        "print(len(seen), subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip())\n"
    )
    result = await sandbox.exec(["python3", "-c", threads], timeout=30)
    assert (result.exit_code, result.stdout) == (0, "8 child\n"), result.stderr
    git = await sandbox.exec(
        "git init -q r && cd r && echo x > f && git add f && git -c user.email=a@b -c user.name=a commit -qm m "
        "&& git log --oneline | wc -l && echo a b c | tr ' ' '\\n' | sort -r | head -1",
        timeout=30,
    )
    assert (git.exit_code, git.stdout) == (0, "1\nc\n"), git.stderr
    if (await sandbox.exec("command -v node")).ok:
        node = await sandbox.exec(
            [
                "node",
                "-e",
                "const {Worker}=require('worker_threads');new Worker('1',{eval:true}).on('exit',c=>console.log('w',c))",
            ],
            timeout=30,
        )
        assert (node.exit_code, node.stdout) == (0, "w 0\n"), node.stderr
    await sandbox.terminate()


async def test_a_command_never_runs_unfiltered(local: LocalBackend, tmp_path: Path) -> None:
    """Without a loadable filter the entry refuses (exit 126) and the command does not run."""
    sandbox = await local.create(SandboxSpec())
    broken = tmp_path / "broken.bpf"
    broken.write_bytes(b"1234567")  # not whole BPF instructions
    for bad in (broken, tmp_path / "missing.bpf"):
        local._seccomp = bad  # noqa: SLF001
        result = await sandbox.exec("touch ran")
        assert result.exit_code == 126, (bad, result)
    local._seccomp = None  # noqa: SLF001
    local._checked = False  # noqa: SLF001  (the next call finds the real filter again)
    assert not (await sandbox.exec("test -e ran")).ok
    await sandbox.terminate()


# --- layer 2: commands inside the sandbox's user namespace ----------------------------------


async def test_commands_join_the_sandbox_user_namespace_and_hold_no_namespace_capabilities(
    local: LocalBackend,
) -> None:
    """A command is in the init's user namespace: the sandbox's mount, network and uts
    namespaces belong to bwrap's outer one, so no mount, umount or network change works,
    whatever the filter says (``ip`` speaks netlink, which the filter never sees)."""
    sandbox = await local.create(SandboxSpec())
    same = await sandbox.exec('test "$(readlink /proc/self/ns/user)" = "$(readlink /proc/1/ns/user)"')
    assert same.ok, "the command is not in the sandbox's user namespace"
    for command in (
        "ip link set lo down",
        "ip addr add 10.9.9.9/32 dev lo",
        "mount -t tmpfs none /tmp",
        "umount /proc",
        "umount -l /workspace",
        "hostname elsewhere",
    ):
        result = await sandbox.exec(command)
        assert result.exit_code != 0, f"{command!r} succeeded inside the sandbox"
    state = await sandbox.exec("ip -o link show lo; ip -o addr show lo; hostname; test -d /proc/self && echo proc")
    assert "UP" in state.stdout and "10.9.9.9" not in state.stdout and "sandbox\nproc\n" in state.stdout
    await sandbox.terminate()


# --- layer 3: a host uid per sandbox ---------------------------------------------------------


async def test_two_sandboxes_run_as_different_uids_and_own_their_files(local: LocalBackend) -> None:
    first, second = await local.create(SandboxSpec()), await local.create(SandboxSpec())
    uids = []
    for sandbox in (first, second):
        await sandbox.write_file("from-host.txt", "x")
        result = await sandbox.exec("id -u; touch from-inside.txt")
        uid = int(result.stdout)
        assert uid != 0 and local.uids.first <= uid <= local.uids.last
        for name in ("from-host.txt", "from-inside.txt", "."):
            assert (sandbox.workspace / name).stat().st_uid == uid
        uids.append(uid)
    assert uids[0] != uids[1]
    await first.terminate()
    await second.terminate()


async def test_a_uid_is_given_back_only_when_its_sandbox_is_gone(local: LocalBackend) -> None:
    sandbox = await local.create(SandboxSpec())
    uid = sandbox._state.uid  # noqa: SLF001
    assert (local.uids.holder(uid) or {}).get("sandbox") == sandbox.id
    assert not local.uids.release(uid, "sbx-someone-else")
    local.uids.reclaim_stale()  # a live sandbox's claim is never stale
    assert (local.uids.holder(uid) or {}).get("sandbox") == sandbox.id
    await sandbox.terminate()
    assert local.uids.holder(uid) is None


async def test_a_restored_snapshot_belongs_to_the_new_sandbox_uid(local: LocalBackend) -> None:
    sandbox = await local.create(SandboxSpec())
    await sandbox.exec("mkdir -p d && echo hi > d/f && chmod 640 d/f")
    restored = await local.restore(await sandbox.snapshot())
    owners = await restored.exec("id -u; stat -c '%u %a' d/f")
    uid, (owner, mode) = owners.stdout.split("\n")[0], owners.stdout.split("\n")[1].split()
    assert owner == uid and mode == "640" and uid != str(sandbox._state.uid)  # noqa: SLF001
    await sandbox.terminate()
    await restored.terminate()


# --- layer 4: bounded, non-blocking host reads ----------------------------------------------


@pytest.mark.timeout(60)
async def test_read_file_of_a_50_gb_sparse_file_answers_an_error_naming_path_and_cap(local: LocalBackend) -> None:
    sandbox = await local.create(SandboxSpec())
    assert (await sandbox.exec("truncate -s 50G big && mkdir -p d && truncate -s 50G d/big2")).ok
    for path in ("big", "d/big2"):
        with pytest.raises(SandboxPathError) as info:
            await sandbox.read_file(path)
        assert info.value.path == path and str(MAX_READ_BYTES) in str(info.value)
    await sandbox.terminate()


@pytest.mark.timeout(60)
async def test_a_fifo_read_answers_an_error_while_the_sandbox_stays_usable(local: LocalBackend) -> None:
    sandbox = await local.create(SandboxSpec())
    assert (await sandbox.exec("mkfifo pipe && mkfifo held && (sleep 30 > held &)")).ok
    reads = [sandbox.read_file("pipe"), sandbox.read_file("held"), sandbox.write_file("pipe", "x")]
    other = sandbox.exec(["echo", "still here"])
    *errors, result = await asyncio.gather(*reads, other, return_exceptions=True)
    assert all(isinstance(error, SandboxPathError) for error in errors), errors
    assert isinstance(result, ExecResult) and result.stdout == "still here\n"
    listed = {f.path for f in await sandbox.list_files()}
    assert {"pipe", "held"} <= listed
    await sandbox.terminate()


# --- layer 5: the TTL is the host's -----------------------------------------------------------

_TAMPER = r"""
for d in /run /run/* /run/*/* /tmp /home/sandbox /workspace; do
  [ -e "$d" ] || continue
  mount -t tmpfs none "$d" 2>/dev/null && echo "mounted $d"
  mount --bind /tmp "$d" 2>/dev/null && echo "bound $d"
  umount -l "$d" 2>/dev/null && echo "unmounted $d"
done
find / -xdev -name 'deadline*' 2>/dev/null | sed 's/^/found /'
for f in $(find /run /tmp /workspace /home -writable 2>/dev/null); do
  [ -f "$f" ] && echo 99999999999 > "$f"
done
rm -rf /run/* /run/.[!.]* 2>/dev/null
mkdir -p /run/kriptik 2>/dev/null && echo 99999999999 > /run/kriptik/deadline 2>/dev/null
kill -STOP 1 2>/dev/null
true
"""


@pytest.mark.timeout(120)
async def test_a_sandbox_that_tampers_with_everything_it_sees_still_ends_at_its_ttl(local: LocalBackend) -> None:
    sandbox = await local.create(SandboxSpec(timeout_s=12))  # room for the tamper script on a loaded host
    tamper = await sandbox.exec(["sh", "-c", _TAMPER], timeout=30)
    assert not [line for line in tamper.stdout.splitlines() if line.split()[0] in ("mounted", "bound", "unmounted")]
    assert "found" not in tamper.stdout  # no deadline in its reach
    assert sandbox.deadline_file.exists()  # the host's copy is intact

    async def ended() -> bool:
        return await sandbox.status() == SandboxStatus.DEAD

    assert await poll(ended, 60, 0.2)
    await sandbox.terminate()


@pytest.mark.timeout(120)
async def test_the_ttl_holds_when_no_host_process_of_ours_is_left(local: LocalBackend) -> None:
    """The watchdog is the launcher itself: no proxy, backend object or heartbeat has to live."""
    sandbox = await local.create(SandboxSpec(timeout_s=3))
    sandbox_id = sandbox.id
    del sandbox
    fresh = LocalBackend(local.config)

    async def ended() -> bool:
        return await (await fresh.from_id(sandbox_id)).status() == SandboxStatus.DEAD

    assert await poll(ended, 60, 0.2)


# --- layer 6: no cgroups, no sandboxes (unless the operator says so) ------------------------


@pytest.fixture
def unwritable_cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A cgroup v1 layout (memory, pids, cpu, cpuacct) on a read-only mount, as the backend's cgroup root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount the fake cgroup layout read-only")
    root = tmp_path / "cgroup"
    for controller in ("memory", "pids", "cpu", "cpuacct"):
        (root / controller).mkdir(parents=True)
        (root / controller / "cgroup.procs").write_text("")
    subprocess.run(["mount", "--bind", str(root), str(root)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True)
        monkeypatch.setattr(cgroup_module, "CGROUP_ROOT", root)
        monkeypatch.delenv(ALLOW_UNLIMITED_ENV, raising=False)
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


async def test_without_working_cgroups_the_backend_refuses_to_start_sandboxes(
    unwritable_cgroups: Path, tmp_path: Path
) -> None:
    backend = LocalBackend(LocalBackendConfig(root=tmp_path / "sandboxes"))
    with pytest.raises(BackendUnavailableError, match=ALLOW_UNLIMITED_ENV):
        await backend.create(SandboxSpec())
    with pytest.raises(BackendUnavailableError):
        await LocalBackend(LocalBackendConfig(root=tmp_path / "sandboxes", standby=1)).warm()
    assert not list((tmp_path / "sandboxes").glob("sbx-*"))
    await backend.purge()


@pytest.mark.parametrize("opt_in", ["config", "env"])
async def test_an_operator_may_opt_into_unlimited_sandboxes_and_the_log_says_so_loudly(
    unwritable_cgroups: Path,
    tmp_path: Path,
    opt_in: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if opt_in == "env":
        monkeypatch.setenv(ALLOW_UNLIMITED_ENV, "1")
    config = LocalBackendConfig(root=tmp_path / "sandboxes", allow_unlimited=opt_in == "config")
    backend = LocalBackend(config)
    with caplog.at_level(logging.ERROR, logger="sandbox_agents.backends.local.backend"):
        sandbox = await backend.create(SandboxSpec())
        assert (await sandbox.exec(["echo", "unlimited"])).stdout == "unlimited\n"
    assert backend.unlimited
    assert [r for r in caplog.records if r.levelno >= logging.ERROR and "UNLIMITED SANDBOXES" in r.getMessage()]
    await backend.purge()
