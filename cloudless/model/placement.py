"""Placement and explain activities: what the scheduler is asked and what it decided."""

from __future__ import annotations

from pydantic import Field

from cloudless.model._base import _Model
from cloudless.model.workloads import CandidateScore
from cloudless.spec import Workload
from cloudless.vocabulary import (
    Resources,
)


class PlacementRequest(_Model):
    """Place ``replica_ids`` of the workload whose manifest is given.

    The activity derives every constraint from the manifest; the explicit fields are the
    few the ledger needs as they are.
    """

    cluster: str
    workload: str
    plan_id: str
    replica_ids: list[str]
    resources: Resources
    manifest: Workload
    #: Evict lower-priority replicas to make room for ones that fit nowhere.
    allow_preemption: bool = True
    #: The workload run's owner token (``WorkloadState.owner``), carried by every plan.
    owner: int = 0
    #: Nodes these replicas crash-looped on recently: used only if no other node fits.
    avoid_nodes: list[str] = Field(default_factory=list)


class Placement(_Model):
    replica_id: str
    node_id: str
    address: str
    score: float | None = None
    candidates: list[CandidateScore] = Field(default_factory=list)


class Preemption(_Model):
    """Replicas of ``workload`` released on ``node_id`` to make room (``count`` of them)."""

    workload: str
    node_id: str
    count: int
    priority: int


class PlacementResult(_Model):
    placements: list[Placement]
    unplaced: list[str] = Field(default_factory=list)
    reason: str = ""  # why the unplaced ones fit nowhere, e.g. "0/3 nodes: 3 insufficient memory"
    preemptions: list[Preemption] = Field(default_factory=list)


class ExplainInput(_Model):
    """Dry-run placement of ``manifest`` (its ``spec.replicas``) on the current cluster."""

    cluster: str
    manifest: Workload
    top_k: int = 3


class ExplainResult(_Model):
    lines: list[str]  # the human-readable explanation
    placed: list[Placement] = Field(default_factory=list)
    unplaced: int = 0
    reason: str = ""
    ledger_version: int = 0
