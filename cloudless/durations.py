"""Durations, parsed in one place: ``90s``, ``30m``, ``1h``, ``90d``, ``1h30m``, ``1.5h``.

The grammar is Go's ``time.ParseDuration`` plus ``d`` for days, which is what Vault (and
so ``cloudless-transit``) accepts: an optional sign, then one or more ``<number><unit>``
parts, where the number may have a fraction (``1.5h``, ``.5s``) and the unit is one of
``ns``, ``us`` (or ``µs``), ``ms``, ``s``, ``m``, ``h``, ``d``. Parts add up in any order
(``1h30m`` == ``30m1h`` == ``90m``). Vault also takes whole seconds, as a number or a
string of digits (``3600``, ``"3600"``); callers that accept that form say so.

Arithmetic is exact (:class:`fractions.Fraction`), so ``0.1s`` is a tenth of a second and
rounding happens once, where a caller converts.

- :func:`parse_seconds` is the parser, returning exact seconds.
- :func:`parse_duration` is its form for command-line flags: a unit is required (is
  ``--ttl 90`` seconds or days?) and the result must be positive.
- :func:`format_duration` writes whole seconds back in the same grammar.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from fractions import Fraction

from cloudless.errors import CloudlessError

__all__ = ["UNITS", "DurationError", "format_duration", "parse_duration", "parse_seconds"]

#: Seconds per unit; ``us``, ``µs`` (micro sign) and ``μs`` (Greek mu) are all Go's.
UNITS: dict[str, Fraction] = {
    "ns": Fraction(1, 10**9),
    "us": Fraction(1, 10**6),
    "µs": Fraction(1, 10**6),
    "μs": Fraction(1, 10**6),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
}
# Longer units first, so "ms" is never read as "m" followed by junk.
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h|d)")
_WHOLE_SECONDS = re.compile(r"[0-9]+")
_EXAMPLES = "90s, 30m, 1h, 1h30m or 90d"


class DurationError(CloudlessError, ValueError):
    """The value is not a duration; the message says what is accepted.

    A ``ValueError`` for code that validates input, and a :class:`CloudlessError` so a
    command line reports a bad duration flag in one line rather than a traceback.
    """


def parse_seconds(value: str | int | float, *, whole_seconds: bool = True) -> Fraction:
    """Exact seconds in ``value``, which may be negative; :class:`DurationError` if it is
    not a duration.

    ``value`` is a duration string, or (when ``whole_seconds``, Vault's other form) a
    number of seconds: an int, a finite float, or a string of digits.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DurationError(f"expected a duration, not {type(value).__name__} {value!r}")
    if isinstance(value, str):
        text = value.strip()
        sign = -1 if text.startswith("-") else 1
        body = text[1:] if text[:1] in ("-", "+") else text
        if whole_seconds and _WHOLE_SECONDS.fullmatch(body):
            return sign * Fraction(int(body))
        if body and not _PART.sub("", body):
            parts = _PART.findall(body)
            return sign * sum((Fraction(n) * UNITS[unit] for n, unit in parts), Fraction(0))
    elif whole_seconds and math.isfinite(value):
        return Fraction(value)
    accepted = f"a form like {_EXAMPLES}" + (", or whole seconds" if whole_seconds else "")
    raise DurationError(f"{value!r} is not a duration; use {accepted}")


def parse_duration(text: str) -> timedelta:
    """A positive duration from a flag (``1h30m``); a unit is required.

    Raises :class:`DurationError` (a ``ValueError``) naming the problem and an example.
    """
    try:
        seconds = parse_seconds(text, whole_seconds=False)
    except DurationError:
        raise DurationError(
            f"duration {text!r} is not valid; use a form like 90s, 30m, 1h or 1h30m"
        ) from None
    try:
        delta = timedelta(microseconds=round(seconds * 10**6))
    except OverflowError:
        raise DurationError(f"duration {text!r} is too long") from None
    if delta <= timedelta(0):
        raise DurationError(f"duration {text!r} must be positive")
    return delta


def format_duration(delta: timedelta) -> str:
    """Whole seconds of ``delta`` in the parsers' grammar: ``1d2h3m4s``, ``0s``."""
    seconds = int(delta.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"
