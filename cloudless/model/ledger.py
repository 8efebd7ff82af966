"""``cluster/<name>``: the allocation ledger's state, snapshots and write operations.

The snapshot crosses Temporal in a columnar form (:func:`encode_ledger`): at 5,000 nodes and
50,000 replicas the plain form would exceed Temporal's 2 MB payload limit.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from cloudless.model._base import _Model
from cloudless.model.nodes import NodeRecord
from cloudless.vocabulary import (
    RESOURCE_FIELDS,
    SCORE_FACTORS,
    NodeState,
    Resources,
)


class NodeTaint(_Model):
    """A taint a node advertises (label ``taint.cloudless.dev/<key>: <value>:<effect>``)."""

    key: str
    value: str = ""
    effect: str = "NoSchedule"  # NoSchedule | PreferNoSchedule | NoExecute


class LedgerNode(_Model):
    """The ledger's compact view of one node: facts needed to place plus allocated totals.

    Everything the scheduler's filters and scores read is here, so the coordinator can
    rebuild its node index from one snapshot: region, runtime classes, taints, cost and
    latency come from the node's advertised labels (see :mod:`cloudless.nodefacts`);
    ``uptime_ratio`` and ``churn`` from the ``node/<id>`` workflow's recorded history.
    """

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
    region: str = ""
    runtime_classes: list[str] = Field(default_factory=lambda: ["runc"])
    taints: list[NodeTaint] = Field(default_factory=list)
    cost_per_core_hour: float = 0.0
    latency_ms: float = 0.0
    uptime_ratio: float = 1.0
    churn: int = 0


class LedgerWorkload(_Model):
    """What the scheduler needs to know about a workload that has replicas placed: the
    labels other workloads' selectors match, its priority (for preemption) and the
    resources of one replica. One entry per workload, never per replica."""

    labels: dict[str, str] = Field(default_factory=dict)
    priority: int = 0
    resources: Resources = Field(default_factory=Resources)
    replicas: int = 0  # placed in total; the entry goes when this reaches 0
    #: The owner token of the workload workflow these reservations belong to (the ledger
    #: version at which that workflow, on its first run, claimed the workload; see
    #: ``ClaimWorkloadInput``); 0: unknown (placed without an owner).
    owner: int = 0


class SchedulerSettings(_Model):
    """The cluster's scheduler configuration, kept in the ledger so that every coordinator
    decides with the same settings (and a restarted one with the same as before).

    ``weights`` overrides the default factor weights by name (a workload's own
    ``placement.weights`` override these in turn); the automatic sample scores
    ``max(sample_min, sample_percent % of the feasible nodes)``; ``top_k`` candidates are
    kept per decision for ``describe`` and ``explain``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[str, float] = Field(default_factory=dict)
    sample_min: int = Field(100, ge=1, le=1_000_000)
    sample_percent: float = Field(5.0, gt=0, le=100)
    top_k: int = Field(3, ge=0, le=20)

    @field_validator("weights")
    @classmethod
    def _known_factors(cls, weights: dict[str, float]) -> dict[str, float]:
        for name, value in weights.items():
            if name not in SCORE_FACTORS:
                raise ValueError(
                    f"unknown score factor {name!r}; the factors are {', '.join(SCORE_FACTORS)}"
                )
            if not math.isfinite(value) or not 0 <= value <= 100:
                raise ValueError(f"weight {name} must be between 0 and 100, got {value}")
        if weights and not any(weights.get(f, 1.0) > 0 for f in SCORE_FACTORS):
            raise ValueError("at least one score factor needs a weight above 0")
        return dict(sorted(weights.items()))


class ClusterSnapshot(_Model):
    """The ledger's nodes and placed workloads at ``version``.

    Crosses Temporal in the columnar form of :func:`encode_ledger` (as
    :class:`CompactSnapshot`): at 5,000 nodes and 50,000 replicas the plain form is about
    4.7 MB, over Temporal's 2 MB payload limit, the columnar one about a quarter of that.
    Validating a ClusterSnapshot from that form expands it, so callers see plain models.
    """

    cluster: str
    version: int
    nodes: list[LedgerNode]
    workloads: dict[str, LedgerWorkload] = Field(default_factory=dict)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "columns" in data and "nodes" not in data:
            nodes, workloads = decode_ledger(data["columns"])
            return {
                "cluster": data["cluster"],
                "version": data["version"],
                "nodes": nodes,
                "workloads": workloads,
                "scheduler": data.get("scheduler") or {},
            }
        return data


