"""The reaper from the coordinator's side: keep its Temporal Schedule at the configured
interval (like the master-key rotation's, see :mod:`workers.secrets.rotation`)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.api.common.v1 import Payload
from temporalio.client import Client, ScheduleActionStartWorkflow, ScheduleDescription

from cloudless.contracts import reaper
from cloudless.model import ReaperInput
from workers.schedules import ensure_interval_schedule


async def ensure_reaper_schedule(client: Client, inp: ReaperInput, every: timedelta) -> None:
    """Create the cluster's reaper Schedule, or bring its interval and input up to date."""

    async def starts_with_inp(desc: ScheduleDescription) -> bool:
        return await _starts(client, desc, inp)

    await ensure_interval_schedule(
        client,
        reaper.schedule_id(inp.cluster),
        reaper.schedule_action(inp),
        every,
        note="release reservations nobody owns and stop replicas no workload places",
        event="reaper.schedule",
        current_action=starts_with_inp,
    )


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
