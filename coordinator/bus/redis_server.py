"""A managed local ``redis-server`` for when ``REDIS_URL`` is unset.

The server listens on 127.0.0.1 only, keeps protected mode on and requires a password:
a secret generated at the first start into ``<data dir>/password`` (mode 0600) and given
to Redis on its stdin, never on a command line that ``ps`` shows. Its URL carries the
password (``redis://:PASSWORD@127.0.0.1:PORT/0``), so logs and the CLI show
:func:`redact_url` of it. Loopback alone is not a boundary: any process of the host (a
browser, a sandbox helper, another user's program) can connect to 127.0.0.1.

It keeps its files under ``KRIPTIK_HOME/redis`` (0700) and runs with AOF on and
``appendfsync everysec``: every write reaches the AOF, which is fsynced once a second.
A clean stop (SIGTERM) fsyncs and loses nothing; only a crash of the host or a SIGKILL of
Redis can lose up to about one second of bus traffic. ``always`` would close that window
but puts an fsync in front of every reply — a disk flush on the fan-out path, which would
cost the bus its millisecond latency; the durable state of a build lives in SQLite, and
after a crash actors republish from it, so one second is the better trade.

One data directory belongs to one server: a lock file guards it, and a ``port`` file lets
other processes on the host (of the same user: the directory is 0700) find the running
server (see :func:`redis_url`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import fcntl
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Literal
from urllib.parse import urlsplit, urlunsplit

import redis

from sandbox_agents.errors import ConfigError, KriptikError
from sandbox_agents.settings import Settings, get_settings

logger = logging.getLogger(__name__)


class RedisStartError(KriptikError, RuntimeError):
    """The managed redis-server did not come up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: what logs and the CLI may show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def read_password(data_dir: Path) -> str:
    """The managed server's password from ``data_dir/password``, generated (0600) if missing.

    Raises:
        ConfigError: the file exists but is empty or unreadable.
    """
    path = Path(data_dir) / "password"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    mode = path.stat().st_mode & 0o777
    if mode != 0o600:
        logger.warning("%s had mode %o; setting 0600", path, mode)
        os.chmod(path, 0o600)
    try:
        password = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the managed Redis password {path}: {exc}") from exc
    if not password:
        raise ConfigError(f"the managed Redis password file {path} is empty: remove it to generate a new one")
    return password


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when its parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl (not Linux): the atexit stop still ends it
        pass  # no logging here: between fork and exec only async-signal-safe work is safe


