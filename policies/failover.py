"""Which coordinator a call goes to first, which next, and how long each may take.

A node knows several coordinators (one agent gateway each). A call that a coordinator
does not answer moves on to the next one, within the call's own deadline: every
coordinator is asked at most once per call, and the deadline is shared fairly among those
still to ask, so one that hangs cannot spend the time the others need.
"""

from __future__ import annotations

from collections.abc import Collection


def failover_order(
    count: int,
    current: int,
    preferred: int | None = None,
    failed: Collection[int] = (),
) -> list[int]:
    """Indexes of ``count`` coordinators in the order one call tries them.

    It starts at ``preferred`` (where the node's heartbeat stream is) unless that one's
    last attempt failed, else at ``current`` (the last that answered), and goes round the
    list from there, so each index appears exactly once.

    Raises:
        ValueError: ``count`` is not positive, or an index is outside ``range(count)``.
    """
    if count < 1:
        raise ValueError(f"at least one coordinator is required, got {count}")
    for what, index in (("current", current), ("preferred", preferred)):
        if index is not None and not 0 <= index < count:
            raise ValueError(f"{what} index {index} is outside 0..{count - 1}")
    start = preferred if preferred is not None and preferred not in failed else current
    return [(start + step) % count for step in range(count)]


def attempt_timeout(remaining: float, untried: int) -> float:
    """The deadline of the next attempt: an equal share of the time left among the
    ``untried`` coordinators (this one included), so an attempt that times out leaves the
    others as much as it had. ``0`` when no time is left."""
    if untried < 1:
        raise ValueError(f"untried must be at least 1, got {untried}")
    return max(0.0, remaining) / untried
