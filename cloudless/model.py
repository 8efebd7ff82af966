"""Payload models that cross Temporal: workflow, update, query and activity inputs/results.

One input and one result model per operation so fields can be added later without
breaking running histories. These are plain data: no I/O, safe inside the workflow
sandbox, serialized by Temporal's pydantic data converter.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False)


class Resources(_Model):
    """An amount of node resources; used for capacity, requests and allocations."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    storage_bytes: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            cpu_millis=self.cpu_millis + other.cpu_millis,
            memory_bytes=self.memory_bytes + other.memory_bytes,
            storage_bytes=self.storage_bytes + other.storage_bytes,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            cpu_millis=self.cpu_millis - other.cpu_millis,
            memory_bytes=self.memory_bytes - other.memory_bytes,
            storage_bytes=self.storage_bytes - other.storage_bytes,
        )

    def scaled(self, n: int) -> Resources:
        return Resources(
            cpu_millis=self.cpu_millis * n,
            memory_bytes=self.memory_bytes * n,
            storage_bytes=self.storage_bytes * n,
        )

    def fits_within(self, other: Resources) -> bool:
        """Whether every dimension of ``self`` is at most the same dimension of ``other``."""
        return (
            self.cpu_millis <= other.cpu_millis
            and self.memory_bytes <= other.memory_bytes
            and self.storage_bytes <= other.storage_bytes
        )

    def over(self, capacity: Resources) -> list[str]:
        """Names of the dimensions where ``self`` exceeds ``capacity``."""
        names = []
        if self.cpu_millis > capacity.cpu_millis:
            names.append("cpu")
        if self.memory_bytes > capacity.memory_bytes:
            names.append("memory")
        if self.storage_bytes > capacity.storage_bytes:
            names.append("storage")
        return names


# --------------------------------------------------------------------------- nodes


class NodeState(enum.StrEnum):
    """The node state machine kept by ``node/<id>``."""

    JOINING = "Joining"
    READY = "Ready"
    SUSPECT = "Suspect"
    OFFLINE = "Offline"
    DRAINING = "Draining"
    DRAINED = "Drained"
    CORDONED = "Cordoned"
    LEFT = "Left"


class NodeRecord(_Model):
    """A node's identity and facts as recorded at enrollment."""

    node_id: str
    zone: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    capacity: Resources = Field(default_factory=Resources)
    address: str = ""
    runtimes: list[str] = Field(default_factory=list)
    agent_version: str = ""
    certificate_not_after: datetime | None = None
    enrolled_at: datetime | None = None


class NodeTransition(_Model):
    state: NodeState
    at: datetime
    reason: str = ""


class NodeStatus(_Model):
    """What ``describe node`` shows: the record, its state and recent transitions.

    ``state`` is derived from two dimensions: ``health`` (from heartbeats: Ready, Suspect,
    Offline) and ``admin`` (set by operators: Cordoned, Draining, Drained, or empty).
    """

    record: NodeRecord
    state: NodeState
    health: str = "Ready"
    admin: str = ""
    transitions: list[NodeTransition] = Field(default_factory=list)
    #: Times the node went Suspect or Offline recently; drives damping and reliability.
    churn: list[datetime] = Field(default_factory=list)
    first_seen: datetime | None = None
    offline_seconds: float = 0.0
    down_since: datetime | None = None
    gateway: str = ""


class LivenessSignal(_Model):
    """A health change observed by a gateway's liveness table."""

    health: str  # Ready | Suspect | Offline
    reason: str
    at: datetime
    gateway: str


class NodeAdminInput(_Model):
    action: str  # cordon | uncordon | drain
    reason: str = ""


class ReplicasLost(_Model):
    """Signal to a workload: its replicas on ``node_id`` are gone (node Offline or drained)."""

    node_id: str
    reason: str
    evacuate: bool = False  # drain: replace first, then stop (keeps minAvailable)
    replica_ids: list[str] = Field(default_factory=list)  # empty: every replica on the node


class ReplicaExited(_Model):
    """Signal to a workload: a replica exited and its agent will not restart it."""

    replica_id: str
    node_id: str
    phase: str  # Failed | Stopped
    exit_code: int | None = None
    message: str = ""


class ReconcileNodeInput(_Model):
    node_id: str
    address: str
    cluster: str


class ReconcileNodeResult(_Model):
    kept: int
    stopped: list[str] = Field(default_factory=list)
    missing: dict[str, list[str]] = Field(default_factory=dict)  # workload -> replica ids


class NotifyWorkloadsInput(_Model):
    node_id: str
    reason: str
    evacuate: bool = False


class NodeWorkflowInput(_Model):
    cluster: str
    record: NodeRecord | None = None
    carried: NodeStatus | None = None  # state carried across continue-as-new


class EnrollSignal(_Model):
    record: NodeRecord


# --------------------------------------------------------------------------- ledger


class LedgerNode(_Model):
    """The ledger's compact view of one node: facts needed to place plus allocated totals."""

    node_id: str
    zone: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    capacity: Resources = Field(default_factory=Resources)
    allocated: Resources = Field(default_factory=Resources)
    replicas: int = 0
    workloads: dict[str, int] = Field(default_factory=dict)  # workload key -> replicas here
    address: str = ""
    runtimes: list[str] = Field(default_factory=list)
    state: NodeState = NodeState.JOINING


