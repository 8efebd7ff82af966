"""The one duration grammar (cloudless.durations): flags, Vault's forms, and round trips."""

from __future__ import annotations

from datetime import timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudless.durations import (
    UNITS,
    DurationError,
    format_duration,
    parse_duration,
    parse_seconds,
)
from transit.keyring import TransitError, parse_vault_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("1h", 3600),
        ("90d", 90 * 86400),
        ("1h30m", 5400),
        ("30m1h", 5400),  # any order, as in Go
        ("1h1h", 7200),
        ("1.5h", 5400),
        (".5s", Fraction(1, 2)),
        ("2.s", 2),
        ("250ms", Fraction(1, 4)),
        ("1500us", Fraction(3, 2000)),
        ("1500µs", Fraction(3, 2000)),
        ("1500μs", Fraction(3, 2000)),
        ("7ns", Fraction(7, 10**9)),
        ("1m5s", 65),
        (" 2h ", 7200),
        ("-1h", -3600),
        ("+1h", 3600),
        ("0s", 0),
        ("0.1s", Fraction(1, 10)),  # exact, not 0.1000000000000000055...
    ],
)
def test_grammar(text: str, seconds: Fraction | int) -> None:
    assert parse_seconds(text) == seconds
    assert parse_seconds(text, whole_seconds=False) == seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(3600, 3600), ("3600", 3600), ("-60", -60), (0, 0), ("0", 0), (1.5, Fraction(3, 2))],
)
def test_whole_seconds_is_vaults_other_form(value: str | float, seconds: Fraction) -> None:
    assert parse_seconds(value) == seconds
    with pytest.raises(DurationError, match="90s, 30m"):
        parse_seconds(value, whole_seconds=False)


@pytest.mark.parametrize(
    "value", ["", "h", "1y", "abc", "1h 30m", "1 h", "1.5", "--1h", "1h-30m", "1hh", "5", "1e3s"]
)
def test_not_durations_say_what_is_accepted(value: str) -> None:
    whole = value.isdigit()  # "5" is whole seconds, refused only where a unit is required
    if not whole:
        with pytest.raises(DurationError, match="is not a duration; use a form like 90s"):
            parse_seconds(value)
    with pytest.raises(DurationError, match="is not a duration"):
        parse_seconds(value, whole_seconds=False)


@pytest.mark.parametrize("value", [True, None, [1], float("inf"), float("nan")])
def test_non_strings_that_are_not_seconds(value: object) -> None:
    with pytest.raises(DurationError):
        parse_seconds(value)  # type: ignore[arg-type]


def test_flags_need_a_unit_and_a_positive_value() -> None:
    assert parse_duration("90d") == timedelta(days=90)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("1.5s") == timedelta(seconds=1.5)
    assert parse_duration("250ms") == timedelta(milliseconds=250)
    with pytest.raises(ValueError, match="not valid; use a form like 90s, 30m, 1h or 1h30m"):
        parse_duration("90")  # seconds? days? a flag must say
    with pytest.raises(ValueError, match="not valid"):
        parse_duration("soon")
    for zero in ("0s", "0h0m", "1ns", "-5m"):
        with pytest.raises(ValueError, match="must be positive"):
            parse_duration(zero)
    with pytest.raises(ValueError, match="too long"):
        parse_duration(f"{10**12}d")


def test_vault_fields_round_down_and_name_the_field() -> None:
    assert parse_vault_duration("1.9s") == 1
    assert parse_vault_duration(-0.5) == -1  # floor, as before
    with pytest.raises(TransitError, match='field "ttl": expected a duration'):
        parse_vault_duration(True, "ttl")
    with pytest.raises(TransitError, match="field \"ttl\": '1y' is not a duration; use seconds"):
        parse_vault_duration("1y", "ttl")


# --------------------------------------------------------------------------- properties

_units = st.sampled_from(sorted(UNITS))


@given(st.lists(st.tuples(st.integers(0, 10**6), _units), min_size=1, max_size=6))
def test_parts_add_up(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_seconds(text) == sum(n * UNITS[u] for n, u in parts)


@given(
    st.integers(0, 10**6),
    st.integers(0, 999),
    st.sampled_from(["ms", "s", "m", "h", "d"]),
)
def test_decimal_parts_are_exact(whole: int, thousandths: int, unit: str) -> None:
    text = f"{whole}.{thousandths:03d}{unit}"
    assert parse_seconds(text) == (whole + Fraction(thousandths, 1000)) * UNITS[unit]


@given(st.integers(1, 10**9))
def test_format_then_parse_round_trips(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    text = format_duration(delta)
    assert parse_duration(text) == delta
    assert parse_vault_duration(text) == seconds
    assert format_duration(parse_duration(text)) == text


@given(st.integers(-(10**12), 10**12))
def test_whole_seconds_round_trip(seconds: int) -> None:
    assert parse_seconds(str(seconds)) == seconds
    assert parse_vault_duration(seconds) == parse_vault_duration(str(seconds)) == seconds
