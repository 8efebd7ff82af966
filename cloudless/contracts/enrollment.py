"""``enrollment/<jti>``: admit a node presenting a valid bootstrap token and a CSR.

One workflow id per token id: a second enrollment with the same token finds the first.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy

from cloudless.contracts._base import WorkflowType
from cloudless.contracts.names import task_queue
from cloudless.model import EnrollmentInput, EnrollmentResult


def workflow_id(jti: str) -> str:
    return f"enrollment/{jti}"


WORKFLOW: WorkflowType[EnrollmentInput, EnrollmentResult] = WorkflowType(
    "EnrollmentWorkflow",
    EnrollmentInput,
    EnrollmentResult,
    task_queue=task_queue,
    id_prefix="enrollment/",
)


async def enroll(
    client: Client, inp: EnrollmentInput, *, execution_timeout: timedelta
) -> EnrollmentResult:
    """Run the enrollment of ``inp.record`` with token ``inp.jti`` and wait for it.

    A failed attempt (say, a transient fault) may be retried with the same token; the
    ledger's single-use record is what makes a token single-use, and a token that
    enrolled a node already fails with WorkflowAlreadyStartedError.
    """
    return await WORKFLOW.execute(
        client,
        inp,
        id=workflow_id(inp.jti),
        cluster=inp.cluster,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        execution_timeout=execution_timeout,
    )


__all__ = ["WORKFLOW", "enroll", "workflow_id"]