class ClusterSnapshot(_Model):
    cluster: str
    version: int
    nodes: list[LedgerNode]


class Allocation(_Model):
    replica_id: str
    workload: str  # "<namespace>/<name>"
    node_id: str
    resources: Resources


class CommitPlanInput(_Model):
    """A batch of allocations; ``plan_id`` makes the commit idempotent under retries."""

    plan_id: str
    allocations: list[Allocation] = Field(default_factory=list)
    releases: list[Allocation] = Field(default_factory=list)


class CommitPlanResult(_Model):
    version: int
    applied: bool  # False when this plan_id had been applied before (a retry)
    allocations: list[Allocation] = Field(default_factory=list)  # as originally committed


class UpsertNodeInput(_Model):
    record: NodeRecord
    state: NodeState


class WaitNodeInput(_Model):
    """Block until the ledger lists ``node_id`` in one of ``states`` (any state if empty)."""

    node_id: str
    states: list[NodeState] = Field(default_factory=list)
    timeout_seconds: float = 30.0


class ConsumeTokenInput(_Model):
    jti: str
    expires_at: datetime
    node_id: str
    bound_to_node: bool = False  # the token names this node: it may re-enroll an existing one


class ClusterWorkflowInput(_Model):
    cluster: str
    carried: dict[str, Any] | None = None  # compact state carried across continue-as-new


# --------------------------------------------------------------------------- enrollment


class EnrollmentInput(_Model):
    """Verified token claims plus the agent's request; the raw token never enters history."""

    cluster: str
    jti: str
    token_expires_at: datetime
    bound_node_name: str | None = None
    bound_labels: dict[str, str] = Field(default_factory=dict)
    csr_pem: str
    record: NodeRecord


class EnrollmentResult(_Model):
    node_id: str
    certificate_pem: str
    ca_pem: str
    cluster: str


class SignCertificateInput(_Model):
    cluster: str
    node_id: str
    csr_pem: str
    dns_names: list[str] = Field(default_factory=list)


class SignCertificateResult(_Model):
    certificate_pem: str
    ca_pem: str
    not_after: datetime


# --------------------------------------------------------------------------- workloads


class ReplicaPhase(enum.StrEnum):
    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    FAILED = "Failed"
    STOPPED = "Stopped"


class ReplicaRecord(_Model):
    """One replica as the workload workflow tracks it."""

    replica_id: str
    generation: int
    spec_hash: str
    phase: ReplicaPhase = ReplicaPhase.PENDING
    node_id: str = ""
    address: str = ""
    message: str = ""
    runtime_id: str = ""
    started_at: datetime | None = None
    resources: Resources = Field(default_factory=Resources)
    lost: bool = False  # its node went away: released without a stop (the node reconciles)
    evicting: bool = False  # being moved off a draining node: replaced first, then stopped


class WorkloadPhase(enum.StrEnum):
    PROGRESSING = "Progressing"
    AVAILABLE = "Available"
    DEGRADED = "Degraded"
    PENDING = "Pending"
    DELETING = "Deleting"
    DELETED = "Deleted"


class WorkloadStatus(_Model):
    namespace: str
    name: str
    generation: int
    spec_hash: str
    desired: int
    ready: int
    phase: WorkloadPhase
    message: str = ""
    replicas: list[ReplicaRecord] = Field(default_factory=list)
    manifest: dict[str, Any] = Field(default_factory=dict)


class WorkloadWorkflowInput(_Model):
    cluster: str
    manifest: dict[str, Any]
    carried: WorkloadStatus | None = None
    next_replica_seq: int = 0
    placement_backoff_seconds: float = 0.0


class ApplyInput(_Model):
    manifest: dict[str, Any]


class ApplyResult(_Model):
    generation: int
    changed: bool
    spec_hash: str
    created: bool = False  # the first apply of a new workload (its start manifest)


class ScaleInput(_Model):
    replicas: int


class WaitInput(_Model):
    """Wait until ``generation`` is reconciled and, optionally, stronger conditions hold."""

    generation: int
    timeout_seconds: float = 120.0
    all_ready: bool = False  # every desired replica Running
    avoid_node: str = ""  # and none of them on this node (e.g. after it was lost)


# --------------------------------------------------------------------------- activities


class PlacementRequest(_Model):
    cluster: str
    workload: str
    plan_id: str
    replica_ids: list[str]
    resources: Resources
    node_selector: dict[str, str] = Field(default_factory=dict)
    zones: list[str] = Field(default_factory=list)
    runtime: str = "docker"
    strategy: str = "binpack"


class Placement(_Model):
    replica_id: str
    node_id: str
    address: str


class PlacementResult(_Model):
    placements: list[Placement]
    unplaced: list[str] = Field(default_factory=list)
    reason: str = ""  # why the unplaced ones fit nowhere, e.g. "0/3 nodes: 3 insufficient memory"


class RunReplicaInput(_Model):
    node_id: str
    address: str
    namespace: str
    workload: str
    replica_id: str
    generation: int
    spec_hash: str
    manifest: dict[str, Any]


class RunReplicaResult(_Model):
    phase: ReplicaPhase
    runtime_id: str = ""
    message: str = ""
    started_at: datetime | None = None


class StopReplicaInput(_Model):
    node_id: str
    address: str
    replica_id: str
    grace_seconds: float = 10.0


class StopReplicaResult(_Model):
    found: bool
