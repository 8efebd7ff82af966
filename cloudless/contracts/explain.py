"""``explain/<namespace>/<name>/<nonce>``: a dry-run placement (nothing is committed)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.client import Client

from cloudless.contracts._base import WorkflowType
from cloudless.contracts.names import task_queue
from cloudless.model import ExplainInput, ExplainResult
from cloudless.vocabulary import AccessRole


def workflow_id(workload_key: str) -> str:
    """A fresh id per request: explanations are not entities, only runs."""
    return f"explain/{workload_key}/{uuid.uuid4().hex[:8]}"


WORKFLOW: WorkflowType[ExplainInput, ExplainResult] = WorkflowType(
    "ExplainPlacementWorkflow",
    ExplainInput,
    ExplainResult,
    task_queue=task_queue,
    id_prefix="explain/",
    starter=AccessRole.VIEWER,  # a dry run: nothing is committed
)


async def explain(
    client: Client,
    inp: ExplainInput,
    workload_key: str,
    *,
    execution_timeout: timedelta,
    rpc_timeout: timedelta | None = None,
) -> ExplainResult:
    """Decide placement for ``inp.manifest`` on the coordinator's node index."""
    return await WORKFLOW.execute(
        client,
        inp,
        id=workflow_id(workload_key),
        cluster=inp.cluster,
        execution_timeout=execution_timeout,
        rpc_timeout=rpc_timeout,
    )


__all__ = ["WORKFLOW", "explain", "workflow_id"]
