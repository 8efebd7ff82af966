"""A/B a benchmark between two source trees: same machine, same sitting, alternating.

A change that claims to cost nothing (a refactor) is measured against the tree before it:
``--base`` and ``--after`` are two checkouts (``git worktree add --detach DIR REV``), and the
script runs ``bench/<script>.py ARGS`` in each, alternating base/after for ``--rounds``
rounds, so drift of the machine (other jobs, thermal, page cache) hits both sides alike.
Each run writes its results into its own directory (``CLOUDLESS_BENCH_RESULTS``, so neither
tree's ``bench/results`` changes) and is kept under ``--keep`` (``<side>_<round>.json``).

The summary (``bench/results/ab_<name>.json``) has, per metric both sides report: the
after side's percentiles (median over rounds), ``n`` (samples over all rounds), the ratio
after/base of the medians of the rounds' p50s, and the spread: every round's own ratio
(after round i over base round i) and each side's p50 per round. For throughput metrics
(``unit`` ending in ``/s``) a ratio above 1 is better; for times, below 1.

``--collect DIR`` skips running and summarizes result files already in ``DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench.common import write_results  # noqa: E402

SIDES = ("base", "after")


def run_rounds(
    script: str, args: list[str], trees: dict[str, Path], rounds: int, keep: Path
) -> None:
    """Run the script in each tree, alternating, and keep each run's results file."""
    keep.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    for round_ in range(1, rounds + 1):
        for side in SIDES:
            tree = trees[side]
            results = keep / f"{side}_{round_}.d"  # its own results dir: no tree is written
            env = {**os.environ, "PYTHONPATH": str(tree), "CLOUDLESS_BENCH_RESULTS": str(results)}
            log = keep / f"{side}_{round_}.log"
            with log.open("w") as out:
                subprocess.run(
                    [python, f"bench/{script}.py", *args],
                    cwd=tree,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=True,
                )
            shutil.copy(results / f"{script}.json", keep / f"{side}_{round_}.json")
            print(f"round {round_}: {side} done ({log})", flush=True)


def load_runs(keep: Path) -> dict[str, list[dict[str, Any]]]:
    """Each side's results files, in round order."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for side in SIDES:
        files = sorted(keep.glob(f"{side}_*.json"), key=lambda p: int(p.stem.split("_")[-1]))
        runs[side] = [json.loads(p.read_text()) for p in files]
    if not runs["base"] or len(runs["base"]) != len(runs["after"]):
        raise SystemExit(f"{keep}: need as many base_N.json as after_N.json files (N = round)")
    return runs


def by_metric(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["metric"]: r for r in run["results"]}


def summarize(runs: dict[str, list[dict[str, Any]]], label: str) -> list[dict[str, Any]]:
    """One row per metric every run of both sides measured."""
    base = [by_metric(r) for r in runs["base"]]
    after = [by_metric(r) for r in runs["after"]]
    common = [m for m in after[0] if all(m in run for run in base + after)]
    rows = []
    for metric in common:
        b = [run[metric] for run in base]
        a = [run[metric] for run in after]
        if any(r["p50"] in (None, 0) for r in b):
            continue
        if all(r == b[0] for r in b + a):
            continue  # a row carried over from an earlier run in every file: not measured here
        b50 = [r["p50"] for r in b]
        a50 = [r["p50"] for r in a]
        rows.append(
            {
                "metric": f"{metric} [{label}]",
                "unit": a[0]["unit"],
                "p50": round(statistics.median(a50), 4),
                "p95": round(statistics.median(r["p95"] for r in a), 4),
                "p99": round(statistics.median(r["p99"] for r in a), 4),
                "n": sum(r["n"] for r in a),
                "parameters": {
                    **a[0].get("parameters", {}),
                    "rounds": len(a),
                    "base_p50_per_round": b50,
                    "after_p50_per_round": a50,
                    "ratio_per_round": [round(x / y, 3) for x, y in zip(a50, b50, strict=True)],
                },
                "ratio_p50_vs_baseline": round(statistics.median(a50) / statistics.median(b50), 3),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="The script's own arguments go after --."
    )
    parser.add_argument("script", help="bench script name, e.g. apply_latency")
    parser.add_argument("--base", type=Path, help="checkout measured as the baseline")
    parser.add_argument("--after", type=Path, help="checkout measured against it")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="where each run's files go")
    parser.add_argument("--collect", type=Path, help="summarize existing runs in this dir")
    parser.add_argument("--name", help="results file suffix (default: the script)")
    parser.add_argument("--label", default="after vs base", help="appended to metric names")
    parser.add_argument("--notes", default="", help="what base and after are")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    ns = parser.parse_args(argv[:split])
    args = argv[split + 1 :]  # the script's own arguments, after "--"
    if ns.collect is not None:
        keep = ns.collect
    else:
        if ns.base is None or ns.after is None or ns.keep is None:
            parser.error("--base, --after and --keep are required unless --collect is given")
        if ns.rounds < 1:
            parser.error("--rounds must be at least 1")
        keep = ns.keep
        run_rounds(ns.script, args, {"base": ns.base, "after": ns.after}, ns.rounds, keep)
    rows = summarize(load_runs(keep), ns.label)
    for r in rows:
        spread = r["parameters"]["ratio_per_round"]
        print(f"{r['metric']:<90} ratio {r['ratio_p50_vs_baseline']:>6}  rounds {spread}")
    path = write_results(f"ab_{ns.name or ns.script}", rows, ns.notes)
    data = json.loads(path.read_text())
    data["script"] = f"bench/ab.py {ns.script}"  # what to rerun, not a file of its own
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
