"""``reaper/<cluster>``: release the reservations nobody owns any more and stop the
replicas no workload places where they run.

Started by the Temporal Schedule of the same id (created by every coordinator at start,
``--reap-interval``) or on demand (``cloudlessctl reap``). Runs are short and
idempotent, so an on-demand run beside a scheduled one is harmless.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client, ScheduleActionStartWorkflow

from cloudless.contracts._base import WorkflowType
from cloudless.contracts.names import task_queue
from cloudless.model import ReaperInput, ReapReport
from cloudless.vocabulary import AccessRole


def workflow_id(cluster: str) -> str:
    """The id prefix of the cluster's reaper runs (the Schedule appends the time)."""
    return f"reaper/{cluster}"


def schedule_id(cluster: str) -> str:
    """The Temporal Schedule that starts the reaper periodically."""
    return f"reaper/{cluster}"


WORKFLOW: WorkflowType[ReaperInput, ReapReport] = WorkflowType(
    "ReaperWorkflow",
    ReaperInput,
    ReapReport,
    task_queue=task_queue,
    id_prefix="reaper/",
    starter=AccessRole.ADMIN,
)


def schedule_action(inp: ReaperInput) -> ScheduleActionStartWorkflow:
    """What the reaper Schedule starts: one run for the cluster."""
    return WORKFLOW.schedule_action(
        inp,
        id=workflow_id(inp.cluster),
        cluster=inp.cluster,
        execution_timeout=timedelta(minutes=30),
    )


async def run_now(
    client: Client, inp: ReaperInput, *, timeout: timedelta = timedelta(minutes=10)
) -> ReapReport:
    """Run the reaper once, now, and return its report."""
    return await WORKFLOW.execute_now(
        client, inp, id_base=workflow_id(inp.cluster), cluster=inp.cluster, timeout=timeout
    )


__all__ = ["WORKFLOW", "run_now", "schedule_action", "schedule_id", "workflow_id"]
