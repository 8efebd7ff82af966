"""Resource quantities: CPU in millicores, memory and storage in bytes, bandwidth in bits/s.

Manifests write quantities the way Kubernetes users expect (``100m``, ``0.5``, ``32Mi``,
``1G``); everything past the manifest boundary works with plain integers so that the
scheduler and the ledger never do floating-point arithmetic on capacity. Parsing goes through
:class:`decimal.Decimal`, so ``"0.1"`` is exactly 100 millicores and never 99.99999.

Exponent forms (``1e3``) are rejected on purpose: they are rare in manifests, easy to misread,
and a typo like ``1e9`` for ``1Gi`` should fail loudly rather than silently mean 1 GB.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation, localcontext

__all__ = [
    "BINARY_SUFFIXES",
    "DECIMAL_SUFFIXES",
    "QuantityError",
    "format_bandwidth",
    "format_bytes",
    "format_cpu",
    "parse_bandwidth",
    "parse_bytes",
    "parse_cpu",
]

#: Binary (power-of-two) byte suffixes, smallest first.
BINARY_SUFFIXES: dict[str, int] = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
}

#: Decimal (power-of-ten) byte suffixes, smallest first. ``K`` is accepted next to the
#: Kubernetes spelling ``k`` because people write it that way.
DECIMAL_SUFFIXES: dict[str, int] = {
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
}

# Longer inputs cannot be sane quantities; the cap also keeps Decimal arithmetic exact.
_MAX_LENGTH = 64
# Enough digits that no accepted input is ever rounded (64 characters times 1024**6).
_PRECISION = 200

_CPU_EXAMPLE = "use a CPU quantity like 100m (0.1 core), 0.5 or 2"
_BYTES_EXAMPLE = "use a byte quantity like 64Mi, 1Gi, 512M or a plain number of bytes"
_BANDWIDTH_EXAMPLE = "use a bandwidth like 500Kbps, 10Mbps, 1Gbps or a plain number of bits/s"

# A non-negative decimal number without sign or exponent, then an optional unit suffix.
_NUMBER = r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_CPU_RE = re.compile(rf"^{_NUMBER}(?P<suffix>m?)$")
_BYTES_RE = re.compile(rf"^{_NUMBER}(?P<suffix>[KMGTPE]i|[kKMGTPE])?$")
_BANDWIDTH_RE = re.compile(rf"^{_NUMBER}(?P<suffix>[kKMGT]?bps|[kKMGT])?$")
#: Bandwidth units, largest first (decimal, as network links are sold).
_BANDWIDTH_UNITS: dict[str, int] = {"T": 1000**4, "G": 1000**3, "M": 1000**2, "K": 1000}


def _describe(value: object) -> str:
    """Render the offending input for an error message (strings quoted, long input cut)."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


class QuantityError(ValueError):
    """A quantity that cannot be parsed; keeps the parts so callers can phrase their own error.

    ``str(error)`` is a complete sentence; ``reason`` says what is wrong with ``value`` and
    ``example`` is a one-line fix with valid examples.
    """

    def __init__(self, kind: str, value: object, reason: str, example: str) -> None:
        self.kind = kind
        self.value = value
        self.reason = reason
        self.example = example
        super().__init__(f"invalid {kind} quantity {_describe(value)}: {reason}; {example}")


def _reject(kind: str, value: object, reason: str, example: str) -> QuantityError:
    return QuantityError(kind, value, reason, example)


