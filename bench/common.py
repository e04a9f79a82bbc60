"""Helpers shared by the benchmarks: percentiles, the JSON last line, and a private Ray (from actors/)."""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def emit(result: dict[str, Any], as_json: bool) -> None:
    """Print a human summary, then (with --json) the one JSON object as the last line."""
    if not as_json:
        for key, value in result.items():
            print(f"{key:>28}: {value}")
        return
    print(json.dumps(result), flush=True)
    sys.stdout.flush()


from actors.ray_local import private_ray  # noqa: E402  (re-exported: every bench starts its Ray this way)

__all__ = ["emit", "p50", "pct", "private_ray"]
