"""Payload models that cross Temporal: workflow, update, query and activity inputs/results.

One input and one result model per operation so fields can be added later without
breaking running histories. These are plain data: no I/O, safe inside the workflow
sandbox, serialized by Temporal's pydantic data converter. One module per entity:

- :mod:`~cloudless.model.nodes`: ``node/<id>`` (record, status, liveness, admin)
- :mod:`~cloudless.model.ledger`: ``cluster/<name>`` (ledger state, snapshots, plans)
- :mod:`~cloudless.model.enrollment`: ``enrollment/<jti>`` and certificate signing
- :mod:`~cloudless.model.workloads`: ``workload/<ns>/<name>`` (state, status, signals)
- :mod:`~cloudless.model.placement`: placement and explain activities
- :mod:`~cloudless.model.agents`: replica start/stop activities

The vocabulary's names (:mod:`cloudless.vocabulary`) are re-exported: payload models and
their words travel together.
"""

from __future__ import annotations

from cloudless.model.agents import (
    RunReplicaInput,
    RunReplicaOutcome,
    RunReplicaResult,
    RunReplicasInput,
    RunReplicasResult,
    StopReplicaInput,
    StopReplicaResult,
)
from cloudless.model.enrollment import (
    EnrollmentInput,
    EnrollmentResult,
    SignCertificateInput,
    SignCertificateResult,
)
from cloudless.model.ledger import (
    Allocation,
    AwaitCapacityInput,
    ClusterSnapshot,
    ClusterWorkflowInput,
    CommitPlanInput,
    CommitPlanResult,
    CompactSnapshot,
    ConsumeTokenInput,
    LedgerBatch,
    LedgerBatchResult,
    LedgerNode,
    LedgerOp,
    LedgerOpResult,
    LedgerWorkload,
    NodeTaint,
    SchedulerSettings,
    UpsertNodeInput,
    UpsertNodeResult,
    WaitNodeInput,
    decode_ledger,
    encode_ledger,
)
from cloudless.model.nodes import (
    EnrollSignal,
    LivenessSignal,
    NodeAdminInput,
    NodeRecord,
    NodeStatus,
    NodeTransition,
    NodeWorkflowInput,
    NotifyWorkloadsInput,
    ReconcileNodeInput,
    ReconcileNodeResult,
    ReconcileRequest,
)
from cloudless.model.placement import (
    ExplainInput,
    ExplainResult,
    Placement,
    PlacementRequest,
    PlacementResult,
    Preemption,
)
from cloudless.model.workloads import (
    ApplyInput,
    ApplyResult,
    CandidateScore,
    CapacityAvailable,
    ReplicaExited,
    ReplicaReadiness,
    ReplicaRecord,
    ReplicasLost,
    ReplicasPreempted,
    ScaleInput,
    WaitInput,
    WorkloadState,
    WorkloadStatus,
    WorkloadWorkflowInput,
)
from cloudless.vocabulary import (
    DEFAULT_WEIGHTS,
    RESOURCE_FIELDS,
    RESOURCE_NAMES,
    SCORE_FACTORS,
    AdminAction,
    AdminState,
    NodeHealth,
    NodeState,
    ReplicaPhase,
    Resources,
    WorkloadPhase,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "RESOURCE_FIELDS",
    "RESOURCE_NAMES",
    "SCORE_FACTORS",
    "AdminAction",
    "AdminState",
    "Allocation",
    "ApplyInput",
    "ApplyResult",
    "AwaitCapacityInput",
    "CandidateScore",
    "CapacityAvailable",
    "ClusterSnapshot",
    "ClusterWorkflowInput",
    "CommitPlanInput",
    "CommitPlanResult",
    "CompactSnapshot",
    "ConsumeTokenInput",
    "EnrollSignal",
    "EnrollmentInput",
    "EnrollmentResult",
    "ExplainInput",
    "ExplainResult",
    "LedgerBatch",
    "LedgerBatchResult",
    "LedgerNode",
    "LedgerOp",
    "LedgerOpResult",
    "LedgerWorkload",
    "LivenessSignal",
    "NodeAdminInput",
    "NodeHealth",
    "NodeRecord",
    "NodeState",
    "NodeStatus",
    "NodeTaint",
    "NodeTransition",
    "NodeWorkflowInput",
    "NotifyWorkloadsInput",
    "Placement",
    "PlacementRequest",
    "PlacementResult",
    "Preemption",
    "ReconcileNodeInput",
    "ReconcileNodeResult",
    "ReconcileRequest",
    "ReplicaExited",
    "ReplicaPhase",
    "ReplicaReadiness",
    "ReplicaRecord",
    "ReplicasLost",
    "ReplicasPreempted",
    "Resources",
    "RunReplicaInput",
    "RunReplicaOutcome",
    "RunReplicaResult",
    "RunReplicasInput",
    "RunReplicasResult",
    "ScaleInput",
    "SchedulerSettings",
    "SignCertificateInput",
    "SignCertificateResult",
    "StopReplicaInput",
    "StopReplicaResult",
    "UpsertNodeInput",
    "UpsertNodeResult",
    "WaitInput",
    "WaitNodeInput",
    "WorkloadPhase",
    "WorkloadState",
    "WorkloadStatus",
    "WorkloadWorkflowInput",
    "decode_ledger",
    "encode_ledger",
]
