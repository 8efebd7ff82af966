"""bench/ab.py: ratios and their spread come from the rounds; carried-over rows are dropped."""

from __future__ import annotations

from typing import Any

from bench.ab import summarize


def run(rows: dict[str, float], stale: float = 1.0) -> dict[str, Any]:
    results = [
        {"metric": m, "unit": "s", "p50": v, "p95": v, "p99": v, "n": 10} for m, v in rows.items()
    ]
    results.append({"metric": "old", "unit": "s", "p50": stale, "p95": 1, "p99": 1, "n": 1})
    return {"results": results}


def test_ratio_is_median_after_over_median_base_with_each_round_kept() -> None:
    runs = {
        "base": [run({"apply": 1.0}), run({"apply": 2.0}), run({"apply": 1.0})],
        "after": [run({"apply": 1.1}), run({"apply": 1.8}), run({"apply": 1.0})],
    }
    (row,) = summarize(runs, "x")
    assert row["metric"] == "apply [x]"
    assert row["ratio_p50_vs_baseline"] == 1.1  # median 1.1 over median 1.0
    assert row["parameters"]["ratio_per_round"] == [1.1, 0.9, 1.0]
    assert row["n"] == 30


def test_a_row_identical_in_every_file_was_not_measured_and_is_left_out() -> None:
    runs = {"base": [run({"a": 1.0})], "after": [run({"a": 1.2}, stale=2.0)]}
    assert [r["metric"] for r in summarize(runs, "x")] == ["a [x]", "old [x]"]
    runs = {"base": [run({"a": 1.0})], "after": [run({"a": 1.0})]}
    assert summarize(runs, "x") == []