class CompactSnapshot(_Model):
    """Wire form of :class:`ClusterSnapshot` (what the ledger's ``snapshot`` query returns)."""

    cluster: str
    version: int
    columns: dict[str, Any]
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)

    def expand(self) -> ClusterSnapshot:
        """The plain form. The columns are handed over as they are: dumping them first
        would copy every column of a 5,000-node ledger once more."""
        return ClusterSnapshot.model_validate(
            {
                "cluster": self.cluster,
                "version": self.version,
                "columns": self.columns,
                "scheduler": self.scheduler,
            }
        )


class _Table:
    """Interns JSON-able values: each distinct value is stored once, rows hold its index."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._index: dict[str, int] = {}

    def add(self, value: Any) -> int:
        key = json.dumps(value, sort_keys=True, separators=(",", ":"))
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = len(self.values)
            self.values.append(value)
        return found


def _trimmed(r: Resources) -> list[int]:
    values = [getattr(r, f) for f in RESOURCE_FIELDS]
    while values and values[-1] == 0:
        values.pop()
    return values


def _resources(values: list[int]) -> dict[str, int]:
    return dict(zip(RESOURCE_FIELDS, values, strict=False))


def encode_ledger(nodes: list[LedgerNode], workloads: dict[str, LedgerWorkload]) -> dict[str, Any]:
    """Columns for nodes and workloads; repeated values (zones, label sets, capacities,
    runtimes, taints, workload keys) are stored once in ``t`` and referenced by index.

    ``replicas`` is not stored: it is the sum of a node's per-workload counts (and of a
    workload's per-node counts for ``LedgerWorkload.replicas``, stored anyway as it is small).
    """
    t = _Table()
    wl_index: dict[str, int] = {}
    cols: dict[str, list[Any]] = {
        k: [] for k in ("id", "z", "r", "s", "a", "l", "rt", "rc", "tn", "cap", "al", "wl", "num")
    }
    for n in nodes:
        cols["id"].append(n.node_id)
        cols["z"].append(t.add(n.zone))
        cols["r"].append(t.add(n.region))
        cols["s"].append(t.add(n.state.value))
        cols["a"].append(n.address)
        cols["l"].append(t.add(n.labels))
        cols["rt"].append(t.add(n.runtimes))
        cols["rc"].append(t.add(n.runtime_classes))
        cols["tn"].append(t.add([[x.key, x.value, x.effect] for x in n.taints]))
        cols["cap"].append(t.add(_trimmed(n.capacity)))
        cols["al"].append(_trimmed(n.allocated))
        flat: list[int] = []
        for key, count in n.workloads.items():
            flat += [wl_index.setdefault(key, len(wl_index)), count]
        cols["wl"].append(flat)
        cols["num"].append(t.add([n.cost_per_core_hour, n.latency_ms, n.uptime_ratio, n.churn]))
    for key in workloads:
        wl_index.setdefault(key, len(wl_index))
    keys = sorted(wl_index, key=wl_index.__getitem__)
    meta = [
        [
            wl_index[k],
            t.add(w.labels),
            w.priority,
            t.add(_trimmed(w.resources)),
            w.replicas,
            w.owner,
        ]
        for k, w in workloads.items()
    ]
    return {"t": t.values, "keys": keys, "nodes": cols, "workloads": meta}


def decode_ledger(data: dict[str, Any]) -> tuple[list[LedgerNode], dict[str, LedgerWorkload]]:
    t: list[Any] = data["t"]
    keys: list[str] = data["keys"]
    c = data["nodes"]
    nodes = []
    for i, node_id in enumerate(c["id"]):
        flat = c["wl"][i]
        counts = {keys[flat[j]]: flat[j + 1] for j in range(0, len(flat), 2)}
        cost, latency, uptime, churn = t[c["num"][i]]
        nodes.append(
            LedgerNode(
                node_id=node_id,
                zone=t[c["z"][i]],
                region=t[c["r"][i]],
                state=NodeState(t[c["s"][i]]),
                address=c["a"][i],
                labels=t[c["l"][i]],
                runtimes=t[c["rt"][i]],
                runtime_classes=t[c["rc"][i]],
                taints=[NodeTaint(key=k, value=v, effect=e) for k, v, e in t[c["tn"][i]]],
                capacity=Resources(**_resources(t[c["cap"][i]])),
                allocated=Resources(**_resources(c["al"][i])),
                workloads=counts,
                replicas=sum(counts.values()),
                cost_per_core_hour=cost,
                latency_ms=latency,
                uptime_ratio=uptime,
                churn=churn,
            )
        )
    workloads = {
        keys[row[0]]: LedgerWorkload(
            labels=t[row[1]],
            priority=row[2],
            resources=Resources(**_resources(t[row[3]])),
            replicas=row[4],
            owner=row[5] if len(row) > 5 else 0,
        )
        for row in data["workloads"]
    }
    return nodes, workloads


class Allocation(_Model):
    replica_id: str
    workload: str  # "<namespace>/<name>"
    node_id: str
    resources: Resources


class CommitPlanInput(_Model):
    """A batch of allocations; ``plan_id`` makes the commit idempotent under retries.

    ``workloads`` carries the metadata (labels, priority) of the workloads the plan
    allocates for, so the ledger can hand it to schedulers that rebuild their index.
    """

    plan_id: str
    allocations: list[Allocation] = Field(default_factory=list)
    releases: list[Allocation] = Field(default_factory=list)
    workloads: dict[str, LedgerWorkload] = Field(default_factory=dict)
    #: The owner token of the workload run each workload's allocations and releases come
    #: from. An older owner than the ledger's is refused (its run is over); a newer one
    #: first takes over, releasing what the older owner still holds. A workload not named
    #: here (a preempted victim's release) is applied without that check.
    owners: dict[str, int] = Field(default_factory=dict)


class CommitPlanResult(_Model):
    version: int
    applied: bool  # False when this plan_id had been applied before (a retry)
    allocations: list[Allocation] = Field(default_factory=list)  # as originally committed
    #: Pending workloads this plan may have made room for; the caller wakes them.
    woken: list[str] = Field(default_factory=list)
    #: Workloads whose older owner's reservations this plan released first (a takeover):
    #: a scheduler index that did not see them go reloads.
    taken_over: list[str] = Field(default_factory=list)


class UpsertNodeInput(_Model):
    record: NodeRecord
    state: NodeState
    uptime_ratio: float = 1.0  # derived by node/<id> from its recorded downtime
    churn: int = 0  # Suspect/Offline episodes within the recent window


class UpsertNodeResult(_Model):
    version: int
    node: LedgerNode
    woken: list[str] = Field(default_factory=list)  # pending workloads the node may fit


class AwaitCapacityInput(_Model):
    """Register a workload whose replicas fit nowhere, as of ledger ``version``.

    The ledger signals the workload (``capacity_available``) when a node becomes Ready or
    frees room that could hold one replica of ``resources``. If the ledger has moved past
    ``version`` already, nothing is registered and the caller decides again: that closes
    the window between deciding "nothing fits" and registering.
    """

    workload: str
    resources: Resources
    version: int


class ClaimWorkloadInput(_Model):
    """A workload workflow's first run claims its workload: everything the ledger still
    holds for it belongs to runs that are over (Temporal runs one execution per workflow
    id at a time), so it is released, and the run's owner token is the resulting ledger
    version, which only grows. The run's plans carry that token (``owners``)."""

    workload: str


