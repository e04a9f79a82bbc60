"""Where a build's time goes: ``kriptik demo``'s figures over several runs, and each component's steps.

``python -m bench.pipeline --json [--example todo-fullstack] [--runs 2]`` runs the example build
through :func:`serve.demo_build.run_build_demo` (a private Ray, Redis and Control each run, the
replay LLM: instant model answers) and reports, per run and as medians, ``wall_s``,
``build_phase_s``, ``sum_component_s``, ``parallelism`` and ``per_component_overhead_s`` (the mean
over components of pipeline time in which none of the component's sandbox commands, gate commands
or model calls ran). Without ``--json`` it also prints, per component, the steps between its
milestone events with how much of each was real work (:func:`serve.demo_build.pipeline_breakdown`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

from rich.console import Console

from bench.common import emit
from serve.demo_build import DemoOptions, format_breakdown, run_build_demo

FIGURES = ("wall_s", "build_phase_s", "sum_component_s", "parallelism", "per_component_overhead_s")


async def _runs(example: str, runs: int, console: Console) -> list[dict[str, Any]]:
    results = []
    for _ in range(runs):
        results.append(await run_build_demo(DemoOptions(example=example, breakdown=True), console))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--example", default="todo-fullstack")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    console = Console(stderr=True, quiet=args.json)
    results = asyncio.run(_runs(args.example, args.runs, console))
    if not args.json:
        for n, result in enumerate(results, 1):
            print(f"run {n} ({result['status']}):\n{format_breakdown(result.get('breakdown', {}))}")
    summary: dict[str, Any] = {"example": args.example, "runs": len(results)}
    summary["statuses"] = [r["status"] for r in results]
    for figure in FIGURES:
        values = [r[figure] for r in results if r.get(figure) is not None]
        summary[figure] = round(statistics.median(values), 2) if values else None
        summary[f"{figure}_runs"] = values
    emit(summary, args.json)


if __name__ == "__main__":
    main()
