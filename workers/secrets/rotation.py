"""Master-key rotation from the coordinator's side: start and describe the rotation
workflow, and keep its Temporal Schedule at the configured interval."""

from __future__ import annotations

from datetime import timedelta

import structlog
from temporalio.client import Client
from temporalio.service import RPCError

from cloudless.api import secrets_pb2
from cloudless.contracts import RotationHandle, gone, rotation
from cloudless.secrets.model import RotationInput, RotationProgress
from workers.schedules import ensure_interval_schedule

log = structlog.get_logger("cloudless.secrets")


class RotationControl:
    """Starts and describes master-key rotations (the workflow and its Schedule)."""

    def __init__(self, client: Client, plan: RotationInput) -> None:
        self._client = client
        self._cluster = plan.cluster
        self._plan = plan

    async def rotate(self, *, wait: bool) -> secrets_pb2.RotationProgress:
        handle = RotationHandle(self._client, self._cluster)
        await handle.start(self._plan)
        progress = await handle.result() if wait else await handle.progress()
        return progress_proto(handle.id, progress)

    async def describe(self, out: secrets_pb2.GetMasterKeyInfoResponse) -> None:
        schedule = self._client.get_schedule_handle(rotation.schedule_id(self._cluster))
        try:
            desc = await schedule.describe()
        except RPCError as err:
            if not gone(err):
                raise
        else:
            out.schedule_id = schedule.id
            intervals = desc.schedule.spec.intervals
            if intervals:
                out.rotation_interval = f"{intervals[0].every.total_seconds() / 86400:g}d"
            upcoming = desc.info.next_action_times
            if upcoming:
                out.next_rotation_at = upcoming[0].timestamp()
        async for wf in self._client.list_workflows(
            rotation.rotations_query(self._cluster), limit=1
        ):
            memo = await wf.memo()
            raw = memo.get("progress")
            if isinstance(raw, dict):
                out.last_rotation.CopyFrom(
                    progress_proto(wf.id, RotationProgress.model_validate(raw))
                )
            break


def progress_proto(workflow_id: str, p: RotationProgress) -> secrets_pb2.RotationProgress:
    return secrets_pb2.RotationProgress(
        workflow_id=workflow_id,
        state=p.state,
        target_version=p.target_version,
        rewrapped=p.rewrapped,
        remaining=p.remaining,
        started_at=p.started_at,
        finished_at=p.finished_at,
    )


async def ensure_rotation_schedule(client: Client, plan: RotationInput, every: timedelta) -> None:
    """Create the master-key rotation Schedule, or bring its interval up to date."""
    await ensure_interval_schedule(
        client,
        rotation.schedule_id(plan.cluster),
        rotation.schedule_action(plan),
        every,
        note="rotate the secrets master key and rewrap every data key",
        event="secrets.rotation_schedule",
    )
