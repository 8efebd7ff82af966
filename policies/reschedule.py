"""Crash-loop rescheduling: when a replica that keeps crashing on its node moves elsewhere.

An agent restarts a crashed replica on its own node (restart policy, backoff, a retry cap),
and reports every crash to the control plane as it happens. This module decides, from that
history, whether the workload should stop waiting for the local restarts and replace the
replica on another node, and when. The policy is the manifest's ``spec.reschedule``,
shaped like Nomad's ``reschedule`` stanza but counted in seconds:

* a replica is *crash-looping* on its node once it crashed ``failures`` times within
  ``failure_window`` seconds; a replica whose agent gave up on it (retry cap, or a failed
  exit under restartPolicy Never/OnFailure) has failed there for good and needs no count;
* it is rescheduled ``delay(n)`` seconds after the crash that made it crash-looping, where
  ``n`` is how often its line of replicas (a replacement inherits the history of the one
  it replaces) was rescheduled within the last ``interval`` seconds, and the delay grows
  with ``n`` by ``delay_function`` up to ``max_delay``;
* at most ``attempts`` reschedules of one line fall within any ``interval`` (unless
  ``unlimited``); beyond that the replica stays where it is (its agent keeps restarting
  it) and the decision says why and when to look again.

Old history does not count: crashes older than ``failure_window`` and reschedules older
than ``interval`` are forgotten, so a replica that ran healthy long enough starts over.

Pure code: times are plain seconds passed in by the caller (the workflow's clock), no I/O,
no randomness. ``tests/unit/test_reschedule.py`` checks it by table and with hypothesis.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cloudless.vocabulary import DelayFunction

#: Bounds of the policy's fields (the manifest validates against the same numbers).
MAX_FAILURES: Final = 20
MAX_ATTEMPTS: Final = 20
MAX_WINDOW_SECONDS: Final = 86_400
MAX_INTERVAL_SECONDS: Final = 7 * 86_400
MAX_DELAY_SECONDS: Final = 86_400

#: History a replica record keeps: enough crashes to reach any ``failures`` threshold,
#: enough reschedules to count up to any ``attempts``, a few nodes to avoid.
CRASHES_KEPT: Final = MAX_FAILURES
RESCHEDULES_KEPT: Final = MAX_ATTEMPTS
AVOID_KEPT: Final = 8


@dataclass(frozen=True, slots=True)
class ReschedulePolicy:
    """``spec.reschedule`` in seconds; the defaults are the manifest's defaults."""

    #: Crashes on one node within ``failure_window`` that make a replica crash-looping.
    failures: int = 3
    failure_window: float = 60.0
    #: Reschedules of one line of replicas allowed within ``interval`` (0: never).
    attempts: int = 3
    interval: float = 300.0
    #: Wait before the first reschedule; later ones wait longer per ``delay_function``.
    delay: float = 1.0
    delay_function: DelayFunction = DelayFunction.EXPONENTIAL
    max_delay: float = 60.0
    #: No bound on reschedules (``attempts`` does not apply; ``interval`` still decides
    #: which earlier reschedules make the delay grow).
    unlimited: bool = False

    @property
    def moves(self) -> bool:
        """Whether replicas are ever rescheduled (``attempts: 0`` turns it off: crash
        loops stay where they are, and a failed replica is simply replaced)."""
        return self.unlimited or self.attempts > 0

    def __post_init__(self) -> None:
        checks = (
            ("failures", self.failures, 1, MAX_FAILURES),
            ("failure_window", self.failure_window, 1, MAX_WINDOW_SECONDS),
            ("attempts", self.attempts, 0, MAX_ATTEMPTS),
            ("interval", self.interval, 1, MAX_INTERVAL_SECONDS),
            ("delay", self.delay, 0, MAX_DELAY_SECONDS),
            ("max_delay", self.max_delay, 0, MAX_DELAY_SECONDS),
        )
        for name, value, low, high in checks:
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"reschedule {name} must be in [{low}, {high}], got {value}")
        if self.max_delay < self.delay:
            raise ValueError(
                f"reschedule max_delay ({self.max_delay}) must not be below delay ({self.delay})"
            )


class Verdict(enum.Enum):
    #: Not crash-looping (or no longer): the agent's local restarts handle it.
    STAY = "stay"
    #: Crash-looping; reschedule at ``Decision.at`` (the delay has not passed yet).
    WAIT = "wait"
    #: Reschedule now.
    NOW = "now"
    #: Crash-looping, but the line used up its attempts: it stays; look again at ``at``.
    EXHAUSTED = "exhausted"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    #: WAIT: when to reschedule. EXHAUSTED: when the answer may change (an attempt frees
    #: up, or the crash loop ages out of the window); 0 when it never will by itself.
    at: float = 0.0
    #: Crashes counted within the failure window (for messages).
    crashes: int = 0
    #: Why the replica stays (EXHAUSTED), for the workload's message and ``describe``.
    reason: str = ""


