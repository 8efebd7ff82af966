"""``key-rotation/<cluster>``: rotate the secrets master key and rewrap every data key.

Started by the Temporal Schedule of the same id (created at bootstrap) or on demand.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import Client, ScheduleActionStartWorkflow, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from cloudless.contracts._base import Query, WorkflowType
from cloudless.contracts.names import task_queue
from cloudless.secrets.model import RotationInput, RotationProgress


def workflow_id(cluster: str) -> str:
    return f"key-rotation/{cluster}"


def schedule_id(cluster: str) -> str:
    """The Temporal Schedule that starts the rotation periodically."""
    return f"key-rotation/{cluster}"


#: Where the rotation is (also in its memo and the CloudlessPhase search attribute).
PROGRESS: Query[None, RotationProgress] = Query("progress", None, RotationProgress)

WORKFLOW: WorkflowType[RotationInput, RotationProgress] = WorkflowType(
    "KeyRotationWorkflow",
    RotationInput,
    RotationProgress,
    task_queue=task_queue,
    id_prefix="key-rotation/",
    messages=(PROGRESS,),
)


def schedule_action(plan: RotationInput) -> ScheduleActionStartWorkflow:
    """What the rotation Schedule starts: this cluster's rotation workflow."""
    return WORKFLOW.schedule_action(plan, id=workflow_id(plan.cluster), cluster=plan.cluster)


def rotations_query(cluster: str) -> str:
    """Visibility query for the cluster's rotations."""
    return WORKFLOW.visibility_query(f"TaskQueue = '{task_queue(cluster)}'")


class RotationHandle:
    """Typed calls on ``key-rotation/<cluster>``."""

    def __init__(self, client: Client, cluster: str) -> None:
        self.client = client
        self.cluster = cluster
        self.id = workflow_id(cluster)
        self.handle: WorkflowHandle[Any, RotationProgress] = WORKFLOW.handle(client, self.id)

    async def start(self, plan: RotationInput) -> None:
        """Start a rotation unless one runs (then this joins it)."""
        self.handle = await WORKFLOW.start(
            self.client,
            plan,
            id=self.id,
            cluster=self.cluster,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )

    async def progress(self, *, rpc_timeout: timedelta | None = None) -> RotationProgress:
        return await PROGRESS.query(self.handle, rpc_timeout=rpc_timeout)

    async def result(self) -> RotationProgress:
        return await self.handle.result()


__all__ = [
    "PROGRESS",
    "WORKFLOW",
    "RotationHandle",
    "rotations_query",
    "schedule_action",
    "schedule_id",
    "workflow_id",
]
