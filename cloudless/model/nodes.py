"""``node/<id>``: a node's record and status, its signals and its activities' payloads."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from cloudless.model._base import _Model
from cloudless.vocabulary import (
    AdminAction,
    AdminState,
    NodeHealth,
    NodeState,
    Resources,
)


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
    #: The node certificate's serial (hex): what ``node remove`` revokes.
    certificate_serial: str = ""
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
    health: NodeHealth = NodeHealth.READY
    admin: AdminState = AdminState.NONE
    transitions: list[NodeTransition] = Field(default_factory=list)
    #: Times the node went Suspect or Offline recently; drives damping and reliability.
    churn: list[datetime] = Field(default_factory=list)
    first_seen: datetime | None = None
    offline_seconds: float = 0.0
    down_since: datetime | None = None
    gateway: str = ""
    #: Epoch of the heartbeat stream ``gateway`` holds (0: unknown); older streams are
    #: ignored, so a late signal from a gateway the node moved off cannot win.
    stream_epoch: int = 0
    #: Set while the node is away after a graceful close (agent restart): not churn, and
    #: not downtime, unless it ends Offline.
    planned_since: datetime | None = None
    #: Flap damping holds a returning node unhealthy until then.
    held_until: datetime | None = None


class LivenessSignal(_Model):
    """A health change observed by a gateway's liveness table."""

    health: NodeHealth
    reason: str
    at: datetime
    gateway: str
    #: The agent closed its stream on purpose (restart, upgrade): a planned absence.
    graceful: bool = False
    #: The stream's epoch, chosen by the agent and only growing (0: unknown).
    epoch: int = 0


class NodeAdminInput(_Model):
    action: AdminAction
    reason: str = ""


class ReconcileNodeInput(_Model):
    node_id: str
    address: str
    cluster: str
    #: First enrollment of this node: it was never Ready, so the ledger holds no
    #: placements on it and the (busy) ledger need not be queried.
    fresh: bool = False


class ReconcileNodeResult(_Model):
    kept: int
    stopped: list[str] = Field(default_factory=list)
    missing: dict[str, list[str]] = Field(default_factory=dict)  # workload -> replica ids
    #: Stopped because they ran an older placement epoch than the control plane recorded.
    stale_epochs: list[str] = Field(default_factory=list)
    #: Workloads whose workflow cannot answer (its workflow task fails), with why: their
    #: replicas here are left as they are, since nothing can say where they belong.
    unanswered: dict[str, str] = Field(default_factory=dict)


class ReconcileRequest(_Model):
    """Stops of these replicas on the node were given up (the agent could not be reached):
    the node reconciles now if it is Ready, or on its way back to Ready anyway."""

    node_id: str
    reason: str
    replica_ids: list[str] = Field(default_factory=list)


class RetireNodeInput(_Model):
    """Stop whatever a removed node's agent still runs (its replicas were replaced)."""

    node_id: str
    address: str


class NotifyWorkloadsInput(_Model):
    node_id: str
    reason: str
    evacuate: bool = False


class NodeWorkflowInput(_Model):
    cluster: str
    record: NodeRecord | None = None
    carried: NodeStatus | None = None  # state carried across continue-as-new
    #: Continue as new past this many history events (0: the workflow's threshold). Tests
    #: set it low to exercise continue-as-new; it is passed on to the next run.
    max_history_events: int = 0


class EnrollSignal(_Model):
    record: NodeRecord
