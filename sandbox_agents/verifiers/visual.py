"""Visual verifier: load the component's page in real Chromium and look at it.

It starts the dev server inside the sandbox (or reuses one already answering, or a given
URL), reaches it through ``sandbox.expose(port)``, loads the page with Playwright, and
reports uncaught exceptions and console errors (mapped back to ``file:line``), a failing
HTTP status, a blank page, and how many pixels changed since the last accepted screenshot.
Pillow is not installed here, so the pixel work runs in Chromium itself: the browser
decodes both PNGs onto a canvas, which costs ~20 ms and no dependency.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import posixpath
import re
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from sandbox_agents.backends.base import Sandbox
from sandbox_agents.browser import Chromium
from sandbox_agents.verifiers.base import VerifyTarget, build_report
from sandbox_agents.verifiers.models import Finding, Severity, VerifierReport

logger = logging.getLogger(__name__)

#: Without Pillow the browser decodes the PNGs: share of the dominant colour, and the diff ratio.
_ANALYSE_JS = """
async ({shot, base}) => {
  const load = (b64) => new Promise((ok, fail) => {
    const img = new Image();
    img.onload = () => ok(img);
    img.onerror = () => fail(new Error('PNG decode failed'));
    img.src = 'data:image/png;base64,' + b64;
  });
  const pixels = (img) => {
    const canvas = document.createElement('canvas');
    canvas.width = img.width; canvas.height = img.height;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    return ctx.getImageData(0, 0, img.width, img.height).data;
  };
  const a = await load(shot);
  const pa = pixels(a);
  const n = pa.length / 4;
  const counts = new Map();
  for (let i = 0; i < pa.length; i += 4) {
    const key = ((pa[i] >> 3) << 10) | ((pa[i + 1] >> 3) << 5) | (pa[i + 2] >> 3);
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  let top = 0;
  for (const v of counts.values()) if (v > top) top = v;
  const out = {width: a.width, height: a.height, dominant: top / n, colors: counts.size, diff: null};
  if (base) {
    const b = await load(base);
    if (b.width !== a.width || b.height !== a.height) { out.diff = 1; out.size_changed = true; }
    else {
      const pb = pixels(b);
      let changed = 0;
      for (let i = 0; i < pa.length; i += 4) {
        if (Math.abs(pa[i] - pb[i]) + Math.abs(pa[i + 1] - pb[i + 1]) + Math.abs(pa[i + 2] - pb[i + 2]) > 48) changed++;
      }
      out.diff = changed / n;
    }
  }
  return out;
}
"""
_CONTENT_JS = """() => ({
  text: document.body ? document.body.innerText.trim().length : 0,
  media: document.querySelectorAll('img, svg, canvas, video, iframe').length,
})"""
_STACK_FRAME = re.compile(r"(https?://[^\s)]+?):(\d+):\d+")


class VisualVerifier:
    """Screenshot, console errors, blank-page detection and visual diff in real Chromium."""

    name = "visual"

    def __init__(
        self,
        chromium: Chromium | None = None,
        *,
        viewport: tuple[int, int] = (1280, 720),
        ready_timeout_s: float = 20.0,
        navigation_timeout_s: float = 15.0,
    ) -> None:
        self.chromium = chromium
        self.viewport = viewport
        self.ready_timeout_s = ready_timeout_s
        self.navigation_timeout_s = navigation_timeout_s

    async def verify(self, sandbox: Sandbox, target: VerifyTarget) -> VerifierReport:
        started = time.monotonic()
        if target.dev_url is None and (target.dev_command is None or target.dev_port is None):
            if target.kind in ("web", "fullstack"):
                message = "a web component without a dev server command and port cannot be looked at"
                return build_report(self.name, [Finding(message=message, rule="visual.no_server")], started)
            return build_report(self.name, [], started, {"skipped": f"kind {target.kind!r} has no page"})
        base_url, findings = await self.serve(sandbox, target)
        if base_url is None:
            return build_report(self.name, findings, started)
        own = self.chromium is None
        chromium = self.chromium or Chromium()
        try:
            details = await self._look(chromium, base_url, target, sandbox.id, findings)
        finally:
            if own:
                await chromium.close()
        return build_report(self.name, findings, started, details)

    async def serve(self, sandbox: Sandbox, target: VerifyTarget) -> tuple[str | None, list[Finding]]:
        """The base URL of a running dev server: the given one, one already up, or one started now."""
        if target.dev_url is not None:
            return target.dev_url.rstrip("/"), []
        assert target.dev_command is not None and target.dev_port is not None
        url = await sandbox.expose(target.dev_port)
        if await _answers(url):
            return url, []
        log = f"/tmp/kriptik-dev-{target.dev_port}.log"
        await sandbox.exec(f"nohup sh -c {shlex.quote(target.dev_command)} > {log} 2>&1 &", cwd=target.root, timeout=30)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if await _answers(url):
                return url, []
            await asyncio.sleep(0.1)
        tail = (await sandbox.exec(f"tail -n 20 {log} 2>/dev/null || true", timeout=10)).stdout.strip()
        message = f"dev server `{target.dev_command}` did not answer on port {target.dev_port} "
        message += f"within {self.ready_timeout_s:.0f}s; log: {tail[-1500:]}"
        return None, [Finding(message=message, rule="visual.server_not_ready")]

    async def _look(
        self, chromium: Chromium, base_url: str, target: VerifyTarget, sandbox_id: str, findings: list[Finding]
    ) -> dict[str, Any]:
        # The page reaches its own server and nothing else (sandbox_agents.browser).
        url = base_url + "/" + target.page_path.lstrip("/")
        context = await chromium.new_context(url, viewport={"width": self.viewport[0], "height": self.viewport[1]})
        try:
            page = await context.new_page()
            page.on("console", lambda msg: _on_console(msg, base_url, target, findings))
            page.on("pageerror", lambda err: _on_page_error(err, base_url, target, findings))
            response = await page.goto(url, wait_until="load", timeout=self.navigation_timeout_s * 1000)
            if response is not None and response.status >= 400:
                findings.append(Finding(message=f"{url} answered HTTP {response.status}", rule="visual.http_status"))
            try:
                await page.wait_for_load_state("networkidle", timeout=2000)
            except Exception:  # a page that keeps polling never goes idle; what loaded is enough
                logger.debug("page %s did not go network-idle", url)
            content = await page.evaluate(_CONTENT_JS)
            shot = await page.screenshot(type="png")
            path = _screenshot_path(target, sandbox_id)
            await asyncio.to_thread(path.write_bytes, shot)
            baseline = await _read_baseline(target.baseline_screenshot)
            analysis = await context.new_page()
            stats = await analysis.evaluate(
                _ANALYSE_JS,
                {
                    "shot": base64.b64encode(shot).decode(),
                    "base": base64.b64encode(baseline).decode() if baseline else None,
                },
            )
        finally:
            await context.close()
        if (content["text"] == 0 and content["media"] == 0) or stats["dominant"] >= 0.999:
            message = f"the page looks blank ({content['text']} characters of text, {stats['dominant']:.1%} one colour)"
            findings.append(Finding(file=_page_file(target), message=message, rule="visual.blank_page"))
        if stats["diff"] is not None:
            over = target.max_visual_diff is not None and stats["diff"] > target.max_visual_diff
            message = f"{stats['diff']:.1%} of pixels changed since the last accepted screenshot"
            severity = Severity.ERROR if over else Severity.INFO
            findings.append(Finding(severity=severity, message=message, rule="visual.diff"))
        return {
            "url": url,
            "screenshot": str(path),
            "diff_ratio": stats["diff"],
            "dominant_color_share": round(stats["dominant"], 4),
            "text_chars": content["text"],
        }


async def _answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            await client.get(url + "/")
        return True
    except httpx.HTTPError:
        return False


async def _read_baseline(path: str | None) -> bytes | None:
    if path is None or not Path(path).is_file():
        return None
    return await asyncio.to_thread(Path(path).read_bytes)


def _screenshot_path(target: VerifyTarget, sandbox_id: str) -> Path:
    directory = Path(target.screenshot_dir or Path(tempfile.gettempdir()) / "kriptik-screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{target.name}-{sandbox_id}-{int(time.time() * 1000)}.png"


def _page_file(target: VerifyTarget) -> str:
    page = target.page_path.strip("/") or "index.html"
    if "." not in posixpath.basename(page):
        page = posixpath.join(page, "index.html")
    return posixpath.normpath(posixpath.join(target.root, target.web_root, page))


def source_file(url: str, base_url: str, target: VerifyTarget) -> str | None:
    """The workspace file a script URL of the dev server was served from (None for other origins)."""
    if not url.startswith(base_url):
        return None
    path = url[len(base_url) :].split("?", 1)[0].split("#", 1)[0].lstrip("/")
    if not path or path.endswith("/"):
        path += "index.html"
    return posixpath.normpath(posixpath.join(target.root, target.web_root, path))


def _on_console(msg: Any, base_url: str, target: VerifyTarget, findings: list[Finding]) -> None:
    if msg.type != "error":
        return
    location = msg.location or {}
    text = msg.text
    if text.startswith("Failed to load resource"):
        if "favicon.ico" in (location.get("url") or ""):
            return  # the browser asks for it unprompted
        message = f"{text} ({location.get('url')})"
        findings.append(Finding(severity=Severity.WARNING, message=message, rule="visual.resource"))
        return
    file = source_file(location.get("url") or "", base_url, target)
    line = int(location["lineNumber"]) + 1 if file and location.get("lineNumber") is not None else None
    findings.append(Finding(file=file, line=line, message=f"console error: {text}", rule="visual.console_error"))


def _on_page_error(error: Any, base_url: str, target: VerifyTarget, findings: list[Finding]) -> None:
    stack = getattr(error, "stack", None) or ""
    file = line = None
    for url, number in _STACK_FRAME.findall(stack):
        if (file := source_file(url, base_url, target)) is not None:
            line = int(number)
            break
    message = f"uncaught {getattr(error, 'name', 'Error')}: {getattr(error, 'message', error)}"
    findings.append(Finding(file=file, line=line, message=message, rule="visual.page_error"))
