"""The install phase of the local backend: dependency trees built once per manifest, shared by the host.

A component's sandbox never gets the network to install its dependencies. ``install`` instead:

1. reads the manifest (``package.json`` and ``package-lock.json``, or ``requirements.txt``)
   from the sandbox's workspace, bounded, and keys it: sha256 of the manager, the toolchain's
   version, the manifest and the lockfile;
2. on a miss, builds the tree in an *installer sandbox* of its own: a fresh sandbox holding
   only those manifest files, with network ``install`` (the named registries, nothing else),
   the host's shared npm/pip download cache bound in, and npm's install scripts off. No code
   of the build ever runs there, so what it produces is what the registry served for that
   lockfile. The tree (``node_modules`` or ``.venv``, and the lockfile npm wrote when there was
   none) is archived into the host's tree store under the key;
3. unpacks the stored tree into the sandbox's workspace as the sandbox's own uid, with a marker
   naming its key: asked again for the same manifest, the install does nothing.

So a second install of the same lockfile, in any sandbox of the host (a team's, the gate's,
the preview's, a later build's), costs one unpack and no registry request. Design notes and
the measurements behind them are in docs/sandboxes.md ("Dependencies").

Cold installs are serialized per host (one lock): the shared download cache is handed to the
installer's uid for the run. Warm ones take no lock. The store is bounded by size: least
recently used trees go first, and the download cache is dropped whole when it outgrows its share.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sandbox_agents.backends.base import InstallRequest, InstallResult, NetworkPolicy, SandboxSpec
from sandbox_agents.backends.install import OUTPUT_TAIL, install_command
from sandbox_agents.backends.local.network import DEFAULT_REGISTRIES
from sandbox_agents.errors import SandboxError, SandboxPathError

if TYPE_CHECKING:
    from sandbox_agents.backends.local.sandbox import LocalSandbox

logger = logging.getLogger(__name__)

#: Largest manifest or lockfile read from a sandbox.
MANIFEST_CAP = 8 * 1024 * 1024
#: The host's CA bundle (bound read-only into every sandbox with /etc/ssl).
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"
#: Largest installed tree the store keeps (bytes on disk, before archiving).
TREE_CAP = 2 * 1024 * 1024 * 1024
#: The file in an unpacked tree naming its key: the same install again does nothing.
MARKER = ".kriptik-tree"

_MANIFESTS = {"npm": ("package.json", "package-lock.json"), "pip": ("requirements.txt", "")}
_TREE = {"npm": "node_modules", "pip": ".venv"}


def toolchain_version(manager: str) -> str:
    """Part of the key: a tree built by one Node/Python is not reused by another."""
    argv = ["node", "--version"] if manager == "npm" else ["python3", "--version"]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except OSError:
        return "missing"


class InstallerSandbox(Protocol):
    """What the store needs of an installer sandbox (``LocalBackend.installer`` makes one)."""

    @property
    def uid(self) -> int: ...

    @property
    def workspace(self) -> Path: ...

    def write_host(self, rel: str, data: bytes) -> None: ...

    def read_host(self, rel: str, *, cap: int) -> bytes: ...

    def run(self, command: str, *, cwd: str, timeout_s: float) -> tuple[int, str]: ...

    def close(self) -> None: ...


#: Makes an installer sandbox for a spec, with the download cache bound at ``CACHE_MOUNT``.
Installer = Callable[[SandboxSpec, Path], InstallerSandbox]


class PackageStore:
    """The host's dependency trees and download caches (one per host, shared by every backend object)."""

    def __init__(self, root: Path, *, max_bytes: int, registries: dict[str, tuple[str, ...]] | None = None) -> None:
        self.root = root
        self.trees = root / "trees"
        self.cache = root / "cache"
        self.max_bytes = max_bytes
        self.registries = registries or DEFAULT_REGISTRIES
        for path in (self.trees, self.cache / "npm", self.cache / "pip"):
            path.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o711)
        self._versions: dict[str, str] = {}

    # --- keys and the store ------------------------------------------------------------

    def key(self, manager: str, manifest: bytes, lockfile: bytes | None, directory: str = "") -> str:
        """The tree's key. A venv holds its own absolute path (its scripts' ``#!`` lines), so a pip
        tree is keyed by its directory too; ``node_modules`` is the same wherever it lies."""
        if manager not in self._versions:
            self._versions[manager] = toolchain_version(manager)
        digest = hashlib.sha256()
        where = directory.encode() if manager == "pip" else b""
        for part in (manager.encode(), self._versions[manager].encode(), manifest, lockfile or b"\0none", where):
            digest.update(hashlib.sha256(part).digest())
        return digest.hexdigest()[:32]

    def archive(self, key: str) -> Path:
        return self.trees / f"{key}.tar.zst"

    def has(self, key: str) -> bool:
        return self.archive(key).exists()

    @contextlib.contextmanager
    def cold_lock(self) -> Iterator[None]:
        with open(self.root / "install.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def evict(self) -> list[str]:
        """Drop least recently used trees until the store fits ``max_bytes``; returns the dropped keys."""
        archives = sorted(self.trees.glob("*.tar.zst"), key=lambda p: p.stat().st_atime)
        total = sum(p.stat().st_size for p in archives) + _du(self.cache)
        dropped = []
        while archives and total > self.max_bytes:
            victim = archives.pop(0)
            total -= victim.stat().st_size
            victim.unlink(missing_ok=True)
            dropped.append(victim.name.split(".")[0])
        if total > self.max_bytes:  # the trees are gone and the downloads alone are too big
            for sub in ("npm", "pip"):
                shutil.rmtree(self.cache / sub, ignore_errors=True)
                (self.cache / sub).mkdir()
        return dropped

    # --- the install -------------------------------------------------------------------

    def install(self, sandbox: LocalSandbox, request: InstallRequest, make_installer: Installer) -> InstallResult:
        """Install ``request``'s manifest into ``sandbox`` (see the module's docstring)."""
        started = time.monotonic()
        name, lock_name = _MANIFESTS[request.manager]
        base = "" if request.dir in ("", ".") else request.dir.rstrip("/") + "/"
        manifest = _read_optional(sandbox, base + name)
        if manifest is None:
            raise SandboxPathError(
                f"{base}{name}: no such file; the install needs the manifest",
                path=base + name,
                sandbox_id=sandbox.id,
            )
        lockfile = _read_optional(sandbox, base + lock_name) if lock_name else None
        key = self.key(request.manager, manifest, lockfile, base)
        marker = f"{base}{_TREE[request.manager]}/{MARKER}"
        if _read_optional(sandbox, marker) == key.encode():
            seconds = time.monotonic() - started
            return InstallResult(ok=True, cached=True, seconds=seconds, output="", key=key, changed=False)
        cached = self.has(key)
        output = ""
        for attempt in range(2):
            if attempt or not cached:
                with self.cold_lock():
                    if not self.has(key):  # another process may have built it while this one waited
                        ok, output = self._build(key, request, base, manifest, lockfile, make_installer)
                        if not ok:
                            seconds = time.monotonic() - started
                            return InstallResult(ok=False, cached=False, seconds=seconds, output=output, key=key)
            try:
                self._unpack(sandbox, key, base, request.manager)
                break
            except FileNotFoundError:  # evicted between the look and the unpack: build it again
                cached = False
        os.utime(self.archive(key))  # recently used: evicted last
        if lock_name and lockfile is None and (written := _read_optional(sandbox, base + lock_name)) is not None:
            key = self.key(request.manager, manifest, written, base)  # the workspace now holds npm's lockfile
        sandbox.write_host(marker, key.encode())
        return InstallResult(ok=True, cached=cached, seconds=time.monotonic() - started, output=output, key=key)

    def _build(
        self,
        key: str,
        request: InstallRequest,
        base: str,
        manifest: bytes,
        lockfile: bytes | None,
        make_installer: Installer,
    ) -> tuple[bool, str]:
        """Build the tree in an installer sandbox, at the same path as in the component's workspace."""
        name, lock_name = _MANIFESTS[request.manager]
        spec = SandboxSpec(
            profile="node" if request.manager == "npm" else "python",
            network=NetworkPolicy.INSTALL,
            allowed_hosts=self.registries.get(request.manager, ()),
            memory_mb=2048,
            max_pids=512,
            disk_mb=4096,
            timeout_s=request.timeout_s + 120,
            # The node profile's npm is offline; pip's vendored CA list lacks the host's own CAs.
            env={"npm_config_offline": "false", "PIP_CERT": SYSTEM_CA, "REQUESTS_CA_BUNDLE": SYSTEM_CA},
            tags={"kriptik.role": "installer"},
        )
        installer = make_installer(spec, self.cache)
        try:
            uid = installer.uid
            subprocess.run(["chown", "-R", f"{uid}:{uid}", str(self.cache)], check=True, capture_output=True)
            installer.write_host(base + name, manifest)
            if lockfile is not None:
                installer.write_host(base + lock_name, lockfile)
            command = install_command(request.manager, locked=lockfile is not None)
            code, output = installer.run(command, cwd=base.rstrip("/") or ".", timeout_s=request.timeout_s)
            if code != 0:
                return False, f"`{command}` failed (exit {code}):\n{output[-OUTPUT_TAIL:]}"
            pkg = installer.workspace / base if base else installer.workspace
            members = [_TREE[request.manager]]
            if lockfile is None and lock_name and (pkg / lock_name).is_file():
                members.append(lock_name)  # the lockfile npm wrote goes back to the component
            if not (pkg / members[0]).exists():
                (pkg / members[0]).mkdir()  # a manifest without dependencies: an empty tree
            size = _du(pkg / members[0])
            if size > TREE_CAP:
                cap = TREE_CAP >> 20
                return False, f"the installed tree is {size >> 20} MiB, more than the store's cap of {cap} MiB"
            _archive(pkg, members, self.archive(key))
            if len(members) > 1:  # the next install keys on the lockfile npm wrote: the same tree
                written = installer.read_host(base + lock_name, cap=MANIFEST_CAP)
                with contextlib.suppress(FileExistsError):
                    os.link(self.archive(key), self.archive(self.key(request.manager, manifest, written, base)))
            self.evict()
            return True, output[-OUTPUT_TAIL:]
        finally:
            installer.close()

    def _unpack(self, sandbox: LocalSandbox, key: str, base: str, manager: str) -> None:
        """Replace the sandbox's tree with the stored one, unpacked as the sandbox's uid.

        The tools work from an fd of the manifest's directory reached without following links
        (``WorkspaceFS.open_dir``), as the sandbox's uid: a link the sandbox plants can send
        them nowhere that uid could not write anyway.
        """
        archive = open(self.archive(key), "rb")  # FileNotFoundError here: evicted since the look (the caller rebuilds)
        try:
            try:
                fd = sandbox.open_dir(base.rstrip("/") or ".")
            except FileNotFoundError:
                raise SandboxPathError(
                    f"{base or '.'}: the directory went away during the install", path=base, sandbox_id=sandbox.id
                ) from None
            uid = str(sandbox.uid)
            script = 'cd "/proc/self/fd/$2" && rm -rf -- "$1" && zstd -dcq | tar --no-same-owner -xf -'
            try:  # the host reads the archive: the store is not the sandbox's
                proc = subprocess.run(
                    ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
                    + ["bash", "-c", f"set -o pipefail; {script}", "bash", _TREE[manager], str(fd)],
                    stdin=archive,
                    capture_output=True,
                    check=False,
                    pass_fds=(fd,),
                )
            finally:
                os.close(fd)
        finally:
            archive.close()
        if proc.returncode != 0:
            raise SandboxError(
                f"unpacking the dependency tree into {base or '.'} failed: "
                + proc.stderr.decode(errors="replace")[-2000:],
                sandbox_id=sandbox.id,
            )


def _read_optional(sandbox: LocalSandbox, rel: str) -> bytes | None:
    try:
        return sandbox.read_host(rel, cap=MANIFEST_CAP)
    except FileNotFoundError:
        return None


def _archive(directory: Path, members: list[str], archive: Path) -> None:
    tmp = archive.with_name(f".{archive.name}.{os.getpid()}.part")
    cmd = 'tar -C "$1" --numeric-owner -cf - "${@:3}" | zstd -1 -T0 -q -f -o "$2"'
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cmd}", "bash", str(directory), str(tmp), *members],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise SandboxError(f"archiving the installed tree failed: {proc.stderr.strip()[-2000:]}")
    os.replace(tmp, archive)


def _du(path: Path) -> int:
    proc = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=False)
    try:
        return int(proc.stdout.split()[0])
    except (IndexError, ValueError):
        return 0


def store_info(store: PackageStore) -> dict[str, object]:
    """What the store holds (for status and the bench)."""
    archives = list(store.trees.glob("*.tar.zst"))
    return {
        "trees": len(archives),
        "tree_bytes": sum(p.stat().st_size for p in archives),
        "cache_bytes": _du(store.cache),
        "max_bytes": store.max_bytes,
    }
