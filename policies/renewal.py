"""When a node renews its certificate, how it retries, and how often the CA renews one.

A node certificate is renewed at about two thirds of its lifetime, jittered so a fleet
enrolled together does not renew in lockstep, which leaves a third of the lifetime for
retries (a coordinator away, a lost answer). Retries back off exponentially, with steps
scaled to the lifetime (a certificate of a few seconds in tests, 30 days in production)
and never past the expiry. The CA side bounds how often one node may be issued a
certificate, so a node (or a stolen key) cannot mint certificates without end.

All times are timezone-aware datetimes or seconds; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

#: Renew at this fraction of the lifetime ...
RENEW_AT = 2 / 3
#: A holder whose certificates are renewed for it (the coordinator's, by the
#: ``cert-rotation`` Schedule) renews them itself only past this fraction: the Schedule
#: did not run (Temporal away), and the certificate must not expire meanwhile.
FALLBACK_AT = 0.85
#: The ``cert-rotation`` Schedule looks this often, as a fraction of the shortest lifetime
#: it keeps (so it renews between ``RENEW_AT`` and ``RENEW_AT + CHECK_EVERY``, well before
#: ``FALLBACK_AT``) ...
CHECK_EVERY = 0.1
#: ... within these bounds (a Schedule's interval is whole seconds; an hourly look is
#: plenty for the production lifetime of 90 days).
CHECK_EVERY_MIN = timedelta(seconds=1)
CHECK_EVERY_MAX = timedelta(hours=1)
#: ... give or take this fraction of the lifetime (uniform), so renewals spread out.
RENEW_JITTER = 0.05
#: The CA issues a node at most one certificate per this fraction of the lifetime of the
#: last one it issued (a retry for the same key gets that certificate again instead).
MIN_RENEWAL_INTERVAL = 0.25
#: Retry backoff: the first step is this fraction of the lifetime, within the bounds below.
RETRY_BASE = 0.005
RETRY_BASE_MIN = timedelta(milliseconds=50)
RETRY_BASE_MAX = timedelta(seconds=1)
#: The step doubles up to this fraction of the lifetime, within the bounds below.
RETRY_CAP = 0.02
RETRY_CAP_MAX = timedelta(minutes=5)


@dataclass(frozen=True)
class Lifetime:
    """A certificate's lifetime: from its issue to its expiry.

    Cluster certificates are backdated (``not_before`` is ``backdate`` before the issue, for
    peers with slow clocks), so the lifetime starts ``backdate`` after ``not_before`` (or
    at ``not_before`` for a certificate too short to have been backdated that much).
    """

    issued: datetime
    not_after: datetime

    @classmethod
    def of(cls, not_before: datetime, not_after: datetime, backdate: timedelta) -> Lifetime:
        if not_after <= not_before:
            raise ValueError(f"certificate expires ({not_after}) before it starts ({not_before})")
        issued = not_before + backdate
        if issued >= not_after:
            issued = not_before
        return cls(issued=issued, not_after=not_after)

    @property
    def length(self) -> timedelta:
        return self.not_after - self.issued


def renew_at(lifetime: Lifetime, jitter: float) -> datetime:
    """When to renew: ``RENEW_AT`` of the lifetime, moved by ``jitter`` (in -1..1) times
    ``RENEW_JITTER`` of it. Always strictly inside the lifetime."""
    if not -1.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be within -1..1, got {jitter}")
    return lifetime.issued + lifetime.length * (RENEW_AT + RENEW_JITTER * jitter)


def renewal_wait(
    lifetime: Lifetime, now: datetime, interval: timedelta, at: float = RENEW_AT
) -> timedelta:
    """How long a certificate's holder waits before it looks again: until the renewal
    point (``at`` of the lifetime, unjittered: one holder, nothing to spread), but no
    longer than ``interval``, since another process may renew the same files meanwhile.
    Zero: renew now."""
    if interval <= timedelta(0):
        raise ValueError(f"the check interval must be positive, got {interval}")
    if not 0.0 < at < 1.0:
        raise ValueError(f"the renewal point must be a fraction within 0..1, got {at}")
    point = lifetime.issued + lifetime.length * at
    return max(timedelta(0), min(interval, point - now))


#: How long a ``cert-rotation`` run gives an instance to take and finish its renewal, as a
#: fraction of the shortest lifetime, within bounds: a run waiting on an instance that
#: died holds up the next runs (they never overlap) no longer than this.
REACH = 0.1
REACH_MIN = timedelta(seconds=2)
REACH_MAX = timedelta(seconds=30)


def rotation_reach(shortest: timedelta) -> timedelta:
    """How long one ``cert-rotation`` run waits for an instance (see ``REACH``)."""
    if shortest <= timedelta(0):
        raise ValueError(f"a certificate lifetime must be positive, got {shortest}")
    return min(REACH_MAX, max(REACH_MIN, shortest * REACH))


def rotation_interval(shortest: timedelta) -> timedelta:
    """How often the ``cert-rotation`` Schedule looks at certificates whose shortest
    lifetime is ``shortest``: ``CHECK_EVERY`` of it, in whole seconds, within bounds."""
    if shortest <= timedelta(0):
        raise ValueError(f"a certificate lifetime must be positive, got {shortest}")
    every = shortest * CHECK_EVERY
    seconds = int(every.total_seconds())
    return min(CHECK_EVERY_MAX, max(CHECK_EVERY_MIN, timedelta(seconds=seconds)))


def retry_delay(lifetime: Lifetime, attempt: int, now: datetime, jitter: float) -> timedelta:
    """How long to wait after failed attempt number ``attempt`` (1, 2, ...).

    Exponential from ``RETRY_BASE`` of the lifetime, capped at ``RETRY_CAP`` of it (both
    bounded in absolute terms), scaled by ``jitter`` in 0.5..1 ("equal jitter"), and never
    past the expiry: the last attempt is made just before it.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if not 0.5 <= jitter <= 1.0:
        raise ValueError(f"jitter must be within 0.5..1, got {jitter}")
    length = lifetime.length
    base = min(max(length * RETRY_BASE, RETRY_BASE_MIN), RETRY_BASE_MAX)
    cap = max(base, min(length * RETRY_CAP, RETRY_CAP_MAX))
    step: timedelta = min(cap, base * float(2 ** min(attempt - 1, 32)))
    left = lifetime.not_after - now
    return max(timedelta(0), min(step * jitter, left / 2))


def renewal_refusal(
    last_issued: datetime, last_not_after: datetime, now: datetime
) -> datetime | None:
    """Until when the CA refuses to issue this node another certificate, or None.

    ``last_issued``/``last_not_after``: the newest certificate issued to the node. At most
    one certificate per ``MIN_RENEWAL_INTERVAL`` of its lifetime: with renewals at about
    two thirds, a well-behaved node never meets the bound.
    """
    length = max(timedelta(0), last_not_after - last_issued)
    allowed = last_issued + length * MIN_RENEWAL_INTERVAL
    return allowed if now < allowed else None


__all__ = [
    "CHECK_EVERY",
    "FALLBACK_AT",
    "MIN_RENEWAL_INTERVAL",
    "RENEW_AT",
    "RENEW_JITTER",
    "Lifetime",
    "renew_at",
    "renewal_refusal",
    "renewal_wait",
    "retry_delay",
    "rotation_interval",
    "rotation_reach",
]
