"""``node/<node-id>``: one node's identity, facts and state machine."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy

from cloudless.contracts._base import Query, Signal, Update, WorkflowType
from cloudless.contracts.names import task_queue
from cloudless.model import (
    EnrollSignal,
    LivenessSignal,
    NodeAdminInput,
    NodeRecord,
    NodeStatus,
    NodeWorkflowInput,
    ReconcileRequest,
    RenewCertificateInput,
    SignCertificateResult,
)
from cloudless.vocabulary import AccessRole


def workflow_id(node_id: str) -> str:
    return f"node/{node_id}"


#: The node enrolled (again): probe its agent, then Ready.
ENROLL: Signal[EnrollSignal] = Signal("enroll", EnrollSignal)
#: A reconnecting agent reports what it offers now (address, capacity, labels).
FACTS: Signal[EnrollSignal] = Signal("facts", EnrollSignal)
#: A gateway's liveness table saw the node's health change.
LIVENESS: Signal[LivenessSignal] = Signal("liveness", LivenessSignal)
#: A workload gave up stopping replicas here: reconcile now if Ready (else on return).
RECONCILE: Signal[ReconcileRequest] = Signal("reconcile", ReconcileRequest)
#: Cordon, uncordon or drain; returns once applied (a drain once the node is empty).
ADMIN: Update[NodeAdminInput, NodeStatus] = Update(
    "admin", NodeAdminInput, NodeStatus, sender=AccessRole.OPERATOR
)
#: A certificate for the node's new key, issued and recorded (the gateway's
#: ``RenewCertificate``); refused for a removed node or past the renewal bound.
RENEW_CERTIFICATE: Update[RenewCertificateInput, SignCertificateResult] = Update(
    "renew_certificate", RenewCertificateInput, SignCertificateResult
)
#: The record, state and recent transitions (None until enrollment started).
DESCRIBE: Query[None, NodeStatus | None] = Query("describe", None, NodeStatus | None)

WORKFLOW: WorkflowType[NodeWorkflowInput, None] = WorkflowType(
    "NodeWorkflow",
    NodeWorkflowInput,
    None,
    task_queue=task_queue,
    id_prefix="node/",
    messages=(ENROLL, FACTS, LIVENESS, RECONCILE, ADMIN, RENEW_CERTIFICATE, DESCRIBE),
)


class NodeHandle:
    """Typed calls on ``node/<node-id>``."""

    def __init__(self, client: Client, node_id: str) -> None:
        self.client = client
        self.node_id = node_id
        self.id = workflow_id(node_id)
        self.handle: WorkflowHandle[Any, None] = WORKFLOW.handle(client, self.id)

    async def enroll(self, cluster: str, record: NodeRecord) -> None:
        """Start ``node/<id>`` or, for a node enrolling again, signal the running one."""
        await WORKFLOW.start(
            self.client,
            NodeWorkflowInput(cluster=cluster),
            id=self.id,
            cluster=cluster,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal=ENROLL,
            start_signal_arg=EnrollSignal(record=record),
        )

    async def describe(self, *, rpc_timeout: timedelta | None = None) -> NodeStatus | None:
        return await DESCRIBE.query(self.handle, rpc_timeout=rpc_timeout)

    async def admin(
        self, inp: NodeAdminInput, *, rpc_timeout: timedelta | None = None
    ) -> NodeStatus:
        return await ADMIN.execute(self.handle, inp, rpc_timeout=rpc_timeout)

    async def renew_certificate(
        self, inp: RenewCertificateInput, *, rpc_timeout: timedelta | None = None
    ) -> SignCertificateResult:
        return await RENEW_CERTIFICATE.execute(self.handle, inp, rpc_timeout=rpc_timeout)

    async def facts(self, sig: EnrollSignal) -> None:
        await FACTS.send(self.handle, sig)

    async def liveness(self, sig: LivenessSignal) -> None:
        await LIVENESS.send(self.handle, sig)


__all__ = [
    "ADMIN",
    "DESCRIBE",
    "ENROLL",
    "FACTS",
    "LIVENESS",
    "RENEW_CERTIFICATE",
    "WORKFLOW",
    "NodeHandle",
    "workflow_id",
]
