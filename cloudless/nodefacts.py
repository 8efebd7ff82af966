"""Scheduling facts a node advertises through reserved labels.

Why labels rather than new ``NodeFacts`` fields: labels already travel from the agent
(``cloudless-agent --label k=v``) through enrollment and every reconnect into the node
record and the ledger, are validated at the gateway and shown by ``describe node``; a new
fact is a new documented key, not a protocol change. The reserved keys live under the
``cloudless.dev`` prefix and are parsed once, when the ledger records the node:

====================================  ==========================================================
label                                 meaning
====================================  ==========================================================
``cloudless.dev/region``              region (zones are the agent's ``--zone``), e.g. ``eu-west``
``cloudless.dev/gpu``                 GPUs the node offers, an integer
``cloudless.dev/bandwidth-mbps``      network bandwidth the node offers, megabits/s
``cloudless.dev/cost``                owner's price per core-hour, a decimal (``0.04``)
``cloudless.dev/latency-ms``          measured round trip in milliseconds (``12.5``)
``runtimeclass.cloudless.dev/<rc>``   ``"true"``: the node offers runtime class ``<rc>``
                                      (``runc`` always), e.g. ``runtimeclass.cloudless.dev/gvisor``
``taint.cloudless.dev/<key>``         a taint: ``<Effect>`` or ``<value>.<Effect>``, e.g.
                                      ``taint.cloudless.dev/battery: low.PreferNoSchedule``
====================================  ==========================================================

Pure: no I/O. Malformed values are reported by :func:`problems` (the gateway refuses them
at enrollment) and ignored by :func:`parse` (a ledger never fails on a stale record).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

PREFIX = "cloudless.dev/"
REGION = "cloudless.dev/region"
GPU = "cloudless.dev/gpu"
BANDWIDTH_MBPS = "cloudless.dev/bandwidth-mbps"
COST = "cloudless.dev/cost"
LATENCY_MS = "cloudless.dev/latency-ms"
RUNTIME_CLASS_PREFIX = "runtimeclass.cloudless.dev/"
TAINT_PREFIX = "taint.cloudless.dev/"
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
DEFAULT_RUNTIME_CLASS = "runc"


@dataclass(frozen=True)
class AdvertisedTaint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class NodeAdvert:
    """What a node's reserved labels say, with defaults for the ones it omits."""

    region: str = ""
    gpu: int = 0
    bandwidth_bps: int = 0
    cost_per_core_hour: float = 0.0
    latency_ms: float = 0.0
    runtime_classes: tuple[str, ...] = (DEFAULT_RUNTIME_CLASS,)
    taints: tuple[AdvertisedTaint, ...] = field(default_factory=tuple)


def _number(text: str, *, integer: bool) -> float | None:
    try:
        value = float(int(text)) if integer else float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _taint(key: str, text: str) -> AdvertisedTaint | None:
    value, _, effect = text.rpartition(".")
    if effect not in TAINT_EFFECTS or not key:
        return None
    return AdvertisedTaint(key=key, value=value, effect=effect)


def problems(labels: Mapping[str, str]) -> list[str]:
    """One line per reserved label whose value cannot be used, with the fix."""
    out: list[str] = []
    numeric = {
        GPU: (True, "a whole number of GPUs, e.g. 1"),
        BANDWIDTH_MBPS: (True, "whole megabits per second, e.g. 100"),
        COST: (False, "a price per core-hour, e.g. 0.04"),
        LATENCY_MS: (False, "milliseconds, e.g. 12.5"),
    }
    for key, text in labels.items():
        if key in numeric:
            integer, hint = numeric[key]
            if _number(text, integer=integer) is None:
                out.append(f"label {key}={text!r} must be {hint}")
        elif key.startswith(TAINT_PREFIX) and _taint(key[len(TAINT_PREFIX) :], text) is None:
            out.append(
                f"label {key}={text!r} must be an effect ({', '.join(TAINT_EFFECTS)}) or "
                "<value>.<effect>, e.g. low.PreferNoSchedule"
            )
        elif key.startswith(RUNTIME_CLASS_PREFIX) and text not in ("true", "false"):
            out.append(f"label {key}={text!r} must be true or false")
    return out


def parse(labels: Mapping[str, str]) -> NodeAdvert:
    """The advertised facts; malformed reserved labels are ignored (see :func:`problems`)."""
    gpu = _number(labels.get(GPU, ""), integer=True)
    mbps = _number(labels.get(BANDWIDTH_MBPS, ""), integer=True)
    cost = _number(labels.get(COST, ""), integer=False)
    latency = _number(labels.get(LATENCY_MS, ""), integer=False)
    classes = {DEFAULT_RUNTIME_CLASS}
    taints: list[AdvertisedTaint] = []
    for key, text in sorted(labels.items()):
        if key.startswith(RUNTIME_CLASS_PREFIX) and text == "true":
            classes.add(key[len(RUNTIME_CLASS_PREFIX) :])
        elif key.startswith(TAINT_PREFIX):
            taint = _taint(key[len(TAINT_PREFIX) :], text)
            if taint is not None:
                taints.append(taint)
    return NodeAdvert(
        region=labels.get(REGION, ""),
        gpu=int(gpu or 0),
        bandwidth_bps=int(mbps or 0) * 1_000_000,
        cost_per_core_hour=cost or 0.0,
        latency_ms=latency or 0.0,
        runtime_classes=tuple(sorted(classes)),
        taints=tuple(taints),
    )
