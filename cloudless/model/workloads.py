"""``workload/<ns>/<name>``: its state, status, updates and the signals it receives."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from cloudless.model._base import _Model
from cloudless.spec import Workload
from cloudless.vocabulary import (
    ReplicaPhase,
    Resources,
    WorkloadPhase,
)


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
    phase: ReplicaPhase  # Failed | Stopped
    exit_code: int | None = None
    message: str = ""


class ReplicaCrashed(_Model):
    """Signal to a workload: a replica crashed on its node (its agent restarts it).

    ``crashes`` is the agent's running count for the replica, so a report repeated by
    another gateway, or after a coordinator restart, adds nothing; a lower count than
    the workload knows means the agent counts afresh (it was asked to run it again).
    """

    replica_id: str
    node_id: str
    crashes: int
    exit_code: int | None = None
    reason: str = ""


class ReplicaReadiness(_Model):
    """Signal to a workload: a replica's readiness (its probes' verdict) changed."""

    replica_id: str
    node_id: str
    ready: bool
    message: str = ""  # why it is not ready, e.g. the readiness probe's last failure


class CapacityAvailable(_Model):
    """Signal to a pending workload: room may have appeared; place the pending replicas."""

    reason: str = ""


class ReplicasPreempted(_Model):
    """Signal to a workload: the ledger already released ``count`` of its replicas on
    ``node_id`` for a higher-priority one; stop them and place replacements elsewhere."""

    node_id: str
    count: int
    reason: str
    plan_id: str = ""  # the preempting plan: a repeated signal evicts nothing more


class CandidateScore(_Model):
    """One scored node from a placement decision: total 0..100 and each factor 0..1."""

    node_id: str
    score: float
    factors: dict[str, float] = Field(default_factory=dict)


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
    preempted: bool = False  # released by the ledger for a higher-priority replica: stop only
    score: float | None = None  # placement score 0..100
    candidates: list[CandidateScore] = Field(default_factory=list)  # chosen first
    #: Last readiness its agent reported (None: no report yet); see ``replica_readiness``.
    ready: bool | None = None
    ready_message: str = ""
    #: Placement epoch: the workload's counter when this record was last placed. Agents
    #: refuse older RunReplicas; a returning node stops runs older than this.
    epoch: int = 0
    #: Its allocation went back to the ledger while the record stays (a Completed replica).
    released: bool = False
    # Crash loops (``policies.reschedule``); every list is bounded by that module.
    #: When it crashed on its node (workflow clock, Unix seconds), oldest first.
    crash_times: list[float] = Field(default_factory=list)
    #: The agent's running crash count last heard (``replica_crashed`` deduplicates by it).
    crashes_reported: int = 0
    #: The latest crash's exit code and reason, as its agent reported them.
    crash_exit_code: int | None = None
    crash_reason: str = ""
    #: When its line of replicas was rescheduled (inherited from the one it replaced).
    reschedule_times: list[float] = Field(default_factory=list)
    #: Nodes its line crash-looped on recently; placement avoids them when it can.
    avoid_nodes: list[str] = Field(default_factory=list)
    #: The replica it replaced, rescheduled away from a crash loop ("" if none).
    replaces: str = ""
    #: Rescheduled: a replacement takes its place elsewhere; it goes once that is safe.
    rescheduled: bool = False
    #: Why it stays crash-looping on its node (its reschedule attempts are used up).
    crash_loop: str = ""

    @model_serializer(mode="wrap")
    def _omit_quiet_crash_fields(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Crash-loop fields still at their defaults are left out of the encoding (they
        decode back to the same defaults): most replicas never crash, and a workload's
        state carries up to 2 x MAX_REPLICAS records within its payload budget
        (``cloudless.contracts.limits``)."""
        data = handler(self)
        if isinstance(data, dict):
            for key, default in _QUIET_CRASH_FIELDS.items():
                if key in data and data[key] == default:
                    del data[key]
        return data


#: The crash-loop fields of a replica record and their defaults (see above).
_QUIET_CRASH_FIELDS: dict[str, Any] = {
    "crash_times": [],
    "crashes_reported": 0,
    "crash_exit_code": None,
    "crash_reason": "",
    "reschedule_times": [],
    "avoid_nodes": [],
    "replaces": "",
    "rescheduled": False,
    "crash_loop": "",
}


