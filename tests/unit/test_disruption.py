"""The disruption budget (policies.disruption): minAvailable and maxUnavailable together."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.disruption import resolve_max_unavailable, retire_budget

counts = st.integers(0, 1000)
percents = st.integers(0, 100)


@given(percents, counts)
def test_percentage_rounds_down_and_stays_within_desired(percent: int, desired: int) -> None:
    got = resolve_max_unavailable(f"{percent}%", desired)
    assert got is not None and 0 <= got <= desired
    assert got * 100 <= percent * desired < (got + 1) * 100


@given(percents, percents, counts)
def test_percentage_is_monotone(a: int, b: int, desired: int) -> None:
    low, high = sorted((a, b))
    lo = resolve_max_unavailable(f"{low}%", desired)
    hi = resolve_max_unavailable(f"{high}%", desired)
    assert lo is not None and hi is not None and lo <= hi


@pytest.mark.parametrize(
    ("value", "desired", "expected"),
    [(None, 5, None), (2, 5, 2), (7, 5, 7), ("0%", 5, 0), ("100%", 5, 5), ("25%", 3, 0),
     ("25%", 4, 1), ("50%", 5, 2), ("34%", 3, 1)],
)  # fmt: skip
def test_resolve_examples(value: int | str | None, desired: int, expected: int | None) -> None:
    assert resolve_max_unavailable(value, desired) == expected


def test_resolve_refuses_what_the_manifest_would_refuse() -> None:
    with pytest.raises(ValueError, match="percentage"):
        resolve_max_unavailable("a lot", 3)


budgets = st.fixed_dictionaries(
    {
        "desired": st.integers(0, 50),
        "available": st.integers(0, 60),
        "min_available": st.integers(0, 50),
        "max_unavailable": st.none() | st.integers(0, 50),
    }
)


@given(budgets)
def test_budget_keeps_both_limits(b: dict[str, int | None]) -> None:
    got = retire_budget(**b)  # type: ignore[arg-type]
    desired, available = int(b["desired"] or 0), int(b["available"] or 0)
    min_available, max_unavailable = int(b["min_available"] or 0), b["max_unavailable"]
    assert 0 <= got <= available
    if got:
        assert available - got >= min_available
        if max_unavailable is not None:
            assert desired - (available - got) <= max_unavailable


@given(budgets)
def test_budget_is_the_largest_that_keeps_them(b: dict[str, int | None]) -> None:
    """Retiring one more would break a limit (or there is nothing left to retire)."""
    got = retire_budget(**b)  # type: ignore[arg-type]
    desired, available = int(b["desired"] or 0), int(b["available"] or 0)
    min_available, max_unavailable = int(b["min_available"] or 0), b["max_unavailable"]
    more = got + 1
    assert (
        more > available
        or available - more < min_available
        or (max_unavailable is not None and desired - (available - more) > max_unavailable)
    )


@given(st.integers(0, 50), st.integers(0, 60), st.integers(0, 50))
def test_unset_max_unavailable_is_the_old_min_available_rule(
    desired: int, available: int, min_available: int
) -> None:
    got = retire_budget(
        desired=desired, available=available, min_available=min_available, max_unavailable=None
    )
    assert got == max(0, available - min_available)


@given(
    st.integers(1, 40),
    st.integers(0, 40),
    st.integers(0, 40),
    st.integers(1, 40),
)
def test_a_drain_on_a_full_cluster_never_goes_below_the_floor(
    desired: int, min_available: int, max_unavailable: int, on_node: int
) -> None:
    """Simulate the workflow's passes: each retires up to the budget (at most the number of
    unplaced replacements) and nothing can be placed. Availability bottoms out at
    ``max(minAvailable, desired - maxUnavailable)`` (or where it started, if lower), and
    repeated passes retire nothing more once it gets there."""
    min_available = min(min_available, desired)
    evicting = min(on_node, desired)
    available = desired
    floor = max(min_available, desired - max_unavailable)
    for _ in range(desired + 2):
        budget = retire_budget(
            desired=desired,
            available=available,
            min_available=min_available,
            max_unavailable=max_unavailable,
        )
        retired = min(budget, evicting)
        available -= retired
        evicting -= retired
        assert available >= min(floor, desired)
    assert evicting == 0 or available == floor
