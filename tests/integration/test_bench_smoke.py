"""Every benchmark script runs to the end (issue 10 item 12), with tiny parameters.

A benchmark that only works on its author's machine measures nothing: each script in
``bench/`` runs here as a user would run it (a fresh process, from the repository root) and
must exit 0 and write a well-formed results file. Results go to a temporary directory
(``CLOUDLESS_BENCH_RESULTS``), never over the measured figures in ``bench/results``.
Figures from these runs mean nothing; the smoke is that they are produced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"

#: script -> tiny arguments. Every script in bench/ that measures must be listed here.
SMOKE: dict[str, list[str]] = {
    "scheduler_decision": ["--sizes", "200", "--runs", "5", "--batch-runs", "2"],
    "transit_latency": ["--n", "20", "--threads", "2", "--per-thread", "10"],
    "secrets_latency": ["--n", "20", "--procs", "1", "--seconds", "0.5"],
    "heartbeat_ingest": ["--nodes", "20", "--streams", "2", "--seconds", "10", "--warmup", "2"],
    "gateway_auth_cost": [
        *("--nodes", "20", "--revoked", "10", "--reps", "1", "--window", "2", "--warmup", "2"),
    ],
    "apply_latency": ["--runs", "1"],
    "placement_throughput": [
        *("--nodes", "20", "--replicas", "100", "--per-workload", "10"),
        *("--appliers", "2", "--fleets", "1"),
    ],
    "outage_soak": ["--outage", "5"],
    "flood": ["--n", "20", "--rounds", "1", "--idle", "50"],
    "crashloop_reschedule": ["--runs", "1"],
    "churn_latency": [
        *("--trials", "1", "--partition-trials", "1", "--pool", "2", "--replicas", "2"),
    ],
    "cert_rotation": [
        *("--nodes", "20", "--window", "3", "--reps", "2", "--baseline", "2", "--warmup", "2"),
    ],
    "front_cost": [
        *("--n", "3", "--rounds", "2", "--warmup", "1", "--cpu-n", "2", "--idle", "0.2"),
        *("--cli-n", "1"),
    ],
}
#: Modules in bench/ that are not benchmarks (helpers, the report, the A/B driver).
NOT_MEASURING = {"__init__", "common", "report", "naive_placer", "ab"}
REQUIRED = {"metric", "unit", "p50", "p95", "p99", "n"}


def run(args: list[str], results: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLOUDLESS_BENCH_RESULTS": str(results), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def check_results(path: Path, script: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    assert data["script"].startswith(f"bench/{script}"), data["script"]
    assert data["date"] and data["machine"]["cpus"]
    assert data["results"], f"{path} has no results"
    for row in data["results"]:
        assert set(row) >= REQUIRED, f"{path}: {row.get('metric')} lacks {REQUIRED - set(row)}"
    return data


def test_every_benchmark_script_has_a_smoke_run() -> None:
    scripts = {p.stem for p in BENCH.glob("*.py")} - NOT_MEASURING
    assert scripts == set(SMOKE), "add the new bench script to SMOKE (tiny parameters)"


@pytest.mark.docker
@pytest.mark.temporal
@pytest.mark.parametrize("script", list(SMOKE))
def test_benchmark_runs_to_the_end(
    script: str, tmp_path: Path, busybox_image: str, temporal_binary_path: str
) -> None:
    if script == "churn_latency" and os.geteuid() != 0:
        pytest.fail("churn_latency needs root (network namespaces); run the suite as root")
    done = run([f"bench/{script}.py", *SMOKE[script]], tmp_path)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    data = check_results(tmp_path / f"{script}.json", script)
    if script == "apply_latency":  # settled means every replica ready (item 12)
        rows = data["results"]
        early = [
            r["parameters"]["answers_before_all_ready"] for r in rows if "apply" in r["metric"]
        ]
        assert early and not any(early), rows
    if script == "front_cost":  # each op through the front, with its ratio per round
        fronts = [r for r in data["results"] if "ratio_spread" in r]
        assert len(fronts) >= 3, data["results"]
        assert all(len(r["ratio_spread"]["p50_per_round"]) == 2 for r in fronts), fronts


@pytest.mark.temporal
def test_ab_and_report_run_to_the_end(tmp_path: Path, temporal_binary_path: str) -> None:
    """The A/B driver against two checkouts (here the same one), then the report page."""
    keep, results = tmp_path / "runs", tmp_path / "results"
    done = run(
        [
            *("bench/ab.py", "scheduler_decision", "--base", str(ROOT), "--after", str(ROOT)),
            *("--rounds", "1", "--keep", str(keep), "--"),
            *SMOKE["scheduler_decision"],
        ],
        results,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    data = check_results(results / "ab_scheduler_decision.json", "ab.py")
    rows = data["results"]
    assert all("ratio_p50_vs_baseline" in r for r in rows)
    assert not (ROOT / "bench" / "results" / "ab_scheduler_decision.json").exists()
    page = tmp_path / "benchmarks.md"
    done = run(["bench/report.py", "--results", str(results), "--out", str(page)], results)
    assert done.returncode == 0, done.stderr
    assert "ab.py scheduler_decision" in page.read_text()