class ManagedRedis:
    """One local redis-server process with AOF, owned by this object.

    Args:
        data_dir: directory for the AOF, log, lock and port files (created).
        port: fixed port; a free one is chosen at the first start if ``None``.
        appendfsync: ``everysec`` (default, see module docstring) or ``always``.
        executable: the redis-server binary.
        start_timeout: seconds to wait for PING and ``loading:0``.

    The constructor does no I/O. Use :meth:`start`/:meth:`stop`, ``with`` or ``async with``.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = None,
        appendfsync: Literal["everysec", "always"] = "everysec",
        executable: str = "redis-server",
        start_timeout: float = 15.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.appendfsync = appendfsync
        self.executable = executable
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None
        self._password: str | None = None
        self._watcher: threading.Thread | None = None
        self._watching = threading.Event()
        self.restarts = 0
        """Times :meth:`keep_alive` brought the server back after it died."""

    @property
    def url(self) -> str:
        """``redis://:PASSWORD@127.0.0.1:PORT/0``; valid once started. A secret: log :attr:`display_url`."""
        if self.port is None or self._password is None:
            raise RedisStartError("managed redis has no port yet: start it first")
        return f"redis://:{self._password}@127.0.0.1:{self.port}/0"

    @property
    def display_url(self) -> str:
        """:attr:`url` with the password masked."""
        return redact_url(self.url)

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the server, if started."""
        return None if self._proc is None else self._proc.pid

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait until it answers PING and has finished loading its AOF.

        Raises:
            ConfigError: redis-server is not installed, or another process owns the data dir.
            RedisStartError: it exited or did not become ready in ``start_timeout``.
        """
        if self.running:
            return
        self._spawn()
        deadline = time.monotonic() + self.start_timeout
        while not self._ready():
            if time.monotonic() > deadline:
                self._kill()
                raise RedisStartError(f"redis-server on port {self.port} not ready in {self.start_timeout}s")
            time.sleep(0.005)
        logger.info("managed redis-server pid %s on %s (data %s)", self.pid, self.display_url, self.data_dir)

    async def astart(self) -> None:
        """:meth:`start` without blocking the event loop while Redis loads."""
        await asyncio.to_thread(self.start)

    def keep_alive(self, interval_s: float = 0.5) -> None:
        """Restart the server whenever it dies, until :meth:`stop`: same port, password and data dir,
        so clients reconnect to the same URL and the AOF brings the event log back (up to the last
        second of writes with ``everysec``). A restart that fails is logged and tried again."""
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._watching.set()
        self._watcher = threading.Thread(target=self._watch, args=(interval_s,), name="redis-keep-alive", daemon=True)
        self._watcher.start()

    def _watch(self, interval_s: float) -> None:
        while self._watching.is_set():
            proc = self._proc
            if proc is not None and proc.poll() is not None and self._watching.is_set():
                logger.error(
                    "managed redis-server pid %s died (exit %s); restarting it on port %s (log %s)",
                    proc.pid, proc.returncode, self.port, self.data_dir / "redis.log",
                )  # fmt: skip
                self._proc = None
                self._release()
                try:
                    self.start()
                    self.restarts += 1
                except (RedisStartError, ConfigError) as exc:
                    logger.error("restarting the managed redis-server failed: %s; trying again", exc)
            time.sleep(interval_s)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server cleanly (SIGTERM: AOF fsynced), SIGKILL after ``timeout``; idempotent."""
        self._watching.clear()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.error("redis-server pid %s ignored SIGTERM for %ss; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait()
        self._release()

    def kill(self) -> None:
        """SIGKILL the server (tests: a crash; up to ~1 s of writes may be lost with everysec)."""
        self._kill()

    def restart(self) -> None:
        """Stop and start again on the same port with the same data (AOF is reloaded)."""
        self.stop()
        self.start()

    def __enter__(self) -> ManagedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> ManagedRedis:
        await self.astart()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # --- internals --------------------------------------------------------------------

    def _spawn(self) -> None:
        exe = shutil.which(self.executable)
        if exe is None:
            raise ConfigError(f"{self.executable} not found: install redis-server or set REDIS_URL")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # the password, the port and the AOF (the bus's data) are ours alone
        self._acquire()
        self._password = read_password(self.data_dir)
        if self.port is None:
            self.port = free_port()
        args = [
            exe,
            "-",  # the rest of the config (requirepass) on stdin, never in argv
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            "--databases", "1",
        ]  # fmt: skip
        # Die with us even when we are SIGKILLed (no atexit then). PDEATHSIG fires when the spawning
        # *thread* ends, so it is only set when spawning from the main thread or the keep-alive
        # watcher (which lives until stop()).
        on_main = threading.current_thread() in (threading.main_thread(), self._watcher)
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if on_main else None,
        )
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it exited at once: _ready reports it
            with self._proc.stdin:
                self._proc.stdin.write(f"requirepass {self._password}\n".encode())
        (self.data_dir / "port").write_text(str(self.port))
        atexit.register(self.stop)

    def _ready(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            self._release()
            raise RedisStartError(f"redis-server exited with {code}; see {self.data_dir / 'redis.log'}")
        assert self.port is not None, "_spawn picks the port before waiting for it"
        try:
            client = redis.Redis(
                port=self.port, password=self._password, socket_connect_timeout=0.5, socket_timeout=1.0
            )
            with contextlib.closing(client):
                client.ping()
                return client.info("persistence").get("loading") == 0
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError):
            return False

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._release()

    def _acquire(self) -> None:
        lock = open(self.data_dir / "lock", "w")  # noqa: SIM115 - held for the server's lifetime
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.close()
            raise ConfigError(f"another managed redis-server owns {self.data_dir}") from exc
        self._lock = lock

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


_managed: ManagedRedis | None = None


def redis_url(settings: Settings | None = None) -> str:
    """The Redis the bus should use: ``REDIS_URL`` if set, else a managed local server.

    If another process on this host already runs the managed server of ``KRIPTIK_HOME``
    (e.g. ``kriptik up``), its URL is returned; otherwise one is started in this process
    and stopped when it exits.
    """
    global _managed
    settings = settings or get_settings()
    if settings.redis_url:
        return settings.redis_url
    if _managed is not None and _managed.running:
        return _managed.url
    data_dir = settings.home() / "redis"
    server = ManagedRedis(data_dir)
    try:
        server.start()
    except ConfigError:
        port_file = data_dir / "port"
        if not port_file.exists():
            raise
        url = f"redis://:{read_password(data_dir)}@127.0.0.1:{int(port_file.read_text())}/0"
        with contextlib.closing(redis.Redis.from_url(url, socket_connect_timeout=1.0)) as client:
            client.ping()
        return url
    _managed = server
    return server.url
