"""When a node certificate is renewed, how failed renewals back off, and how often the
CA renews one node (:mod:`policies.renewal`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.renewal import (
    CHECK_EVERY,
    FALLBACK_AT,
    MIN_RENEWAL_INTERVAL,
    RENEW_AT,
    RENEW_JITTER,
    Lifetime,
    renew_at,
    renewal_refusal,
    renewal_wait,
    retry_delay,
    rotation_interval,
    rotation_reach,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SKEW = timedelta(minutes=5)

lifetimes = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=400))
jitters = st.floats(min_value=-1.0, max_value=1.0)


def lifetime(length: timedelta) -> Lifetime:
    """A certificate issued at T0, backdated as the cluster CA does."""
    return Lifetime.of(T0 - SKEW, T0 + length, SKEW)


def test_a_thirty_day_certificate_renews_after_about_twenty_days() -> None:
    life = lifetime(timedelta(days=30))
    assert life.issued == T0 and life.length == timedelta(days=30)
    assert renew_at(life, 0.0) == T0 + timedelta(days=20)
    assert renew_at(life, 1.0) == T0 + timedelta(days=21.5)
    assert renew_at(life, -1.0) == T0 + timedelta(days=18.5)


def test_the_backdate_is_not_counted_as_lifetime() -> None:
    # Counting the 5 backdated minutes would put 2/3 of a 3 s certificate past its expiry.
    life = lifetime(timedelta(seconds=3))
    assert life.issued == T0
    assert renew_at(life, 0.0) == T0 + timedelta(seconds=2)


def test_a_certificate_shorter_than_the_backdate_starts_at_not_before() -> None:
    life = Lifetime.of(T0, T0 + timedelta(seconds=30), SKEW)
    assert life.issued == T0


def test_a_certificate_ending_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="before it starts"):
        Lifetime.of(T0, T0, SKEW)


@given(lifetimes, jitters)
def test_renewal_is_due_around_two_thirds_and_inside_the_lifetime(
    length: timedelta, jitter: float
) -> None:
    life = lifetime(length)
    due = renew_at(life, jitter)
    assert life.issued < due < life.not_after
    fraction = (due - life.issued) / life.length
    assert RENEW_AT - RENEW_JITTER - 1e-6 <= fraction <= RENEW_AT + RENEW_JITTER + 1e-6


@pytest.mark.parametrize("jitter", [-1.01, 1.01, float("nan")])
def test_jitter_outside_its_range_is_refused(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        renew_at(lifetime(timedelta(days=1)), jitter)


@given(
    lifetimes,
    st.integers(min_value=1, max_value=200),
    st.floats(min_value=0.5, max_value=1.0),
    st.floats(min_value=0.0, max_value=1.2),
)
def test_retries_back_off_within_bounds_and_never_past_the_expiry(
    length: timedelta, attempt: int, jitter: float, elapsed: float
) -> None:
    life = lifetime(length)
    now = life.issued + length * elapsed
    delay = retry_delay(life, attempt, now, jitter)
    assert delay >= timedelta(0)
    assert delay <= timedelta(minutes=5)
    left = life.not_after - now
    assert now + delay <= max(now, life.not_after - left / 2) + timedelta(microseconds=1)
    # Backoff grows with the attempt (until the cap or the expiry bounds it).
    assert retry_delay(life, attempt + 1, now, jitter) >= delay


@given(lifetimes)
def test_retries_leave_room_for_many_attempts_before_expiry(length: timedelta) -> None:
    """From the renewal point, at least 10 attempts fit before the certificate expires."""
    life = lifetime(length)
    now, attempts = renew_at(life, 1.0), 0
    while now < life.not_after and attempts < 10:
        attempts += 1
        step = retry_delay(life, attempts, now, 1.0)
        if step <= timedelta(0):
            break
        now += step
    assert attempts >= 10
    assert now < life.not_after


def test_retry_arguments_are_checked() -> None:
    life = lifetime(timedelta(days=1))
    with pytest.raises(ValueError, match="attempt"):
        retry_delay(life, 0, T0, 1.0)
    with pytest.raises(ValueError, match="jitter"):
        retry_delay(life, 1, T0, 0.2)


@given(lifetimes, st.floats(min_value=0.0, max_value=2.0))
def test_the_ca_renews_a_node_at_most_once_per_quarter_lifetime(
    length: timedelta, elapsed: float
) -> None:
    now = T0 + length * elapsed
    until = renewal_refusal(T0, T0 + length, now)
    allowed = T0 + length * MIN_RENEWAL_INTERVAL
    if now < allowed:
        assert until == allowed
    else:
        assert until is None


@given(lifetimes, jitters)
def test_a_node_renewing_on_schedule_never_meets_the_bound(
    length: timedelta, jitter: float
) -> None:
    life = lifetime(length)
    assert renewal_refusal(life.issued, life.not_after, renew_at(life, jitter)) is None


# ------------------------------------------------------------ the coordinator's own


def test_a_ninety_day_coordinator_certificate_renews_at_sixty_days() -> None:
    life = lifetime(timedelta(days=90))
    hour = timedelta(hours=1)
    assert renewal_wait(life, T0, hour) == hour  # far from due: look again in an hour
    assert renewal_wait(life, T0 + timedelta(days=60) - 5 * timedelta(minutes=1), hour) == (
        timedelta(minutes=5)
    )
    assert renewal_wait(life, T0 + timedelta(days=60), hour) == timedelta(0)
    assert renewal_wait(life, T0 + timedelta(days=89), hour) == timedelta(0)


def test_the_check_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        renewal_wait(lifetime(timedelta(days=1)), T0, timedelta(0))


@given(
    lifetimes,
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=500)),
    st.timedeltas(min_value=timedelta(milliseconds=1), max_value=timedelta(days=1)),
)
def test_the_wait_is_bounded_and_zero_exactly_from_two_thirds_on(
    length: timedelta, elapsed: timedelta, interval: timedelta
) -> None:
    life = lifetime(length)
    now = T0 + elapsed
    wait = renewal_wait(life, now, interval)
    assert timedelta(0) <= wait <= interval
    due = renew_at(life, 0.0)
    assert (wait == timedelta(0)) == (now >= due)
    # Waiting never passes the renewal point, so a holder that looks again when told
    # renews at two thirds, well before the expiry.
    assert now + wait <= max(now, due) and due < life.not_after


# ------------------------------------------------------- renewed by the cert-rotation Schedule


def test_the_fallback_point_waits_past_the_schedules_renewal_point() -> None:
    life = lifetime(timedelta(days=90))
    hour = timedelta(hours=1)
    at_sixty = T0 + timedelta(days=60)
    assert renewal_wait(life, at_sixty, hour) == timedelta(0)
    assert renewal_wait(life, at_sixty, hour, FALLBACK_AT) == hour
    assert renewal_wait(life, T0 + timedelta(days=76.5), hour, FALLBACK_AT) == timedelta(0)


@pytest.mark.parametrize("at", [0.0, 1.0, -0.1, 1.5])
def test_the_renewal_point_is_a_fraction_inside_the_lifetime(at: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        renewal_wait(lifetime(timedelta(days=1)), T0, timedelta(hours=1), at)


def test_the_schedule_looks_hourly_in_production_and_every_second_at_least() -> None:
    assert rotation_interval(timedelta(days=90)) == timedelta(hours=1)
    assert rotation_interval(timedelta(hours=5)) == timedelta(minutes=30)
    assert rotation_interval(timedelta(seconds=20)) == timedelta(seconds=2)
    assert rotation_interval(timedelta(seconds=3)) == timedelta(seconds=1)
    with pytest.raises(ValueError, match="positive"):
        rotation_interval(timedelta(0))


@given(lifetimes)
def test_a_schedule_look_falls_between_the_renewal_and_fallback_points(
    length: timedelta,
) -> None:
    """Looking every ``rotation_interval``, the Schedule meets every certificate between
    its renewal point and the point where its holder would renew it itself, as long as
    the lifetime allows a look every second (ten seconds and longer)."""
    every = rotation_interval(length)
    assert timedelta(seconds=1) <= every <= timedelta(hours=1)
    assert every.total_seconds() == int(every.total_seconds())
    assert every <= length * CHECK_EVERY or every == timedelta(seconds=1)
    if length >= timedelta(seconds=10):
        assert every < length * (FALLBACK_AT - RENEW_AT)


def test_a_run_waits_for_an_instance_a_tenth_of_the_lifetime_within_bounds() -> None:
    assert rotation_reach(timedelta(days=90)) == timedelta(seconds=30)
    assert rotation_reach(timedelta(seconds=100)) == timedelta(seconds=10)
    assert rotation_reach(timedelta(seconds=15)) == timedelta(seconds=2)
    with pytest.raises(ValueError, match="positive"):
        rotation_reach(timedelta(0))
