"""The reaper from the coordinator's side: keep its Temporal Schedule at the configured
interval (like the master-key rotation's, see :mod:`workers.secrets.rotation`)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client

from cloudless.contracts import reaper
from cloudless.model import ReaperInput
from workers.schedules import ensure_interval_schedule


async def ensure_reaper_schedule(client: Client, inp: ReaperInput, every: timedelta) -> None:
    """Create the cluster's reaper Schedule, or bring its interval and input up to date."""
    await ensure_interval_schedule(
        client,
        reaper.schedule_id(inp.cluster),
        reaper.schedule_action(inp),
        every,
        note="release reservations nobody owns and stop replicas no workload places",
        event="reaper.schedule",
    )
