"""Shared helpers for benchmark scripts: percentiles, machine facts, result files."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

#: Where results go; ``CLOUDLESS_BENCH_RESULTS`` redirects them (the CI smoke runs, which
#: must not overwrite the measured figures).
RESULTS = Path(
    os.environ.get("CLOUDLESS_BENCH_RESULTS") or Path(__file__).resolve().parent / "results"
)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); exact for the small samples we take."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    # Nearest rank is ceil(q/100 * n); q * n is computed first so that e.g. 99 * 100 / 100
    # is exactly 99 (round(x + 0.5) rounded halves to even: p99 of 100 samples was the max).
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered) / 100)))
    return ordered[rank - 1]


def summarize(
    metric: str, unit: str, values: Sequence[float], parameters: dict[str, Any]
) -> dict[str, Any]:
    return {
        "metric": metric,
        "unit": unit,
        "p50": round(percentile(values, 50), 4),
        "p95": round(percentile(values, 95), 4),
        "p99": round(percentile(values, 99), 4),
        "mean": round(statistics.fmean(values), 4) if values else None,
        "n": len(values),
        "parameters": parameters,
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_results(script: str, results: list[dict[str, Any]], notes: str = "") -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{script}.json"
    payload = {
        "script": f"bench/{script}.py",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "notes": notes,
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'metric':<58} {'p50':>9} {'p95':>9} {'p99':>9} {'n':>4}")
    for r in results:
        print(
            f"{r['metric']:<58} {r['p50']:>9.3f} {r['p95']:>9.3f} {r['p99']:>9.3f} {r['n']:>4}"
            f"  {r['unit']}"
        )
