"""One local sandbox: commands through ``nsenter``, files from the host, snapshots, ports."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from sandbox_agents.backends.base import (
    ExecChunk,
    ExecRequest,
    ExecResult,
    FileInfo,
    InstallRequest,
    InstallResult,
    NetworkPolicy,
    SandboxSpec,
    SandboxStatus,
    SnapshotRef,
    exec_request,
)
from sandbox_agents.backends.local.cgroup import SandboxCgroups
from sandbox_agents.backends.local.enter import entry_argv
from sandbox_agents.backends.local.fs import WorkspaceFS
from sandbox_agents.backends.local.host import (
    free_port,
    kill_pid,
    port_open,
    runs,
    wait_for,
    wait_pidfile,
)
from sandbox_agents.backends.local.launch import SANDBOX_HOME, boottime_deadline, process_start_time
from sandbox_agents.backends.local.network import (
    apply_filter,
    check_network_tools,
    host_networks,
    resolve,
    ruleset,
    start_slirp,
)
from sandbox_agents.backends.local.proc import ProcOutput, run_process
from sandbox_agents.backends.local.profiles import profile
from sandbox_agents.backends.local.state import Forwarder, LocalState, _libc, unmount
from sandbox_agents.backends.local.uids import UidPool
from sandbox_agents.backends.paths import workspace_relative
from sandbox_agents.errors import SandboxDeadError, SandboxError, SandboxPathError, SandboxTimeoutError, SnapshotError

_MS_REMOUNT = 32


class SandboxHost(Protocol):
    """What a sandbox needs of the backend that made it (a protocol: backend.py imports this module)."""

    @property
    def root(self) -> Path: ...

    @property
    def snapshots_dir(self) -> Path: ...

    @property
    def seccomp_filter(self) -> Path: ...

    @property
    def uids(self) -> UidPool: ...

    def install_into(self, sandbox: LocalSandbox, request: InstallRequest) -> InstallResult: ...


class LocalSandbox:
    """A handle on one local sandbox; many handles (in many processes) may share one sandbox."""

    def __init__(self, backend: SandboxHost, state: LocalState, cgroups: SandboxCgroups) -> None:
        self._backend = backend
        self._state = state
        self.cgroups = cgroups
        self._base = backend.root / state.id
        self._fs = WorkspaceFS(self._base / "fs" / "workspace", uid=state.uid, gid=state.uid, sandbox_id=state.id)
        self._deadline_written = 0.0
        self._execs = 0

    @property
    def id(self) -> str:
        return self._state.id

    @property
    def spec(self) -> SandboxSpec:
        return self._state.spec

    @property
    def workspace(self) -> Path:
        """The workspace directory on the host (tests and snapshots read it)."""
        return self._base / "fs" / "workspace"

    @property
    def uid(self) -> int:
        """The host uid the sandbox's processes run as."""
        return self._state.uid

    def read_host(self, rel: str, *, cap: int) -> bytes:
        """A workspace file read by the host, at most ``cap`` bytes (``FileNotFoundError`` if absent)."""
        return WorkspaceFS(self.workspace, uid=self.uid, gid=self.uid, sandbox_id=self.id, read_cap=cap).read(rel)

    def write_host(self, rel: str, data: bytes) -> None:
        """Write a workspace file from the host, as the sandbox's uid (no link followed)."""
        self._fs.write(rel, data, None)

    def run_sync(self, request: ExecRequest) -> ProcOutput:
        """Run one command to its end in this thread (the installer's; ``exec`` is the async API)."""
        self._touch()
        return self._run(request)

    def open_dir(self, rel: str) -> int:
        """An fd of a workspace directory reached without following links (the caller closes it)."""
        return self._fs.open_dir(rel)

    # --- liveness and deadlines --------------------------------------------------------

    def alive(self) -> bool:
        st = self._state
        if st.terminated or st.child_pid <= 0 or st.child_start is None:
            return False
        if st.launcher_start is not None and process_start_time(st.launcher_pid) != st.launcher_start:
            return False  # the launcher is gone: bwrap and the whole tree die with it
        return process_start_time(st.child_pid) == st.child_start

    def _check_alive(self) -> None:
        if not self.alive():
            why = "terminated" if self._state.terminated else "dead (its processes are gone or it expired)"
            raise SandboxDeadError(f"sandbox {self.id} is {why}", sandbox_id=self.id)

    def write_deadline(self, *, force: bool = False) -> None:
        """Write min(TTL, now + idle timeout) to the host-only file the sandbox's watchdog reads."""
        st = self._state
        deadline = st.ttl_deadline
        if st.spec.idle_timeout_s is not None:
            deadline = min(deadline, time.time() + st.spec.idle_timeout_s)
        if force or abs(deadline - self._deadline_written) >= 1.0:
            path = self.deadline_file
            tmp = path.with_name(f".deadline.{os.getpid()}.tmp")
            tmp.write_text(f"{boottime_deadline(deadline)}\n")
            os.replace(tmp, path)
            self._deadline_written = deadline

    @property
    def deadline_file(self) -> Path:
        """Where the deadline lives: in the host's state directory, bound nowhere into the sandbox."""
        return self._base / "deadline"

    def _touch(self) -> None:
        self._check_alive()
        if self._state.spec.idle_timeout_s is not None:
            self.write_deadline()

    def _save(self) -> None:
        self._state.save(self._base / "state.json")

    # --- commands ----------------------------------------------------------------------

    def _env(self, request: ExecRequest) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": SANDBOX_HOME,
            "USER": "sandbox",
            "LANG": "C.UTF-8",
            "TERM": "dumb",
        }
        env.update(profile(self.spec.profile).env)
        env.update(self.spec.env)
        env.update(self.spec.secrets)  # declared secrets only; nothing else of the host's env
        env.update(request.env)
        return env

    def _argv(self, request: ExecRequest, group: str) -> list[str]:
        cwd = "-"
        if request.cwd:
            rel = workspace_relative(request.cwd, workdir=self.spec.workdir, sandbox_id=self.id)
            if rel != ".":
                cwd = f"{self.spec.workdir}/{rel}"
        return entry_argv(
            init_pid=self._state.child_pid,
            uid=self._state.uid,
            cwd=cwd,
            seccomp=self._backend.seccomp_filter,
            cgroup_files=self.cgroups.join_files(group),
            command=request.argv(),
        )

    def _run(self, request: ExecRequest, on_chunk=None) -> ProcOutput:  # type: ignore[no-untyped-def]
        self._execs += 1
        group = f"x{os.getpid()}-{self._execs}-{uuid.uuid4().hex[:6]}"
        self.cgroups.new_exec_group(group)

        def kill_tree(proc: subprocess.Popen[bytes]) -> None:
            self.cgroups.kill_group(group)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        stdin = request.stdin.encode() if isinstance(request.stdin, str) else request.stdin
        try:
            return run_process(
                self._argv(request, group),
                env=self._env(request),
                stdin=stdin,
                timeout_s=request.timeout_s,
                output_cap=request.output_cap,
                on_timeout=kill_tree,
                on_chunk=on_chunk,
            )
        finally:
            if not self.cgroups.exec_group_pids(group):
                self.cgroups.remove_exec_group(group)

    def _result(self, request: ExecRequest, out: ProcOutput) -> ExecResult:
        stdout = out.stdout.decode(errors="replace")
        stderr = out.stderr.decode(errors="replace")
        if out.timed_out:
            raise SandboxTimeoutError(
                f"command {request.argv()!r} timed out after {request.timeout_s}s; its process tree was killed",
                timeout_s=request.timeout_s or 0.0,
                stdout=stdout,
                stderr=stderr,
                sandbox_id=self.id,
            )
        code = out.exit_code if out.exit_code is not None else -1
        if code < 0:
            code = 128 - code  # killed by a signal: the shell's convention (137 = SIGKILL, the OOM killer)
        if code == 137 and not self.alive():
            raise SandboxDeadError(f"sandbox {self.id} died during the command", sandbox_id=self.id)
        return ExecResult(
            exit_code=code, stdout=stdout, stderr=stderr, duration_s=out.duration_s, truncated=out.truncated
        )

    async def exec(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecResult:
        request = exec_request(command, cwd, env, timeout, stdin)
        self._touch()
        out = await asyncio.to_thread(self._run, request)
        return self._result(request, out)

    async def exec_stream(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[ExecChunk]:
        request = exec_request(command, cwd, env, timeout)
        self._touch()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ExecChunk] = asyncio.Queue()

        def on_chunk(stream: str, data: bytes) -> None:
            chunk = ExecChunk(stream=stream, data=data.decode(errors="replace"))  # type: ignore[arg-type]
            loop.call_soon_threadsafe(queue.put_nowait, chunk)

        task = loop.create_task(asyncio.to_thread(self._run, request, on_chunk))
        while not (task.done() and queue.empty()):
            getter = loop.create_task(queue.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()
        result = self._result(request, task.result())
        yield ExecChunk(stream="exit", exit_code=result.exit_code)

    # --- files -------------------------------------------------------------------------

    def _rel(self, path: str) -> str:
        rel = workspace_relative(path, workdir=self.spec.workdir, sandbox_id=self.id)
        if rel == ".":
            raise SandboxPathError("the workspace root is not a file", path=path, sandbox_id=self.id)
        return rel

    async def write_file(self, path: str, data: bytes | str, *, mode: int | None = None) -> None:
        rel = self._rel(path)
        self._touch()
        payload = data.encode() if isinstance(data, str) else bytes(data)
        try:
            await asyncio.to_thread(self._fs.write, rel, payload, mode)
        except OSError as exc:
            if isinstance(exc, SandboxPathError | IsADirectoryError):
                raise
            raise SandboxError(f"write {rel}: {exc.strerror or exc}", sandbox_id=self.id) from exc

    async def read_file(self, path: str) -> bytes:
        rel = self._rel(path)
        self._touch()
        return await asyncio.to_thread(self._fs.read, rel)

    async def list_files(self, pattern: str = "**/*") -> list[FileInfo]:
        self._touch()
        return await asyncio.to_thread(self._fs.list, pattern)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        rel = self._rel(path)
        self._touch()
        await asyncio.to_thread(self._fs.remove, rel, recursive=recursive)

    # --- dependencies ------------------------------------------------------------------

    async def install(self, request: InstallRequest) -> InstallResult:
        """The install phase: the host's tree store, filled by an installer sandbox (``packages.py``)."""
        request = InstallRequest.model_validate(request)
        self._touch()
        return await asyncio.to_thread(self._backend.install_into, self, request)

    # --- snapshots ---------------------------------------------------------------------

    async def snapshot(self) -> SnapshotRef:
        """Save the workspace as tar+zstd (modes kept); restore gives identical files.

        ``--sparse`` stores holes as holes: a huge sparse file costs no reading.
        """
        self._touch()
        snap_id = f"snap-{uuid.uuid4().hex[:12]}"
        archive = self._backend.snapshots_dir / f"{snap_id}.tar.zst"
        tmp = archive.with_suffix(".part")
        cmd = [
            "sh",
            "-c",
            'tar -C "$1" --numeric-owner --sparse -cf - . | zstd -1 -q -f -o "$2"',
            "sh",
            str(self.workspace),
            str(tmp),
        ]
        proc = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise SnapshotError(f"snapshot of {self.id} failed: {proc.stderr.strip()}", sandbox_id=self.id)
        os.replace(tmp, archive)
        return SnapshotRef(
            backend="local", id=snap_id, sandbox_id=self.id, spec=self.spec, size_bytes=archive.stat().st_size
        )

    def extract(self, archive: Path) -> None:
        """Unpack a snapshot into this (fresh) sandbox's workspace, as this sandbox's uid.

        The snapshot may come from a sandbox of another uid: unpacked by this sandbox's
        uid, every file is owned by it (and the archive can write nothing it could not).
        """
        uid = str(self._state.uid)
        cmd = [
            "sh",
            "-c",
            'zstd -dcq "$1" | setpriv --reuid="$3" --regid="$3" --clear-groups -- tar -C "$2" -xpf -',
            "sh",
            str(archive),
            str(self.workspace),
            uid,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SnapshotError(f"extract failed: {proc.stderr.strip()}", sandbox_id=self.id)

    # --- network and ports -------------------------------------------------------------

    def start_network(self) -> None:
        """Give the sandbox the outbound network its spec's policy allows (``network.py``).

        The filter is loaded first, then slirp4netns brings up ``tap0``; either failing is an
        error of the caller (the create fails), never a sandbox that quietly has no network.
        """
        policy = self.spec.network
        if policy is NetworkPolicy.NONE:
            return
        check_network_tools()
        pid = self._state.child_pid
        allowed = resolve(self.spec.allowed_hosts) if policy is NetworkPolicy.INSTALL else []
        if policy is NetworkPolicy.INSTALL and self.spec.allowed_hosts and not allowed:
            raise SandboxError(
                f"none of the registries {', '.join(self.spec.allowed_hosts)} resolves from this host",
                sandbox_id=self.id,
            )
        apply_filter(pid, ruleset(policy, allowed=allowed, host=host_networks()))
        self._state.slirp_pid = start_slirp(pid, self._base / "ctl")
        self._save()

    async def expose(self, port: int) -> str:
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise SandboxError(f"port {port!r} out of range 1..65535", sandbox_id=self.id)
        self._touch()
        known = self._state.forwarders.get(port)
        if known and all(runs(p, str(self._base / "fwd")) for p in known.pids):
            return f"http://127.0.0.1:{known.host_port}"
        return await asyncio.to_thread(self._forwarder, port)

    def _forwarder(self, port: int) -> str:
        """The port's forwarder: one pair per port, whoever asks at once (threads or processes).

        Under a lock per port, the state on disk is read again: a pair another caller started
        meanwhile is used, and a pair half dead is ended before a new one replaces it (no
        ``socat`` outlives its record).
        """
        fwd = self._base / "fwd"
        fwd.mkdir(exist_ok=True, mode=0o700)
        with open(fwd / f"{port}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with contextlib.suppress(OSError, ValueError):
                self._state.forwarders = LocalState.load(self._base / "state.json").forwarders
            known = self._state.forwarders.get(port)
            if known and all(runs(p, str(fwd)) for p in known.pids):
                return f"http://127.0.0.1:{known.host_port}"
            for pid in known.pids if known else ():
                kill_pid(pid, str(fwd))  # only while it is still this sandbox's socat (pids are reused)
            return self._start_forwarder(port)

    def _start_forwarder(self, port: int) -> str:
        fwd = self._base / "fwd"
        sock = fwd / f"{port}.sock"
        sock.unlink(missing_ok=True)
        host_port = free_port()
        inner = (
            f'echo $$ > "{fwd}/{port}.in.pid"; exec nsenter -t {self._state.child_pid} -n '
            f"socat UNIX-LISTEN:{sock},fork,mode=600 TCP:127.0.0.1:{port}"
        )
        outer = (
            f'echo $$ > "{fwd}/{port}.out.pid"; exec socat TCP-LISTEN:{host_port},bind=127.0.0.1,fork,reuseaddr '
            f"UNIX-CONNECT:{sock}"
        )
        for script in (inner, outer):
            subprocess.run(
                ["setsid", "-f", "/bin/sh", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        pids = [wait_pidfile(fwd / f"{port}.in.pid"), wait_pidfile(fwd / f"{port}.out.pid")]
        wait_for(lambda: sock.exists() and port_open(host_port), 5.0)
        self._state.forwarders[port] = Forwarder(host_port=host_port, pids=[p for p in pids if p])
        self._save()
        return f"http://127.0.0.1:{host_port}"

    # --- lifetime ----------------------------------------------------------------------

    async def keepalive(self) -> None:
        """The owner is alive: push the TTL and the idle deadline back by the spec's amounts."""
        self._check_alive()
        self._state.ttl_deadline = max(self._state.ttl_deadline, time.time() + self.spec.timeout_s)
        self._save()
        self.write_deadline(force=True)

    async def status(self) -> SandboxStatus:
        with contextlib.suppress(OSError, ValueError):  # another handle may have ended it
            self._state.terminated = self._state.terminated or LocalState.load(self._base / "state.json").terminated
        if self._state.terminated:
            return SandboxStatus.TERMINATED
        return SandboxStatus.RUNNING if self.alive() else SandboxStatus.DEAD

    def cpu_seconds(self) -> float:
        return self.cgroups.cpu_seconds()

    async def terminate(self) -> None:
        await asyncio.to_thread(self.destroy_now)

    def destroy_now(self) -> None:
        """Kill every process of the sandbox and free its workspace; keep a tombstone."""
        st = self._state
        st.terminated = True
        with contextlib.suppress(OSError):
            self._save()
        # Recorded pids may have been handed to other processes since: each kill checks it is still ours.
        kill_pid(st.launcher_pid, str(self._base))
        kill_pid(st.child_pid if process_start_time(st.child_pid) == st.child_start else None)
        for fwd in st.forwarders.values():
            for pid in fwd.pids:
                kill_pid(pid, str(self._base / "fwd"))
        kill_pid(st.slirp_pid, "slirp4netns", f"/proc/{st.child_pid}/ns/net")
        self.cgroups.destroy()
        with contextlib.suppress(OSError):
            self.deadline_file.unlink()  # the watchdog, if still alive, ends at once
        unmount(self._base / "fs")
        for sub in ("fs", "fwd", "etc"):
            shutil.rmtree(self._base / sub, ignore_errors=True)
        # The uid goes back only once the sandbox's init (and with its pid namespace every
        # process in it) is gone; otherwise the claim stays until the uid pool takes it back.
        if st.child_start is None or wait_for(lambda: process_start_time(st.child_pid) != st.child_start, 5.0):
            self._backend.uids.release(st.uid, st.id)

    async def adopt(self, spec: SandboxSpec) -> bool:
        """Turn this standby sandbox into one for ``spec``; False if it cannot serve it."""
        if not self.alive() or spec.workdir != self.spec.workdir or spec.profile != self.spec.profile:
            return False
        st = self._state
        self.cgroups.set_limits(memory_mb=spec.memory_mb, max_pids=spec.max_pids, cpu=spec.cpu)
        if st.quota:
            opts = f"size={spec.disk_mb}m".encode()
            _libc.mount(b"tmpfs", str(self._base / "fs").encode(), b"tmpfs", _MS_REMOUNT, opts)
        st.spec = spec
        st.ttl_deadline = time.time() + spec.timeout_s
        self._save()
        self.write_deadline(force=True)
        self.start_network()
        return True