class ClaimWorkloadResult(_Model):
    owner: int  # the run's owner token
    #: node -> replicas of earlier runs released there.
    released: dict[str, int] = Field(default_factory=dict)
    woken: list[str] = Field(default_factory=list)  # pending workloads the room may fit


class ReapWorkloadInput(_Model):
    """Release everything held for ``workload`` if it still belongs to ``owner`` (the
    reaper found that owner's run over); a newer owner's reservations are never touched."""

    workload: str
    owner: int
    reason: str = ""


class ReapWorkloadResult(_Model):
    workload: str
    reaped: bool  # False: nothing held any more, or a newer owner holds it now
    #: node -> replicas released there.
    replicas: dict[str, int] = Field(default_factory=dict)
    freed: Resources = Field(default_factory=Resources)
    woken: list[str] = Field(default_factory=list)  # pending workloads the room may fit


class RevokedCertificate(_Model):
    """A certificate no gateway or front may accept any more: its node was removed, or
    its user revoked."""

    serial: str  # hex, as :func:`cloudless.pki.cert_serial` gives it
    node_id: str = ""  # the removed node's, or "" for a user's certificate
    not_after: datetime  # kept until then: an expired certificate is refused anyway
    revoked_at: datetime
    user: str = ""  # the revoked user's name, or "" for a node's certificate


