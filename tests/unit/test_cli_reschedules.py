"""``describe workload`` lists the crash loops the workload acted on, one line each."""

from __future__ import annotations

from datetime import UTC, datetime

from cloudless.cli.output import reschedule_lines
from cloudless.model import RescheduleEvent

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_reschedule_and_a_hold_read_as_one_line_each() -> None:
    moved = RescheduleEvent(
        at=AT,
        replica_id="default-web-a1b2c",
        node_id="n1",
        crashes=3,
        over_seconds=4.25,
        exit_code=1,
        reason="exited with code 1\nlast log lines: boom",
        replacement="default-web-d3e4f",
        to_node="n2",
    )
    held = RescheduleEvent(
        at=AT,
        replica_id="default-web-d3e4f",
        node_id="n2",
        crashes=1,
        held="rescheduled 3 time(s) in the last 300s, the limit (spec.reschedule.attempts: 3)",
    )
    pending = moved.model_copy(update={"to_node": ""})
    assert reschedule_lines([moved, held, pending]) == [
        "  2026-01-02 03:04:05Z  default-web-a1b2c crashed on n1 (exit 1) 3 times in 4.2s → "
        "rescheduled to n2 (default-web-d3e4f)",
        "      last crash: exited with code 1",
        "  2026-01-02 03:04:05Z  default-web-d3e4f crashed on n2 once → not rescheduled: "
        "rescheduled 3 time(s) in the last 300s, the limit (spec.reschedule.attempts: 3)",
        "  2026-01-02 03:04:05Z  default-web-a1b2c crashed on n1 (exit 1) 3 times in 4.2s → "
        "rescheduling (default-web-d3e4f not placed yet)",
        "      last crash: exited with code 1",
    ]
