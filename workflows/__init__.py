"""Temporal workflows only: deterministic, no I/O, no clock, no randomness.

See ``workflows/README.md`` for the entities and how they talk to each other.
"""

from workflows.cluster import ClusterWorkflow
from workflows.enrollment import EnrollmentWorkflow
from workflows.explain import ExplainPlacementWorkflow
from workflows.node import NodeWorkflow
from workflows.rotation import KeyRotationWorkflow
from workflows.secret import SecretWorkflow
from workflows.workload import WorkloadWorkflow

ALL_WORKFLOWS = (
    ClusterWorkflow,
    EnrollmentWorkflow,
    NodeWorkflow,
    WorkloadWorkflow,
    SecretWorkflow,
    KeyRotationWorkflow,
    ExplainPlacementWorkflow,
)

__all__ = [
    "ALL_WORKFLOWS",
    "ClusterWorkflow",
    "EnrollmentWorkflow",
    "ExplainPlacementWorkflow",
    "KeyRotationWorkflow",
    "NodeWorkflow",
    "SecretWorkflow",
    "WorkloadWorkflow",
]