class UserRecord(_Model):
    """A person with a certificate (``cloudlessctl user create``): role and serials."""

    name: str
    role: str  # an AccessRole: viewer, operator or admin
    #: serial -> expiry of every certificate issued to the user (until they expire).
    certificates: dict[str, datetime] = Field(default_factory=dict)
    created_at: datetime
    revoked_at: datetime | None = None


class RegisterUserInput(_Model):
    """Record a user's new certificate (issued by an admin holding the cluster CA)."""

    name: str
    role: str
    serial: str
    not_after: datetime


class RevokeUserInput(_Model):
    name: str
    reason: str = ""


class RevokeUserResult(_Model):
    found: bool
    certificates: int = 0  # unexpired certificates revoked now


class RemoveNodeInput(_Model):
    """Retire a node for good: release every reservation on it, forget it and revoke its
    certificate. ``node/<id>`` sends this once its workloads were told."""

    node_id: str
    certificate_serial: str = ""
    certificate_not_after: datetime | None = None
    reason: str = ""
    #: The node's other unexpired certificates (earlier ones a renewal replaced), revoked
    #: with it: serial -> expiry.
    more_certificates: dict[str, datetime] = Field(default_factory=dict)


class RemoveNodeResult(_Model):
    removed: bool  # False: the ledger did not list the node
    #: workload -> replicas whose reservations were still on the node (released now).
    released: dict[str, int] = Field(default_factory=dict)
    revoked: bool = False


class LedgerOp(_Model):
    """One ledger write inside a batch (exactly one field set).

    A coordinator funnels its concurrent ledger writes into one ``apply_batch`` Update at a
    time: Temporal allows at most 10 in-flight Updates per workflow, and one task applying
    many writes costs the ledger far fewer events and tasks than one Update each.
    """

    upsert: UpsertNodeInput | None = None
    commit: CommitPlanInput | None = None
    await_capacity: AwaitCapacityInput | None = None
    #: An enrollment token's single use; in the batch so that an enrollment burst does not
    #: need one Update (of at most 10 in flight) per node.
    consume_token: ConsumeTokenInput | None = None
    claim: ClaimWorkloadInput | None = None
    reap: ReapWorkloadInput | None = None
    remove_node: RemoveNodeInput | None = None


class LedgerOpResult(_Model):
    """The outcome of one op; ``error_type`` (e.g. ``PlanRejected``) and ``error`` say why
    it was refused, exactly as the single-op Update's validator would have."""

    upsert: UpsertNodeResult | None = None
    commit: CommitPlanResult | None = None
    registered: bool | None = None
    consumed: bool | None = None
    claimed: ClaimWorkloadResult | None = None
    reaped: ReapWorkloadResult | None = None
    removed: RemoveNodeResult | None = None
    error_type: str = ""
    error: str = ""


class LedgerBatch(_Model):
    ops: list[LedgerOp]


class LedgerBatchResult(_Model):
    results: list[LedgerOpResult]
    version: int


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
