"""The browser that looks at agents' pages, in real Chromium: not root, its own netns, one origin.

Two host services on 127.0.0.1 stand in for the app under check (its dev server) and for
everything else on the host (Redis, Ray, another build's preview): the page may reach the
first and must not reach the second. A browser on the host's network, as before, reaches
both: that run proves the page and the service would show a leak.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.backends.fake import FakeBackend
from sandbox_agents.backends.local.state import host_state_dir
from sandbox_agents.browser import Chromium
from sandbox_agents.browser.chromium import GATE_PORT
from sandbox_agents.verifiers import VerifyTarget, VisualVerifier

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the isolated browser needs root to set itself up"),
]

#: The page fetches its own origin and the host service, and shows what it got.
PAGE = """<!doctype html><html><body><h1>Todos</h1><p id="out">pending</p><script>
const get = (url) => fetch(url).then((r) => r.text()).catch(() => "blocked");
Promise.all([get("/own"), get("SECRET_URL")]).then(([own, secret]) => {
  document.getElementById("out").textContent = "own=" + own + " secret=" + secret;
});
</script></body></html>"""


@dataclass
class Service:
    """A host HTTP service on 127.0.0.1 that counts the requests it answered."""

    body: dict[str, str]
    hits: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def serve(service: Service) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            service.hits.append(self.path)
            body = service.body.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html" if self.path == "/" else "text/plain")
            self.send_header("Access-Control-Allow-Origin", "*")  # a leak must show as a readable answer
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    service.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[Service, Service]]:
    secret = Service({"/": "the host's secret"})
    app = Service({"/own": "own-ok"})
    servers = [serve(secret), serve(app)]
    app.body["/"] = PAGE.replace("SECRET_URL", secret.url + "/")
    yield app, secret
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Chromium]:
    async with Chromium() as browser:
        yield browser


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def snapshot(pid: int) -> tuple[dict[str, str], bytes, str, str] | None:
    """A process's status, command line and user/pid namespaces, or None once it has ended."""
    try:
        return (
            status(pid),
            Path(f"/proc/{pid}/cmdline").read_bytes(),
            os.readlink(f"/proc/{pid}/ns/user"),
            os.readlink(f"/proc/{pid}/ns/pid"),
        )
    except (FileNotFoundError, ProcessLookupError):
        return None


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(status(int(entry.name))["PPid"])
            except (OSError, KeyError, ValueError):
                continue
    tree = [root]
    for pid in tree:
        tree += [child for child, parent in parents.items() if parent == pid]
    return tree


