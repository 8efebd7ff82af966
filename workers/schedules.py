"""Keep a Temporal Schedule that starts a workflow every ``every`` as configured: create it,
or bring its interval (and, when asked, its start input) up to date. Shared by the
master-key rotation and the reaper, so both behave alike on a restart with other flags."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

#: Whether a described Schedule's action is already the one wanted (beyond its interval).
ActionCheck = Callable[[ScheduleDescription], Awaitable[bool]]


async def ensure_interval_schedule(
    client: Client,
    schedule_id: str,
    action: ScheduleActionStartWorkflow,
    every: timedelta,
    *,
    note: str,
    event: str,
    current_action: ActionCheck | None = None,
) -> None:
    """Create the Schedule, or update its interval and action when they differ.

    Overlapping runs are skipped: a run that takes longer than the interval is not joined
    by another. ``current_action`` says whether an existing Schedule's action is already
    right (without it, only the interval is compared). Logs ``<event>_created`` or
    ``<event>_updated``.
    """
    log = structlog.get_logger("cloudless.schedules")
    spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)])
    schedule = Schedule(
        action=action,
        spec=spec,
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(note=note),
    )
    try:
        await client.create_schedule(schedule_id, schedule)
        log.info(f"{event}_created", every=str(every))
        return
    except ScheduleAlreadyRunningError:
        pass
    handle = client.get_schedule_handle(schedule_id)
    desc = await handle.describe()
    current = desc.schedule.spec.intervals
    same_interval = len(current) == 1 and current[0].every == every
    if same_interval and (current_action is None or await current_action(desc)):
        return

    def retime(update: ScheduleUpdateInput) -> ScheduleUpdate:
        update.description.schedule.spec = spec
        update.description.schedule.action = action
        return ScheduleUpdate(schedule=update.description.schedule)

    await handle.update(retime)
    log.info(f"{event}_updated", every=str(every))
