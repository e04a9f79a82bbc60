"""Verification swarm latency: all six verifiers on the good fixture app in a real local sandbox.

``python -m bench.swarm --json`` — the p50 over a few rounds of each verifier's own duration
(``<name>_s``) and of the swarm's wall time (``total_s``; the verifiers run concurrently).
Chromium is launched once before timing, as the swarm actor keeps a warm one; the dev server
is started by the first (untimed) round, as it keeps running between verifications.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

from bench.common import emit, p50

APP = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "apps"


async def _measure(rounds: int) -> dict[str, float]:
    from sandbox_agents.backends.base import SandboxSpec
    from sandbox_agents.backends.local.backend import LocalBackend
    from sandbox_agents.verifiers import Chromium, DesignTokens, VerificationSwarm, VerifyTarget, default_verifiers

    backend = LocalBackend()
    sandbox = await backend.create(SandboxSpec(ports=(8000,), tags={"bench": "swarm"}))
    try:
        for path in sorted((APP / "good_app").rglob("*")):
            if path.is_file():
                await sandbox.write_file(str(path.relative_to(APP / "good_app")), path.read_bytes())
        target = VerifyTarget(
            dev_command="python3 -m http.server 8000 --directory web",
            dev_port=8000,
            web_root="web",
            tokens=DesignTokens.model_validate_json((APP / "design_tokens.json").read_text()),
            screenshot_dir=tempfile.mkdtemp(prefix="kriptik-bench-shots-"),
            name="bench",
        )
        async with Chromium() as chromium:
            swarm = VerificationSwarm(default_verifiers(chromium))
            warm = await swarm.run(sandbox, target)  # starts the dev server; not timed
            if not warm.passed:
                raise RuntimeError(f"the good app failed verification: {warm.model_dump_json()}")
            per: dict[str, list[float]] = {r.verifier: [] for r in warm.reports}
            totals = []
            for _ in range(rounds):
                started = time.perf_counter()
                report = await swarm.run(sandbox, target)
                totals.append(time.perf_counter() - started)
                for r in report.reports:
                    per[r.verifier].append(r.duration_s)
    finally:
        await sandbox.terminate()
        await backend.close()
    result = {f"{name}_s": p50(values) for name, values in per.items()}
    result["total_s"] = p50(totals)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    emit(asyncio.run(_measure(args.rounds)), args.json)


if __name__ == "__main__":
    main()
