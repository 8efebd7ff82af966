"""Typed contracts between the processes and the entity workflows.

Each entity declares here, once, its workflow type name, its workflow id scheme, its task
queue and every Update, Signal and Query with its one input and one result type, plus a
typed handle that callers use::

    from cloudless.contracts import workload

    handle = workload.WorkloadHandle(client, "default", "web")
    status = await handle.status()                      # a WorkloadStatus
    await workload.REPLICAS_LOST.send(handle.handle, ReplicasLost(...))

The workflows name their handlers through the same descriptors
(``@workflow.update(name=ledger.COMMIT_PLAN.name)``), so no message name is written as a
string anywhere else; ``tests/unit/test_contracts_conformance.py`` checks every registered
workflow against its contract.

The package imports only the kernel's models and temporalio: any process may use it
without importing the workflow code.
"""

from __future__ import annotations

from typing import Any

from cloudless.contracts import (
    audit,
    certs,
    enrollment,
    explain,
    ledger,
    names,
    node,
    reaper,
    rotation,
    secret,
    workload,
)
from cloudless.contracts._base import (
    Message,
    Query,
    Signal,
    Update,
    WorkflowType,
    gone,
    signal_unless_gone,
)
from cloudless.contracts.audit import AuditHandle
from cloudless.contracts.ledger import LedgerHandle
from cloudless.contracts.node import NodeHandle
from cloudless.contracts.rotation import RotationHandle
from cloudless.contracts.secret import SecretHandle
from cloudless.contracts.workload import WorkloadHandle

#: Every entity's workflow type, by registered name.
WORKFLOW_TYPES: dict[str, WorkflowType[Any, Any]] = {
    w.name: w
    for w in (
        ledger.WORKFLOW,
        node.WORKFLOW,
        workload.WORKFLOW,
        enrollment.WORKFLOW,
        secret.WORKFLOW,
        rotation.WORKFLOW,
        explain.WORKFLOW,
        reaper.WORKFLOW,
        audit.WORKFLOW,
        certs.WORKFLOW,
        certs.CA_WORKFLOW,
    )
}

__all__ = [
    "WORKFLOW_TYPES",
    "AuditHandle",
    "LedgerHandle",
    "Message",
    "NodeHandle",
    "Query",
    "RotationHandle",
    "SecretHandle",
    "Signal",
    "Update",
    "WorkflowType",
    "WorkloadHandle",
    "audit",
    "certs",
    "enrollment",
    "explain",
    "gone",
    "ledger",
    "names",
    "node",
    "reaper",
    "rotation",
    "secret",
    "signal_unless_gone",
    "workload",
]
