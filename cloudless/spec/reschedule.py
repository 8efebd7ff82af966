"""``spec.reschedule``: when a crash-looping replica is replaced on another node.

Shaped like Nomad's ``reschedule`` stanza (``attempts``, ``interval``, ``delay``,
``delayFunction``, ``maxDelay``, ``unlimited``), with the crash-loop threshold that
triggers it (``failures`` within ``failureWindow``), and counted in seconds rather than
minutes. Durations are written like ``30s``, ``5m`` or ``1m30s`` (or a whole number of
seconds) and kept as whole seconds. The decisions are :mod:`policies.reschedule`'s; the
defaults and bounds are its constants, so they are written once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Final

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, StrictBool, StrictInt

from cloudless.durations import DurationError, format_duration, parse_seconds
from cloudless.spec._base import _Model, _Problem, _Raw
from cloudless.spec._messages import _problem, _show
from cloudless.spec._scalars import _between
from cloudless.vocabulary import DelayFunction
from policies import reschedule as rules

_DEFAULT: Final = rules.ReschedulePolicy()


def _seconds_between(low: int, high: int, example: str) -> BeforeValidator:
    """Whole seconds from ``90s``/``1m30s``/``90``, between ``low`` and ``high``."""

    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _problem(
                f"must be a duration like {example}, got {_show(value)}",
                f"write a duration such as {example} (or whole seconds)",
            )
        try:
            exact = parse_seconds(value)
        except DurationError:
            raise _problem(
                f"must be a duration like {example}, got {_show(value)}",
                f"write a duration such as {example}, with a unit (s, m, h)",
            ) from None
        if exact.denominator != 1:
            raise _problem(
                f"must be whole seconds, got {_show(value)}",
                f"round it to whole seconds, e.g. {example}",
            )
        seconds = int(exact)
        if not low <= seconds <= high:
            raise _problem(
                f"must be between {format_duration_s(low)} and {format_duration_s(high)}, "
                f"got {_show(value)}",
                f"use a duration in that range, e.g. {example}",
            )
        return seconds

    return BeforeValidator(check)


def format_duration_s(seconds: int) -> str:
    """Whole seconds in the duration grammar (``0s``, ``90s`` as ``1m30s``)."""
    return format_duration(timedelta(seconds=seconds))


_AS_DURATION = PlainSerializer(format_duration_s, return_type=str, when_used="json")

WindowSeconds = Annotated[int, _seconds_between(1, rules.MAX_WINDOW_SECONDS, "60s"), _AS_DURATION]
IntervalSeconds = Annotated[
    int, _seconds_between(1, rules.MAX_INTERVAL_SECONDS, "5m"), _AS_DURATION
]
DelaySeconds = Annotated[int, _seconds_between(0, rules.MAX_DELAY_SECONDS, "5s"), _AS_DURATION]
Failures = Annotated[StrictInt, AfterValidator(_between(1, rules.MAX_FAILURES, 3))]
Attempts = Annotated[StrictInt, AfterValidator(_between(0, rules.MAX_ATTEMPTS, 3))]


class Reschedule(_Model):
    """When a replica that keeps crashing on its node is replaced on another one.

    The agent restarts a crashed replica on its node and reports each crash at once. After
    ``failures`` crashes within ``failureWindow`` the workload replaces it on another node
    (avoiding the nodes it crashed on recently when it can), ``delay`` after the crash that
    made it crash-looping, then longer by ``delayFunction`` up to ``maxDelay`` for each
    earlier reschedule within ``interval``. At most ``attempts`` reschedules of a replica
    (and the replacements it leads to) fall within any ``interval``, unless ``unlimited``;
    beyond that it stays on its node, restarted by its agent, and the workload says why.
    """

    failures: Failures = Field(_DEFAULT.failures, examples=[3])
    failure_window: WindowSeconds = Field(int(_DEFAULT.failure_window), examples=["60s"])
    attempts: Attempts = Field(_DEFAULT.attempts, examples=[3])
    interval: IntervalSeconds = Field(int(_DEFAULT.interval), examples=["5m"])
    delay: DelaySeconds = Field(int(_DEFAULT.delay), examples=["5s"])
    delay_function: DelayFunction = Field(_DEFAULT.delay_function, examples=["exponential"])
    max_delay: DelaySeconds = Field(int(_DEFAULT.max_delay), examples=["1m"])
    unlimited: StrictBool = Field(_DEFAULT.unlimited, examples=[False])

    def to_policy(self) -> rules.ReschedulePolicy:
        """The decision module's form of this stanza."""
        return rules.ReschedulePolicy(
            failures=self.failures,
            failure_window=float(self.failure_window),
            attempts=self.attempts,
            interval=float(self.interval),
            delay=float(self.delay),
            delay_function=self.delay_function,
            max_delay=float(self.max_delay),
            unlimited=self.unlimited,
        )

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        problems: list[_Problem] = []
        delay, max_delay = raw.get("delay"), raw.get("max_delay")
        given_delay = _seconds_or_none(delay) or 0
        given_max = _seconds_or_none(max_delay)
        if given_max is None:
            given_max = 0 if max_delay is not None else int(_DEFAULT.max_delay)
            if max_delay is not None:
                given_delay = 0  # maxDelay is invalid: its field check reports it
        if given_max < given_delay:
            if max_delay is not None:
                problems.append(
                    _Problem(
                        (raw.key("max_delay"),),
                        f"must not be shorter than {raw.key('delay')} ({_show(delay)}), "
                        f"got {_show(max_delay)}",
                        f"raise {raw.key('max_delay')} or lower {raw.key('delay')}",
                        max_delay,
                    )
                )
            else:
                default = format_duration_s(int(_DEFAULT.max_delay))
                problems.append(
                    _Problem(
                        (raw.key("delay"),),
                        f"must not be longer than maxDelay ({default}, the default), "
                        f"got {_show(delay)}",
                        f"lower {raw.key('delay')} or set maxDelay to at least {_show(delay)}",
                        delay,
                    )
                )
        if raw.get("unlimited") is True and raw.get("attempts") is not None:
            problems.append(
                _Problem(
                    (raw.key("attempts"),),
                    "has no effect when unlimited is true",
                    f"remove {raw.key('attempts')}, or set unlimited to false",
                    raw.get("attempts"),
                )
            )
        return problems


def _seconds_or_none(value: object) -> int | None:
    """Whole seconds of a duration the field check will accept, else None (it reports)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        exact = parse_seconds(value)
    except DurationError:
        return None
    return int(exact) if exact.denominator == 1 else None
