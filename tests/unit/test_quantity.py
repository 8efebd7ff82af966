"""Quantity parsing: exact integer results, helpful rejections, lossless formatting."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudless.quantity import (
    QuantityError,
    format_bandwidth,
    format_bytes,
    format_cpu,
    parse_bandwidth,
    parse_bytes,
    parse_cpu,
)

KI, MI, GI, TI, PI = 1024, 1024**2, 1024**3, 1024**4, 1024**5


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        ("100m", 100),
        ("0.5", 500),
        (2, 2000),
        ("1.5", 1500),
        ("2", 2000),
        ("0", 0),
        ("1m", 1),
        ("0.001", 1),
        (".25", 250),
        ("3.", 3000),
        (0.1, 100),
        (1.5, 1500),
        ("  250m ", 250),
        ("1024", 1_024_000),
    ],
)
def test_parse_cpu_accepts(value: str | int | float, millis: int) -> None:
    assert parse_cpu(value) == millis


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-1", "negative"),
        (-2, "negative"),
        (-0.5, "negative"),
        ("0.0001", "millicore"),
        ("1.5m", "millicore"),
        (0.0005, "millicore"),
        ("", "empty"),
        ("   ", "empty"),
        ("abc", "not a number"),
        ("nan", "finite"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        ("1e3", "exponent"),
        ("+1", "'+'"),
        ("100 m", "space"),
        ("1M", "lower-case m"),
        ("2 cores", "unknown CPU unit"),
        ("1" * 70, "longer than"),
        (True, "boolean"),
    ],
)
def test_parse_cpu_rejects(value: str | int | float, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_cpu(value)
    message = str(caught.value)
    assert reason in message
    assert "like 100m" in message  # every rejection shows a valid example
    assert isinstance(caught.value, QuantityError)
    assert caught.value.reason in message


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("32Mi", 32 * MI),
        ("1Gi", GI),
        ("512M", 512_000_000),
        ("1G", 1_000_000_000),
        ("10Ki", 10 * KI),
        ("1Ti", TI),
        ("1Pi", PI),
        ("2Ei", 2 * 1024**6),
        ("1k", 1000),
        ("1K", 1000),
        ("1.5Gi", GI + GI // 2),
        ("0.5Ki", 512),
        (4096, 4096),
        ("4096", 4096),
        (0, 0),
        (2048.0, 2048),
    ],
)
def test_parse_bytes_accepts(value: str | int | float, size: int) -> None:
    assert parse_bytes(value) == size


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-5Mi", "negative"),
        (-1, "negative"),
        ("0.5", "whole number of bytes"),
        ("1.0001Ki", "whole number of bytes"),
        ("1e3", "exponent"),
        ("", "empty"),
        ("NaN", "finite"),
        (math.nan, "finite"),
        ("32MB", "did you mean 32M or 32Mi"),
        ("5gi", "did you mean 5Gi"),
        ("5GiB", "did you mean 5Gi"),
        ("5B", "no unit"),
        ("5 Mi", "space"),
        ("5X", "unknown unit"),
        ("1.2.3", "not a number"),
        (False, "boolean"),
    ],
)
def test_parse_bytes_rejects(value: str | int | float, reason: str) -> None:
    with pytest.raises(ValueError, match="like 64Mi") as caught:
        parse_bytes(value)
    assert reason in str(caught.value)


def test_rejects_non_numbers_with_type_name() -> None:
    with pytest.raises(ValueError, match="got list"):
        parse_bytes([1])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("millis", "text"), [(0, "0"), (100, "100m"), (1000, "1"), (1500, "1500m"), (2000, "2")]
)
def test_format_cpu(millis: int, text: str) -> None:
    assert format_cpu(millis) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0"),
        (33554432, "32Mi"),
        (GI, "1Gi"),
        (1536 * MI, "1536Mi"),
        (1000, "1k"),
        (1023, "1023"),
        (1_000_000, "1M"),
        (PI, "1Pi"),
    ],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text


@pytest.mark.parametrize("formatter", [format_cpu, format_bytes])
def test_format_rejects_negative(formatter: object) -> None:
    assert callable(formatter)
    with pytest.raises(ValueError, match="negative"):
        formatter(-1)


@given(st.integers(min_value=0, max_value=10**15))
def test_cpu_round_trip(millis: int) -> None:
    assert parse_cpu(format_cpu(millis)) == millis


@given(st.integers(min_value=0, max_value=2**70))
def test_bytes_round_trip(size: int) -> None:
    assert parse_bytes(format_bytes(size)) == size


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["Ki", "Mi", "Gi", "M", "G"]))
def test_bytes_suffix_is_exact_multiplication(number: int, suffix: str) -> None:
    factor = {"Ki": KI, "Mi": MI, "Gi": GI, "M": 10**6, "G": 10**9}[suffix]
    assert parse_bytes(f"{number}{suffix}") == number * factor


@pytest.mark.parametrize(
    ("value", "bps"),
    [
        ("10Mbps", 10**7),
        ("10M", 10**7),
        ("1.5Gbps", 15 * 10**8),
        ("500kbps", 500_000),
        ("500Kbps", 500_000),
        ("2Tbps", 2 * 10**12),
        ("64bps", 64),
        (100, 100),
        ("0", 0),
    ],
)
def test_parse_bandwidth_accepts(value: str | int, bps: int) -> None:
    assert parse_bandwidth(value) == bps


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("10MBps", "bytes/s are not accepted"),
        ("10Mb/s", "rather than 10Mb/s"),
        ("10 Mbps", "remove the space"),
        ("10Xbps", "unknown bandwidth unit"),
        ("0.5bps", "whole number of bits/s"),
        ("-1Mbps", "negative"),
        ("1e9", "exponent"),
    ],
)
def test_parse_bandwidth_rejects(value: str, reason: str) -> None:
    with pytest.raises(QuantityError, match=reason):
        parse_bandwidth(value)


@given(st.integers(min_value=0, max_value=10**15))
def test_bandwidth_round_trip(bps: int) -> None:
    assert parse_bandwidth(format_bandwidth(bps)) == bps
