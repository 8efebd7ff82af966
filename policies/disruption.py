"""Disruption budget: how many replicas a workload may retire *without* a ready replacement.

A drain or a rollout replaces replicas "new first": the replacement is placed and started
next to the old replica, and the old one goes once the new one is ready. Availability
never dips. Only when a replacement fits nowhere (a full cluster) does the workload
retire an old replica first, to free room; that is a voluntary disruption, and this
module bounds it. Two limits from the spec apply together, and the stricter one wins:

* ``minAvailable``: never fewer than this many replicas available;
* ``maxUnavailable``: never more than this many of the desired replicas unavailable, a
  count or a percentage of ``replicas`` (rounded down, as Kubernetes rounds a
  Deployment's ``maxUnavailable``: the budget never exceeds the stated fraction).

Replicas that are unavailable for other reasons (a lost node, a crash, a replacement still
starting) use up the budget too: a workload already short of replicas retires nothing more.

Pure functions, no I/O: the workload workflow calls them (they must stay deterministic),
and ``tests/unit/test_disruption.py`` checks their properties with hypothesis.
"""

from __future__ import annotations

import re
from typing import Final

_PERCENT: Final = re.compile(r"^(\d{1,3})%$")


def resolve_max_unavailable(value: int | str | None, desired: int) -> int | None:
    """``maxUnavailable`` as a replica count for a workload of ``desired`` replicas.

    ``None`` (unset) stays ``None``: no limit beyond ``minAvailable``. A percentage is
    taken of ``desired`` and rounded down, so "25%" of 3 replicas is 0: such a workload
    waits for room rather than lose a replica it was promised.
    """
    if value is None:
        return None
    if isinstance(value, int):
        return max(0, value)
    match = _PERCENT.match(value)
    if match is None:  # the manifest validator accepts nothing else
        raise ValueError(f"maxUnavailable must be a count or a percentage like '25%': {value!r}")
    return max(0, desired) * min(100, int(match.group(1))) // 100


def retire_budget(
    *,
    desired: int,
    available: int,
    min_available: int,
    max_unavailable: int | None,
) -> int:
    """How many available replicas may be retired now, before their replacements run.

    ``available`` counts the workload's replicas that serve right now (running and ready,
    old and new alike); ``desired`` is the replica count the spec asks for. The answer
    keeps ``available - retired >= min_available`` and, when ``max_unavailable`` is set,
    ``desired - (available - retired) <= max_unavailable``. It is never negative: a
    workload already beyond either limit retires nothing and waits for room.
    """
    budget = available - max(0, min_available)
    if max_unavailable is not None:
        # Retiring k leaves desired - (available - k) unavailable; surplus replicas (a
        # surge beyond ``desired``) can go without making anything unavailable.
        budget = min(budget, available - desired + max_unavailable)
    return max(0, budget)
