"""The reaper from the coordinator's side: keep its Temporal Schedule at the configured
interval (like the master-key rotation's, see :mod:`workers.secrets.rotation`)."""

from __future__ import annotations

from datetime import timedelta

import structlog
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

from cloudless.contracts import reaper
from cloudless.model import ReaperInput

log = structlog.get_logger("cloudless.reaper")


async def ensure_reaper_schedule(client: Client, inp: ReaperInput, every: timedelta) -> None:
    """Create the cluster's reaper Schedule, or bring its interval and input up to date.

    Overlapping runs are skipped: a run that takes longer than the interval (a very large
    cluster, an unreachable agent) is not joined by another."""
    action = reaper.schedule_action(inp)
    spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)])
    schedule = Schedule(
        action=action,
        spec=spec,
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(
            note="release reservations nobody owns and stop replicas no workload places"
        ),
    )
    schedule_id = reaper.schedule_id(inp.cluster)
    try:
        await client.create_schedule(schedule_id, schedule)
        log.info("reaper.schedule_created", every=str(every))
        return
    except ScheduleAlreadyRunningError:
        pass
    handle = client.get_schedule_handle(schedule_id)
    desc = await handle.describe()
    current = desc.schedule.spec.intervals
    if len(current) == 1 and current[0].every == every and await _starts(client, desc, inp):
        return

    def retime(update: ScheduleUpdateInput) -> ScheduleUpdate:
        update.description.schedule.spec = spec
        update.description.schedule.action = action
        return ScheduleUpdate(schedule=update.description.schedule)

    await handle.update(retime)
    log.info("reaper.schedule_updated", every=str(every))


async def _starts(client: Client, desc: ScheduleDescription, inp: ReaperInput) -> bool:
    """Whether the described Schedule already starts the reaper with ``inp``."""
    action = desc.schedule.action
    if not isinstance(action, ScheduleActionStartWorkflow) or len(action.args) != 1:
        return False
    raw = action.args[0]
    if not isinstance(raw, Payload):
        return False
    try:
        (current,) = await client.data_converter.decode([raw], [ReaperInput])
    except Exception:  # written by another version, or undecodable here: rewrite it
        return False
    return bool(current == inp)
