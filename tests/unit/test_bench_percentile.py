"""The benchmarks' nearest-rank percentile: rank ceil(q/100 * n), 1-based."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from bench.common import percentile


def test_known_ranks() -> None:
    hundred = [float(v) for v in range(1, 101)]
    assert (percentile(hundred, 50), percentile(hundred, 95), percentile(hundred, 99)) == (
        50.0,
        95.0,
        99.0,
    )
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0], 99) == 1.0
    assert math.isnan(percentile([], 50))


@given(st.lists(st.floats(allow_nan=False), min_size=1, max_size=200), st.integers(1, 100))
def test_at_least_q_percent_are_at_or_below(values: list[float], q: int) -> None:
    p = percentile(values, q)
    below = sum(1 for v in values if v <= p)
    assert below * 100 >= q * len(values)
    strictly_below = sum(1 for v in values if v < p)
    assert strictly_below * 100 < q * len(values)