def recent(times: Sequence[float], now: float, window: float) -> list[float]:
    """The ``times`` within the last ``window`` seconds (``now`` included), oldest first.

    Written as ``t + window > now``, the same sum as the expiry times :func:`decide`
    reports, so a time leaves the window exactly when its expiry says (no float drift).
    """
    return sorted(t for t in times if t + window > now and t <= now)


def loop_start(policy: ReschedulePolicy, crashes: Sequence[float]) -> float:
    """When the replica's latest crash loop began: the crash that first made ``failures``
    crashes within ``failure_window``, in the run of such crashes that reaches the newest
    one (-inf if the newest crash is not part of a loop).

    A fixed point of the loop, unlike the crashes within a sliding window, so the time a
    reschedule is due does not move while the replica keeps crashing.
    """
    times = sorted(crashes)
    f, window = policy.failures, policy.failure_window
    start = -math.inf
    for j, t in enumerate(times):
        if j >= f - 1 and t - times[j - f + 1] < window:
            if math.isinf(start) or (j and t - times[j - 1] >= window):
                start = t
        else:
            start = -math.inf
    return start


def reschedule_delay(policy: ReschedulePolicy, n: int) -> float:
    """The wait before a line's reschedule after ``n`` earlier ones within the interval.

    Never below ``delay``, never above ``max_delay``, and never shorter for a larger ``n``.
    """
    n = max(0, min(n, 64))  # beyond 2**64 every delay is capped anyway
    if policy.delay_function == DelayFunction.CONSTANT:
        factor = 1
    elif policy.delay_function == DelayFunction.EXPONENTIAL:
        factor = 2**n
    else:  # fibonacci: 1, 1, 2, 3, 5, 8, ... times delay
        a, b = 1, 1
        for _ in range(n):
            a, b = b, a + b
        factor = a
    return min(policy.max_delay, policy.delay * factor)


def decide(
    policy: ReschedulePolicy,
    crashes: Sequence[float],
    reschedules: Sequence[float],
    now: float,
    *,
    failed: bool = False,
) -> Decision:
    """Whether to replace a replica elsewhere now, later, or not at all.

    ``crashes``: when the replica crashed on its current node; ``reschedules``: when its
    line was rescheduled before; ``failed``: its agent gave up on it (it does not run).
    """
    loop = recent(crashes, now, policy.failure_window)
    if not failed and len(loop) < policy.failures:
        return Decision(Verdict.STAY, crashes=len(loop))
    prior = recent(reschedules, now, policy.interval)
    if not policy.unlimited and len(prior) >= policy.attempts:
        # The line may move again once the oldest counted reschedule leaves the interval;
        # a running replica's loop may also end before that (its crashes age out).
        frees = prior[-policy.attempts] + policy.interval if policy.attempts else math.inf
        ends = math.inf if failed else loop[-policy.failures] + policy.failure_window
        at = min(frees, ends)
        if policy.attempts:
            reason = (
                f"rescheduled {len(prior)} time(s) in the last {_seconds(policy.interval)}, "
                f"the limit (spec.reschedule.attempts: {policy.attempts})"
            )
        else:
            reason = "rescheduling is off (spec.reschedule.attempts: 0)"
        return Decision(
            Verdict.EXHAUSTED, at=0.0 if math.isinf(at) else at, crashes=len(loop), reason=reason
        )
    # Measured from the crash that made it crash-looping (or from its final failure).
    trigger = max(crashes, default=-math.inf) if failed else loop_start(policy, crashes)
    due = trigger + reschedule_delay(policy, len(prior))
    if due <= now:
        return Decision(Verdict.NOW, crashes=len(loop))
    return Decision(Verdict.WAIT, at=due, crashes=len(loop))


def _seconds(value: float) -> str:
    return f"{value:g}s"


__all__ = [
    "AVOID_KEPT",
    "CRASHES_KEPT",
    "MAX_ATTEMPTS",
    "MAX_DELAY_SECONDS",
    "MAX_FAILURES",
    "MAX_INTERVAL_SECONDS",
    "MAX_WINDOW_SECONDS",
    "RESCHEDULES_KEPT",
    "Decision",
    "ReschedulePolicy",
    "Verdict",
    "decide",
    "loop_start",
    "recent",
    "reschedule_delay",
]
