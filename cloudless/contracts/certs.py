"""``cert-rotation/<cluster>``: renew the control plane's own certificates.

Started by the Temporal Schedule of the same id, which every coordinator keeps at an
interval derived from the lifetime of the certificates it issues
(:func:`policies.renewal.rotation_interval`), or on demand (``cloudlessctl certs
rotate``). A run asks every live coordinator instance, on that instance's own task queue
(:func:`coordinator_task_queue`), to renew what is due of its certificates: its own
(served by its listeners and its front) and the local admin's. Node certificates are not
here: agents renew their own over mutual TLS.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client, ScheduleActionStartWorkflow

from cloudless.contracts._base import WorkflowType
from cloudless.contracts.names import task_queue
from cloudless.model.certs import (
    INSTANCE_MAX,
    CARotationInput,
    CARotationReport,
    CertRotationInput,
    CertRotationReport,
)
from cloudless.vocabulary import AccessRole

#: What a coordinator instance's worker calls itself (its poller identity), followed by
#: the instance name; a run finds the live instances by it.
INSTANCE_IDENTITY_PREFIX = "cloudless-coordinator/"


def workflow_id(cluster: str) -> str:
    """The id of the cluster's rotation runs (one at a time)."""
    return f"cert-rotation/{cluster}"


def schedule_id(cluster: str) -> str:
    """The Temporal Schedule that starts the rotation periodically."""
    return f"cert-rotation/{cluster}"


def coordinator_task_queue(cluster: str, instance: str) -> str:
    """The task queue only coordinator ``instance`` polls: work on its own files."""
    if not instance or len(instance) > INSTANCE_MAX:
        raise ValueError(f"a coordinator instance name has 1..{INSTANCE_MAX} characters")
    return f"{task_queue(cluster)}-coordinator-{instance}"


def instance_identity(instance: str, pid: int, host: str) -> str:
    """The worker identity of coordinator ``instance``, shown in the Temporal UI:
    Temporal's usual ``<pid>@<host>``, then the instance the rotation runs find it by."""
    return f"{pid}@{host} {INSTANCE_IDENTITY_PREFIX}{instance}"


def instance_of(identity: str) -> str | None:
    """The instance a worker identity names, or None for any other poller."""
    _, marker, name = identity.rpartition(f" {INSTANCE_IDENTITY_PREFIX}")
    if not marker:
        return None
    return name if 0 < len(name) <= INSTANCE_MAX else None


WORKFLOW: WorkflowType[CertRotationInput, CertRotationReport] = WorkflowType(
    "CertRotationWorkflow",
    CertRotationInput,
    CertRotationReport,
    task_queue=task_queue,
    id_prefix="cert-rotation/",
    starter=AccessRole.ADMIN,
)


def ca_workflow_id(cluster: str) -> str:
    """The cluster CA's rotation (one at a time)."""
    return f"ca-rotation/{cluster}"


#: ``ca-rotation/<cluster>``: rotate the cluster CA through an overlap (prepare, wait,
#: switch, wait, retire), started on demand (``cloudlessctl certs rotate-ca``).
CA_WORKFLOW: WorkflowType[CARotationInput, CARotationReport] = WorkflowType(
    "CARotationWorkflow",
    CARotationInput,
    CARotationReport,
    task_queue=task_queue,
    id_prefix="ca-rotation/",
    starter=AccessRole.ADMIN,
)


async def start_ca_rotation(client: Client, inp: CARotationInput) -> None:
    """Start the rotation; refused (already started) while one runs."""
    await CA_WORKFLOW.start(client, inp, id=ca_workflow_id(inp.cluster), cluster=inp.cluster)


def schedule_action(inp: CertRotationInput) -> ScheduleActionStartWorkflow:
    """What the Schedule starts: one look for the cluster."""
    return WORKFLOW.schedule_action(
        inp,
        id=workflow_id(inp.cluster),
        cluster=inp.cluster,
        execution_timeout=timedelta(minutes=10),
    )


async def run_now(
    client: Client, inp: CertRotationInput, *, timeout: timedelta = timedelta(minutes=5)
) -> CertRotationReport:
    """Look (and with ``inp.force``, renew everything) now; the report."""
    return await WORKFLOW.execute_now(
        client, inp, id_base=workflow_id(inp.cluster), cluster=inp.cluster, timeout=timeout
    )


__all__ = [
    "CA_WORKFLOW",
    "INSTANCE_IDENTITY_PREFIX",
    "WORKFLOW",
    "ca_workflow_id",
    "coordinator_task_queue",
    "instance_identity",
    "instance_of",
    "run_now",
    "schedule_action",
    "schedule_id",
    "start_ca_rotation",
    "workflow_id",
]