def _number_to_decimal(kind: str, value: object, example: str) -> Decimal | None:
    """Convert a Python int/float to Decimal, or return None when it is a string to parse."""
    if isinstance(value, bool):
        raise _reject(kind, value, "a boolean is not a quantity", example)
    if isinstance(value, int):
        if value < 0:
            raise _reject(kind, value, "it is negative", example)
        return Decimal(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise _reject(kind, value, "it is not a finite number", example)
        if value < 0:
            raise _reject(kind, value, "it is negative", example)
        # repr() gives the shortest string that round-trips, so 0.1 stays 0.1 exactly.
        return Decimal(repr(value))
    if isinstance(value, str):
        return None
    raise _reject(kind, value, f"expected a string or number, got {type(value).__name__}", example)


def _explain_mismatch(text: str, pattern: re.Pattern[str]) -> str:
    """Say why ``text`` is not a quantity, pointing at the usual slips (units, spaces, 'B')."""
    if re.match(r"^[0-9.]+[eE][-+]?[0-9]+$", text):
        return "exponent notation is not supported"
    if text.startswith("+"):
        return "a leading '+' is not allowed"
    if pattern is _BANDWIDTH_RE and "/" in text:
        return "write bits per second as bps, e.g. 10Mbps rather than 10Mb/s"
    parts = re.match(rf"^{_NUMBER}(?P<space>\s*)(?P<unit>[A-Za-z]+)$", text)
    if parts is None:
        return "it is not a number with an optional unit suffix"
    number, unit = parts.group("number"), parts.group("unit")
    if pattern.match(number + unit):
        return "remove the space between the number and the unit"
    if pattern is _BANDWIDTH_RE:
        if unit.lower().endswith(("bit/s", "b/s", "bit")) or unit.endswith("Bps"):
            return f"write bits per second as bps, e.g. {number}Mbps (bytes/s are not accepted)"
        return f"unknown bandwidth unit {unit!r}; use bps, Kbps, Mbps, Gbps or Tbps"
    if pattern is _CPU_RE:
        if unit in {"M", "mc", "milli", "millicores"}:
            return f"millicores are written with a lower-case m, e.g. {number}m"
        return f"unknown CPU unit {unit!r}; only 'm' (millicores) or no unit (cores) are valid"
    if unit in {"B", "b"}:
        return f"bytes take no unit, write just {number}"
    trimmed = unit[:-1] if unit[-1:] in {"B", "b"} else unit
    for suffix in BINARY_SUFFIXES:
        if trimmed.lower() == suffix.lower():
            return f"unknown unit {unit!r} (did you mean {number}{suffix}?)"
    for suffix in DECIMAL_SUFFIXES:
        if trimmed.lower() == suffix.lower():
            binary = suffix.upper() + "i"
            return f"unknown unit {unit!r} (did you mean {number}{suffix} or {number}{binary}?)"
    return f"unknown unit {unit!r}; use Ki, Mi, Gi, Ti, Pi, Ei (x1024) or k, M, G, T, P, E (x1000)"


def _split(kind: str, value: str, pattern: re.Pattern[str], example: str) -> tuple[Decimal, str]:
    """Split a quantity string into its exact number and unit suffix, or explain the problem."""
    text = value.strip()
    if not text:
        raise _reject(kind, value, "it is empty", example)
    if len(text) > _MAX_LENGTH:
        raise _reject(kind, value, f"it is longer than {_MAX_LENGTH} characters", example)
    if text.startswith("-"):
        raise _reject(kind, value, "it is negative", example)
    if text.lower().lstrip("+") in {"nan", "inf", "infinity"}:
        raise _reject(kind, value, "it is not a finite number", example)
    match = pattern.match(text)
    if match is None:
        raise _reject(kind, value, _explain_mismatch(text, pattern), example)
    try:
        number = Decimal(match.group("number"))
    except InvalidOperation as exc:  # pragma: no cover - the regex only admits valid decimals
        raise _reject(kind, value, "it is not a number", example) from exc
    return number, match.group("suffix") or ""


def parse_cpu(value: str | int | float) -> int:
    """Parse a CPU quantity into whole millicores.

    Plain numbers are cores (``2`` -> 2000, ``"0.5"`` -> 500); an ``m`` suffix means
    millicores (``"100m"`` -> 100). Anything finer than one millicore is rejected rather than
    rounded, so a manifest never silently asks for less than it says.
    """
    kind = "CPU"
    number = _number_to_decimal(kind, value, _CPU_EXAMPLE)
    suffix = ""
    if number is None:
        number, suffix = _split(kind, str(value), _CPU_RE, _CPU_EXAMPLE)
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        millis = number if suffix == "m" else number * 1000
    if millis != millis.to_integral_value():
        raise _reject(
            kind, value, "the smallest unit is one millicore (1m = 0.001 core)", _CPU_EXAMPLE
        )
    return int(millis)


def parse_bytes(value: str | int | float) -> int:
    """Parse a memory/storage quantity into whole bytes.

    Binary suffixes (``Ki Mi Gi Ti Pi Ei``) are powers of 1024, decimal suffixes
    (``k M G T P E``) powers of 1000; a bare number is bytes. Fractions are fine as long as
    they come out to a whole number of bytes (``"1.5Gi"``), because a fractional byte cannot be
    allocated.
    """
    return _parse_whole(
        "byte", "bytes", value, _BYTES_RE, _BYTES_EXAMPLE,
        lambda suffix: BINARY_SUFFIXES.get(suffix) or DECIMAL_SUFFIXES.get(suffix) or 1,
    )  # fmt: skip


def _parse_whole(
    kind: str,
    unit: str,
    value: str | int | float,
    pattern: re.Pattern[str],
    example: str,
    multiplier: Callable[[str], int],
) -> int:
    """A number times its suffix's multiplier, which must come out whole (no rounding)."""
    number = _number_to_decimal(kind, value, example)
    suffix = ""
    if number is None:
        number, suffix = _split(kind, str(value), pattern, example)
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        total = number * multiplier(suffix)
    if total != total.to_integral_value():
        raise _reject(kind, value, f"it is not a whole number of {unit}", example)
    return int(total)


def format_cpu(millis: int) -> str:
    """Render millicores for humans: whole cores as ``"2"``, the rest as ``"1500m"``.

    The output always parses back to the same value with :func:`parse_cpu`.
    """
    if millis < 0:
        raise ValueError(f"millicores must not be negative, got {millis}")
    if millis % 1000 == 0:
        return str(millis // 1000)
    return f"{millis}m"


def format_bytes(n: int) -> str:
    """Render bytes with the largest binary unit that divides them exactly (``"32Mi"``).

    Exactness keeps the round trip lossless; values that are not a multiple of 1024 fall back
    to an exact decimal unit, and otherwise to plain bytes.
    """
    if n < 0:
        raise ValueError(f"bytes must not be negative, got {n}")
    if n == 0:
        return "0"
    for suffix, factor in reversed(BINARY_SUFFIXES.items()):
        if n % factor == 0:
            return f"{n // factor}{suffix}"
    for suffix, factor in reversed(DECIMAL_SUFFIXES.items()):
        if suffix != "K" and n % factor == 0:
            return f"{n // factor}{suffix}"
    return str(n)


def parse_bandwidth(value: str | int | float) -> int:
    """Parse a network bandwidth into whole bits per second.

    Units are decimal, as links are sold: ``"10Mbps"`` (or ``"10M"``) is 10,000,000 bits/s,
    ``"1.5Gbps"`` 1,500,000,000; a bare number is bits/s. Bytes per second are refused
    rather than guessed, because ``MBps`` versus ``Mbps`` is a factor of eight.
    """
    return _parse_whole(
        "bandwidth", "bits/s", value, _BANDWIDTH_RE, _BANDWIDTH_EXAMPLE,
        lambda suffix: _BANDWIDTH_UNITS.get(suffix.removesuffix("bps").upper(), 1),
    )  # fmt: skip


def format_bandwidth(bps: int) -> str:
    """Render bits/s with the largest decimal unit that divides them exactly (``"10Mbps"``);
    parses back to the same value with :func:`parse_bandwidth`."""
    if bps < 0:
        raise ValueError(f"bandwidth must not be negative, got {bps}")
    for prefix, factor in _BANDWIDTH_UNITS.items():
        if bps and bps % factor == 0:
            return f"{bps // factor}{prefix}bps"
    return f"{bps}bps"