class RescheduleEvent(_Model):
    """A crash loop the workload acted on: rescheduled elsewhere, or kept where it is."""

    at: datetime
    replica_id: str
    node_id: str
    #: Crashes counted in the failure window, and the seconds from the first to the last.
    crashes: int
    over_seconds: float = 0.0
    exit_code: int | None = None
    reason: str = ""  # the latest crash's, as the agent reported it
    #: The replacement and where it was placed ("" until placed).
    replacement: str = ""
    to_node: str = ""
    #: Not rescheduled: why (e.g. the attempts within the interval are used up).
    held: str = ""


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
    #: What was applied (None only for a status made before the first apply).
    manifest: Workload | None = None
    #: The workload's placement counter (highest epoch handed out).
    epoch: int = 0
    #: The owner token its reservations carry in the ledger (0: this run's chain never
    #: claimed the workload); the reaper compares the two.
    owner: int = 0
    #: Recent crash-loop reschedules and holds, oldest first (bounded).
    reschedules: list[RescheduleEvent] = Field(default_factory=list)

    @property
    def satisfied(self) -> int:
        """Replicas that need nothing more: ready, or run to completion."""
        done = sum(1 for r in self.replicas if r.phase == ReplicaPhase.COMPLETED)
        return self.ready + done


class WorkloadWorkflowInput(_Model):
    cluster: str
    #: The first manifest of a new workload; None when ``state`` (which holds the manifest)
    #: is carried: a continue-as-new input carries the manifest once, not twice.
    manifest: Workload | None = None
    #: Everything the previous run kept (continue-as-new); None for a new workload.
    state: WorkloadState | None = None
    #: Continue as new past this many history events (0: the workflow's threshold). Tests
    #: set it low to exercise continue-as-new; it is passed on to the next run.
    max_history_events: int = 0

    @model_validator(mode="after")
    def _manifest_or_state(self) -> WorkloadWorkflowInput:
        if self.manifest is None and self.state is None:
            raise ValueError("a workload workflow needs a manifest or a carried state")
        return self

    @property
    def first_manifest(self) -> Workload:
        """The manifest the run starts from (the carried one, else the given one)."""
        if self.state is not None:
            return self.state.manifest
        assert self.manifest is not None  # the validator saw to it
        return self.manifest


class ApplyInput(_Model):
    manifest: Workload


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


class WorkloadState(_Model):
    """All of ``workload/<ns>/<name>``'s durable state, carried whole across continue-as-new.

    The ``status`` query is derived from it; nothing else outlives a run.
    """

    manifest: Workload
    #: Revision counter: 1 at the first apply, +1 on every apply/scale that changes the spec.
    generation: int = 1
    replicas: list[ReplicaRecord] = Field(default_factory=list)  # oldest first
    message: str = ""
    #: Retry delay for Pending/Failed replicas (``policies.reconcile``); 0: none.
    backoff_seconds: float = 0.0
    #: Placement counter: the highest epoch handed out; only grows.
    epoch: int = 0
    #: An ``apply`` was received (the next one is not the workload's creation).
    applied: bool = False
    #: A ``delete`` was accepted: tear down and finish.
    deleting: bool = False
    #: Recent preempting plans (``replicas_preempted``), so a repeated signal evicts nothing.
    preempted_by: list[str] = Field(default_factory=list)
    #: The owner token the ledger gave this workflow's first run when it claimed the
    #: workload (``claim_workload``); every plan carries it, so a plan of a run that is over
    #: is refused and what such a run left behind is released. 0: never claimed (a run
    #: started before claims existed).
    owner: int = 0
    #: Recent crash-loop reschedules and holds, oldest first (bounded; ``describe``).
    reschedules: list[RescheduleEvent] = Field(default_factory=list)
    #: When a crash-looping replica needs another look: its reschedule delay ends, or a
    #: reschedule attempt frees up (workflow clock, Unix seconds; 0: none).
    wake_at: float = 0.0
    #: Why the last pass could not make progress (an activity failed for good); "" once a
    #: pass gets through. The workload is Stuck meanwhile and retries after its backoff.
    blocked: str = ""
    #: This run only tears down what an ended run of the workload left (a stuck run that
    #: ``delete`` terminated): it claims the workload in the ledger (freeing what the ended
    #: run held), stops the replicas the agents still run, and completes. ``manifest`` is a
    #: stand-in that is never shown.
    orphans: bool = False


class LeftoversInput(_Model):
    """Find what an ended run of workload ``namespace/name`` left on the cluster."""

    namespace: str
    name: str


class Leftovers(_Model):
    """What ended runs of a workload left running on the agents: records to stop, marked
    ``released`` (the teardown run's claim frees their reservations in the ledger)."""

    replicas: list[ReplicaRecord] = Field(default_factory=list)
    #: Nodes holding its allocations whose agent did not answer (they reconcile on return).
    unreachable: list[str] = Field(default_factory=list)
