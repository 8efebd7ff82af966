"""Agent activities: starting and stopping replicas on nodes over gRPC/mTLS."""

from __future__ import annotations

from datetime import datetime

from cloudless.model._base import _Model
from cloudless.spec import Workload
from cloudless.vocabulary import (
    ReplicaPhase,
)


class RunReplicaInput(_Model):
    """One replica of a :class:`RunReplicasInput` batch and where it goes."""

    node_id: str
    address: str
    namespace: str
    workload: str
    replica_id: str
    generation: int
    spec_hash: str
    epoch: int = 0  # the placement's epoch; agents refuse older ones


class RunReplicaResult(_Model):
    phase: ReplicaPhase
    runtime_id: str = ""
    message: str = ""
    started_at: datetime | None = None
    #: The exit code of a replica that exited right after its start (None: none).
    exit_code: int | None = None


class RunReplicasInput(_Model):
    """Start many replicas of one workload in one activity (see ``run_replicas``).

    The workload travels once; each item says where one of its replicas goes."""

    manifest: Workload
    replicas: list[RunReplicaInput]


class RunReplicaOutcome(_Model):
    """One replica's start: a result, or the error that ended its retries."""

    replica_id: str
    result: RunReplicaResult | None = None
    error: str = ""
    error_type: str = ""


class RunReplicasResult(_Model):
    outcomes: list[RunReplicaOutcome]


class StopReplicaInput(_Model):
    node_id: str
    address: str
    replica_id: str
    grace_seconds: float = 10.0
    epoch: int = 0  # the placement being stopped; later RunReplicas of it are refused


class StopReplicaResult(_Model):
    found: bool
