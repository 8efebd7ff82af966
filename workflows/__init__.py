"""Temporal workflows only: deterministic, no I/O, no clock, no randomness.

See ``workflows/README.md`` for the entities and how they talk to each other.
"""

from workflows.audit import AuditWorkflow
from workflows.ca_rotation import CARotationWorkflow
from workflows.certs import CertRotationWorkflow
from workflows.cluster import ClusterWorkflow
from workflows.enrollment import EnrollmentWorkflow
from workflows.explain import ExplainPlacementWorkflow
from workflows.node import NodeWorkflow
from workflows.reaper import ReaperWorkflow
from workflows.rotation import KeyRotationWorkflow
from workflows.secret import SecretWorkflow
from workflows.workload import WorkloadWorkflow

#: On the ledger's own task queue (cloudless.contracts.names.ledger_task_queue).
LEDGER_WORKFLOWS = (ClusterWorkflow,)
#: On the cluster's shared task queue (cloudless.contracts.names.task_queue).
SHARED_QUEUE_WORKFLOWS = (
    EnrollmentWorkflow,
    NodeWorkflow,
    WorkloadWorkflow,
    SecretWorkflow,
    KeyRotationWorkflow,
    ExplainPlacementWorkflow,
    ReaperWorkflow,
    AuditWorkflow,
    CertRotationWorkflow,
    CARotationWorkflow,
)
#: Every workflow a coordinator registers.
ALL_WORKFLOWS = LEDGER_WORKFLOWS + SHARED_QUEUE_WORKFLOWS

__all__ = [
    "ALL_WORKFLOWS",
    "LEDGER_WORKFLOWS",
    "SHARED_QUEUE_WORKFLOWS",
    "AuditWorkflow",
    "CARotationWorkflow",
    "CertRotationWorkflow",
    "ClusterWorkflow",
    "EnrollmentWorkflow",
    "ExplainPlacementWorkflow",
    "KeyRotationWorkflow",
    "NodeWorkflow",
    "ReaperWorkflow",
    "SecretWorkflow",
    "WorkloadWorkflow",
]