def live_processes_of(uid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                info = status(int(entry.name))
            except OSError:
                continue
            if info["Uid"].split()[0] == str(uid) and not info["State"].startswith("Z"):
                found.append(int(entry.name))
    return found


def listening(pid: int) -> set[tuple[str, int]]:
    """TCP sockets listening in ``pid``'s network namespace (IPv4 and IPv6, as hex-decoded pairs)."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":
                address, port = local.split(":")
                if len(address) == 8:
                    address = ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
                found.add((address, int(port, 16)))
    return found


async def page_result(context: object, url: str) -> str:
    page = await context.new_page()  # type: ignore[attr-defined]
    await page.goto(url, wait_until="load", timeout=20_000)
    await page.wait_for_function("document.getElementById('out').textContent !== 'pending'", timeout=20_000)
    return str(await page.locator("#out").inner_text())


async def test_a_browser_on_the_hosts_network_reaches_the_host_service(services: tuple[Service, Service]) -> None:
    """The control: how the checks ran before, so the page and service below would show a leak."""
    from playwright.async_api import async_playwright

    app, secret = services
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
        try:
            result = await page_result(await browser.new_context(), app.url + "/")
        finally:
            await browser.close()
    assert result == "own=own-ok secret=the host's secret"
    assert secret.hits == ["/"]
    secret.hits.clear()


async def test_the_visual_checkers_chromium_runs_as_a_non_root_uid_with_its_own_sandbox(
    chromium: Chromium, services: tuple[Service, Service], tmp_path: Path
) -> None:
    app, _ = services
    sandbox = await FakeBackend().create(SandboxSpec())
    target = VerifyTarget(dev_url=app.url, screenshot_dir=str(tmp_path))
    report = await VisualVerifier(chromium).verify(sandbox, target)
    assert Path(report.details["screenshot"]).read_bytes().startswith(b"\x89PNG")
    assert not [f for f in report.findings if f.rule in ("visual.http_status", "visual.blank_page")], report.findings

    assert chromium.pid is not None
    # The verifier closed its page (and with it its renderer): look at the tree while a page is open.
    context = await chromium.new_context(app.url + "/")
    try:
        page = await context.new_page()
        await page.goto(app.url + "/", wait_until="load", timeout=20_000)
        # Chromium starts and ends helper processes on its own: look at each one that is still there.
        procs = {pid: seen for pid in process_tree(chromium.pid) if (seen := snapshot(pid)) is not None}
        assert len(procs) >= 3, procs  # the browser, its zygotes, renderers, utilities
        for pid, (st, _, user_ns, _) in procs.items():
            uids = st["Uid"].split()  # real, effective, saved, filesystem
            assert "0" not in uids, (pid, uids)
            assert set(uids) == {str(chromium.uid)}
            if user_ns == os.readlink("/proc/self/ns/user"):
                assert st["CapEff"] == "0000000000000000", pid  # no capability on the host
        # Chromium's own sandbox is on: renderers run under its seccomp-bpf filter in namespaces of their own.
        renderers = {pid: seen for pid, seen in procs.items() if b"--type=renderer" in seen[1]}
        assert renderers
        for st, _, _, pid_ns in renderers.values():
            assert st["Seccomp"] == "2"
            assert pid_ns != os.readlink("/proc/self/ns/pid")
    finally:
        await context.close()


async def test_a_page_reaches_its_own_origin_and_not_a_host_loopback_service(
    chromium: Chromium, services: tuple[Service, Service]
) -> None:
    app, secret = services
    context = await chromium.new_context(app.url + "/")
    try:
        result = await page_result(context, app.url + "/")
    finally:
        await context.close()
    assert result == "own=own-ok secret=blocked"
    assert secret.hits == []  # not a single connection reached it
    assert ("127.0.0.1", secret.port) in chromium.refused


async def test_the_browsers_network_namespace_holds_only_the_gate(
    chromium: Chromium, services: tuple[Service, Service]
) -> None:
    _, secret = services
    await chromium.browser()
    assert chromium.pid is not None
    assert os.readlink(f"/proc/{chromium.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert listening(chromium.pid) == {("127.0.0.1", GATE_PORT)}
    probe = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)"
    direct = subprocess.run(
        ["nsenter", f"--net=/proc/{chromium.pid}/ns/net", sys.executable, "-c", probe, str(secret.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert direct.returncode != 0 and "ConnectionRefusedError" in direct.stderr
    assert secret.hits == []


async def test_a_grant_ends_when_its_context_closes(chromium: Chromium, services: tuple[Service, Service]) -> None:
    app, secret = services
    first = await chromium.new_context(app.url + "/")
    await first.close()
    before = app.hits.count("/own")
    other = await chromium.new_context(secret.url + "/")  # a check of another origin
    try:
        page = await other.new_page()
        await page.goto(secret.url + "/", wait_until="load", timeout=20_000)
        own = await page.evaluate(f"fetch('{app.url}/own').then(r => r.text()).catch(() => 'blocked')")
    finally:
        await other.close()
    assert own == "blocked"
    assert app.hits.count("/own") == before
    secret.hits.clear()


async def test_closing_the_browser_ends_every_process_and_gives_its_uid_back(
    services: tuple[Service, Service],
) -> None:
    app, _ = services
    chromium = Chromium()
    context = await chromium.new_context(app.url + "/")
    page = await context.new_page()
    await page.goto(app.url + "/", wait_until="load", timeout=20_000)
    uid, pid = chromium.uid, chromium.pid
    assert uid is not None and pid is not None
    tree = process_tree(pid)
    assert live_processes_of(uid)
    await chromium.close()
    assert live_processes_of(uid) == []
    assert all(not Path(f"/proc/{p}").exists() or status(p)["State"].startswith("Z") for p in tree)
    assert not (host_state_dir() / "browser-uids" / str(uid)).exists()
    await chromium.close()  # twice is fine


async def test_a_launch_takes_back_what_browsers_of_dead_owners_left(services: tuple[Service, Service]) -> None:
    claims = host_state_dir() / "browser-uids"
    claims.mkdir(mode=0o700, parents=True, exist_ok=True)
    uid = next(u for u in range(60999, 60000, -1) if not (claims / str(u)).exists())
    dead = {"sandbox": "browser-dead", "state": "/proc/999999999", "pid": 999999999, "at": time.time() - 3600}
    (claims / str(uid)).write_text(json.dumps(dead))
    orphan = Path(tempfile.gettempdir()) / "kriptik-browser-999999999-orphan"
    orphan.mkdir()
    chromium = Chromium()
    try:
        await chromium.browser()
        assert not (claims / str(uid)).exists() or chromium.uid == uid  # taken back (and maybe reused)
        assert not orphan.exists()
    finally:
        await chromium.close()
