"""``audit/<cluster>``: the cluster's audit log, one entity workflow per cluster.

The coordinator's front records operators' calls (``workers/front/audit.py``) and sends
them in batches with signal-with-start, so the first batch starts the log; ``cloudlessctl
audit`` reads it with a filtered query.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle

from cloudless.contracts._base import Query, Signal, WorkflowType
from cloudless.contracts.names import task_queue
from cloudless.model import AuditBatch, AuditEntries, AuditFilter, AuditWorkflowInput


def workflow_id(cluster: str) -> str:
    return f"audit/{cluster}"


#: Append records (the oldest drop out beyond the log's bounds). Coordinators only (no
#: ``sender``): nobody, admins included, can write a record the front did not make.
RECORD: Signal[AuditBatch] = Signal("record", AuditBatch)
#: Records matching a filter, newest first, bounded in number and bytes. Every role may
#: read, as it may read the workflow's history.
ENTRIES: Query[AuditFilter, AuditEntries] = Query("entries", AuditFilter, AuditEntries)

WORKFLOW: WorkflowType[AuditWorkflowInput, None] = WorkflowType(
    "AuditWorkflow",
    AuditWorkflowInput,
    None,
    task_queue=task_queue,
    id_prefix="audit/",
    messages=(RECORD, ENTRIES),
)


class AuditHandle:
    """Typed calls on ``audit/<cluster>``."""

    def __init__(self, client: Client, cluster: str) -> None:
        self.client = client
        self.cluster = cluster
        self.id = workflow_id(cluster)
        self.handle: WorkflowHandle[Any, None] = WORKFLOW.handle(client, self.id)

    async def record(self, batch: AuditBatch, *, rpc_timeout: timedelta | None = None) -> None:
        """Append ``batch``, starting the log if it does not run (signal-with-start)."""
        await WORKFLOW.start(
            self.client,
            AuditWorkflowInput(cluster=self.cluster),
            id=self.id,
            cluster=self.cluster,
            start_signal=RECORD,
            start_signal_arg=batch,
            static_summary=f"audit log of cluster {self.cluster}",
            rpc_timeout=rpc_timeout,
        )

    async def entries(
        self, where: AuditFilter, *, rpc_timeout: timedelta | None = None
    ) -> AuditEntries:
        return await ENTRIES.query(self.handle, where, rpc_timeout=rpc_timeout)


__all__ = ["ENTRIES", "RECORD", "WORKFLOW", "AuditHandle", "workflow_id"]
