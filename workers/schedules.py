"""Keep a Temporal Schedule that starts a workflow every ``every`` as configured: create it,
or bring its interval and start input up to date. Shared by the master-key rotation, the
reaper and the certificate rotation, so all behave alike on a restart with other flags."""

from __future__ import annotations

from datetime import timedelta

import structlog
from pydantic import BaseModel
from temporalio.api.common.v1 import Payload
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


async def ensure_interval_schedule(
    client: Client,
    schedule_id: str,
    action: ScheduleActionStartWorkflow,
    every: timedelta,
    *,
    note: str,
    event: str,
) -> None:
    """Create the Schedule, or update its interval and action when either differs (the
    action's one input, a pydantic model, is compared decoded).

    Overlapping runs are skipped: a run that takes longer than the interval is not joined
    by another. Logs ``<event>_created`` or ``<event>_updated``.
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
    if same_interval and await _same_input(client, desc, action):
        return

    def retime(update: ScheduleUpdateInput) -> ScheduleUpdate:
        update.description.schedule.spec = spec
        update.description.schedule.action = action
        return ScheduleUpdate(schedule=update.description.schedule)

    await handle.update(retime)
    log.info(f"{event}_updated", every=str(every))


async def _same_input(
    client: Client, desc: ScheduleDescription, wanted: ScheduleActionStartWorkflow
) -> bool:
    """Whether the described Schedule already starts the same workflow with the same
    input as ``wanted``."""
    action = desc.schedule.action
    if not isinstance(action, ScheduleActionStartWorkflow) or action.workflow != wanted.workflow:
        return False
    if len(action.args) != 1 or len(wanted.args) != 1:
        return len(action.args) == len(wanted.args) == 0
    raw, inp = action.args[0], wanted.args[0]
    if not isinstance(raw, Payload) or not isinstance(inp, BaseModel):
        return False
    try:
        (current,) = await client.data_converter.decode([raw], [type(inp)])
    except Exception:  # written by another version, or undecodable here: rewrite it
        return False
    return bool(current == inp)
