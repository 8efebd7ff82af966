"""Crash-loop rescheduling decisions (policies.reschedule): tables, then hypothesis.

The simulation plays a line of replicas that keeps crashing: each reschedule starts a new
replica (an empty crash history on its new node) that inherits the line's reschedules,
as the workload workflow does.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudless.vocabulary import DelayFunction
from policies.reschedule import (
    MAX_ATTEMPTS,
    MAX_FAILURES,
    Decision,
    ReschedulePolicy,
    Verdict,
    decide,
    loop_start,
    recent,
    reschedule_delay,
)

POLICY = ReschedulePolicy(
    failures=3, failure_window=30, attempts=2, interval=100, delay=2, max_delay=10
)


def test_defaults_are_bounded_and_in_seconds() -> None:
    p = ReschedulePolicy()
    assert (p.failures, p.failure_window, p.attempts, p.interval) == (3, 60, 3, 300)
    assert (p.delay, p.delay_function, p.max_delay, p.unlimited) == (
        1,
        DelayFunction.EXPONENTIAL,
        60,
        False,
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"failures": 0}, "failures must be in [1, 20]"),
        ({"attempts": 21}, "attempts must be in [0, 20]"),
        ({"failure_window": math.nan}, "failure_window must be in"),
        ({"delay": 20}, "max_delay (10) must not be below delay (20)"),
    ],
)
def test_a_policy_out_of_bounds_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        replace(POLICY, **changes)


@pytest.mark.parametrize(
    ("crashes", "reschedules", "now", "failed", "expected"),
    [
        # Two crashes in the window: the agent's restarts handle it.
        ([10, 11], [], 12, False, Decision(Verdict.STAY, crashes=2)),
        # The third: crash-looping since 13; the first reschedule waits `delay` (2 s).
        ([10, 11, 13], [], 14, False, Decision(Verdict.WAIT, at=15, crashes=3)),
        ([10, 11, 13], [], 15, False, Decision(Verdict.NOW, crashes=3)),
        # Crashes older than the window do not count.
        ([10, 11, 13], [], 42, False, Decision(Verdict.STAY, crashes=1)),
        # One earlier reschedule within the interval: the delay doubles (4 s).
        ([10, 11, 13], [5], 16, False, Decision(Verdict.WAIT, at=17, crashes=3)),
        # One older than the interval is forgotten: the delay is back to 2 s.
        ([200, 201, 203], [5], 205, False, Decision(Verdict.NOW, crashes=3)),
        # A failed replica (its agent gave up) needs no count: `delay` after its failure.
        ([10], [], 11, True, Decision(Verdict.WAIT, at=12, crashes=1)),
        ([], [], 11, True, Decision(Verdict.NOW)),
    ],
)
def test_decide(
    crashes: list[float], reschedules: list[float], now: float, failed: bool, expected: Decision
) -> None:
    assert decide(POLICY, crashes, reschedules, now, failed=failed) == expected


def test_attempts_used_up_keep_the_replica_and_say_until_when() -> None:
    got = decide(POLICY, [50, 51, 53], [10, 40], 54)
    # The reschedule at 10 leaves the interval at 110; the loop ends when 50 ages out (80).
    assert got.verdict == Verdict.EXHAUSTED and got.at == 80 and got.crashes == 3
    assert got.reason == (
        "rescheduled 2 time(s) in the last 100s, the limit (spec.reschedule.attempts: 2)"
    )
    failed = decide(POLICY, [50, 51, 53], [10, 40], 54, failed=True)
    assert failed.verdict == Verdict.EXHAUSTED and failed.at == 110  # it does not run: wait
    off = decide(replace(POLICY, attempts=0), [50, 51, 53], [], 54, failed=True)
    assert off == Decision(
        Verdict.EXHAUSTED, crashes=3, reason="rescheduling is off (spec.reschedule.attempts: 0)"
    )
    assert decide(replace(POLICY, unlimited=True), [50, 51, 53], [10, 40, 52], 54).verdict in (
        Verdict.WAIT,
        Verdict.NOW,
    )


@pytest.mark.parametrize(
    ("function", "delays"),
    [
        (DelayFunction.CONSTANT, [2, 2, 2, 2, 2, 2]),
        (DelayFunction.EXPONENTIAL, [2, 4, 8, 10, 10, 10]),
        (DelayFunction.FIBONACCI, [2, 2, 4, 6, 10, 10]),
    ],
)
def test_delay_functions(function: DelayFunction, delays: list[float]) -> None:
    policy = replace(POLICY, delay_function=function)
    assert [reschedule_delay(policy, n) for n in range(6)] == delays


def test_the_loop_start_stays_put_while_the_replica_keeps_crashing() -> None:
    crashes = [0.0, 1, 3, 7, 15, 25, 35, 45]  # 3 crashes within 30 s at every crash from 3 on
    assert loop_start(POLICY, crashes[:3]) == 3
    assert loop_start(POLICY, crashes) == 3
    assert loop_start(POLICY, [*crashes, 200]) == -math.inf  # a lone crash much later
    assert loop_start(POLICY, [*crashes, 200, 201, 202]) == 202  # a new loop
    one = replace(POLICY, failures=1)
    assert loop_start(one, [0, 10, 100, 110]) == 100  # the gap of 90 s ended the first loop


# --------------------------------------------------------------------------- hypothesis

policies = st.builds(
    ReschedulePolicy,
    failures=st.integers(1, MAX_FAILURES),
    failure_window=st.integers(1, 120),
    attempts=st.integers(0, MAX_ATTEMPTS),
    interval=st.integers(1, 600),
    delay=st.integers(0, 30),
    delay_function=st.sampled_from(list(DelayFunction)),
    max_delay=st.integers(30, 120),
    unlimited=st.booleans(),
)
gaps = st.lists(st.floats(0.01, 90, allow_nan=False), min_size=1, max_size=120)


def simulate(policy: ReschedulePolicy, crash_gaps: list[float]) -> list[float]:
    """A line of replicas crashing at the given gaps, decided at every crash and at every
    time the decision asks to be woken; returns when the line was rescheduled."""
    now = 0.0
    crashes: list[float] = []
    moves: list[float] = []
    wake = math.inf
    for gap in crash_gaps:
        crash_at = now + gap
        while wake <= crash_at:  # the workflow's timer fires before the next crash
            now, wake = wake, math.inf
            wake = step(policy, crashes, moves, now)
        now = crash_at
        crashes.append(now)
        wake = step(policy, crashes, moves, now)
    return moves


def step(policy: ReschedulePolicy, crashes: list[float], moves: list[float], now: float) -> float:
    got = decide(policy, crashes, moves, now)
    if got.verdict == Verdict.NOW:
        moves.append(now)
        crashes.clear()  # the replacement runs elsewhere and has crashed nowhere yet
        return math.inf
    if got.verdict in (Verdict.WAIT, Verdict.EXHAUSTED) and got.at:
        assert got.at > now  # a wake-up in the past would spin
        return got.at
    return math.inf


@settings(max_examples=400, deadline=None)
@given(policies, gaps)
def test_never_more_than_attempts_reschedules_in_any_interval(
    policy: ReschedulePolicy, crash_gaps: list[float]
) -> None:
    moves = simulate(policy, crash_gaps)
    assert moves == sorted(moves)
    if policy.unlimited:
        return
    for end in moves:
        assert sum(1 for t in moves if t + policy.interval > end and t <= end) <= policy.attempts


@settings(max_examples=400, deadline=None)
@given(policies, gaps)
def test_a_line_is_rescheduled_no_sooner_than_its_delay_after_crash_looping(
    policy: ReschedulePolicy, crash_gaps: list[float]
) -> None:
    """Each reschedule follows at least `failures` crashes in the window (the line's new
    replica has to crash-loop again) and the delay for the reschedules before it."""
    moves = simulate(policy, crash_gaps)
    for i, t in enumerate(moves[1:], start=1):
        prior = len(recent(moves[:i], t, policy.interval))
        assert t - moves[i - 1] >= reschedule_delay(policy, prior)


@settings(max_examples=300, deadline=None)
@given(policies, st.integers(0, 200))
def test_the_delay_grows_monotonically_within_its_bounds(policy: ReschedulePolicy, n: int) -> None:
    assert reschedule_delay(policy, 0) == min(policy.delay, policy.max_delay)
    assert reschedule_delay(policy, n) <= reschedule_delay(policy, n + 1) <= policy.max_delay
    assert reschedule_delay(policy, n) >= policy.delay


@settings(max_examples=300, deadline=None)
@given(
    policies,
    st.lists(st.floats(0, 1000, allow_nan=False), max_size=30),
    st.lists(st.floats(0, 1000, allow_nan=False), max_size=MAX_ATTEMPTS),
    st.lists(st.floats(0, 60, allow_nan=False), max_size=MAX_FAILURES),
    st.booleans(),
)
def test_a_replica_that_ran_healthy_long_enough_starts_over(
    policy: ReschedulePolicy,
    old_crashes: list[float],
    old_moves: list[float],
    new_crashes: list[float],
    failed: bool,
) -> None:
    """History older than the failure window and the interval is forgotten: after a long
    enough healthy run the decision is the one for a line that never crashed before."""
    quiet = max(policy.failure_window, policy.interval) + 1000
    now = quiet + 60
    shifted = [quiet + t for t in new_crashes]
    fresh = decide(policy, shifted, [], now, failed=failed)
    assert decide(policy, old_crashes + shifted, old_moves, now, failed=failed) == fresh


@settings(max_examples=300, deadline=None)
@given(policies, st.lists(st.floats(0, 600, allow_nan=False), max_size=40), st.floats(0, 700))
def test_fewer_crashes_than_the_threshold_never_move_a_running_replica(
    policy: ReschedulePolicy, crashes: list[float], now: float
) -> None:
    got = decide(policy, crashes, [], now)
    in_window = len(recent(crashes, now, policy.failure_window))
    assert (got.verdict == Verdict.STAY) == (in_window < policy.failures)
