"""The cluster's vocabulary: every state, phase, kind and quantity name, defined once.

This module is the bottom of the dependency graph. It imports only the standard library,
so that ``policies`` (pure decision logic), the workflows, the activities, the agent and
the CLI all speak the same words: a rename is one edit here. Payload models
(:mod:`cloudless.model`) and the scheduler (:mod:`policies.scheduler`) build on it.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable
from dataclasses import dataclass, fields

# --------------------------------------------------------------------------- nodes


class NodeState(enum.StrEnum):
    """The state ``node/<id>`` shows: its health, unless an operator's admin state applies.

    Only ``Ready`` accepts new replicas.
    """

    JOINING = "Joining"
    READY = "Ready"
    SUSPECT = "Suspect"
    OFFLINE = "Offline"
    DRAINING = "Draining"
    DRAINED = "Drained"
    CORDONED = "Cordoned"
    LEFT = "Left"
    #: Retired for good by an operator (``cloudlessctl node remove``): terminal.
    REMOVED = "Removed"


class NodeHealth(enum.StrEnum):
    """What heartbeats say about a node (the liveness half of its state)."""

    JOINING = "Joining"
    READY = "Ready"
    SUSPECT = "Suspect"
    OFFLINE = "Offline"


class AdminState(enum.StrEnum):
    """What operators set on a node (the other half of its state); ``NONE``: nothing."""

    NONE = ""
    CORDONED = "Cordoned"
    DRAINING = "Draining"
    DRAINED = "Drained"
    REMOVED = "Removed"


class AccessRole(enum.StrEnum):
    """What a person's certificate lets them do, each role including the one before:
    viewers read; operators also apply, scale and delete workloads and cordon, drain and
    remove nodes; admins also manage users, secrets, tokens and scheduler settings.
    (Machines have the roles ``node`` and ``coordinator``, see ``cloudless.pki``.)"""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _ACCESS_RANK[self]

    def includes(self, other: AccessRole) -> bool:
        return self.rank >= other.rank


_ACCESS_RANK = {AccessRole.VIEWER: 0, AccessRole.OPERATOR: 1, AccessRole.ADMIN: 2}


class AdminAction(enum.StrEnum):
    """An operator's command to a node."""

    CORDON = "cordon"
    UNCORDON = "uncordon"
    DRAIN = "drain"
    #: Retire the node for good: its replicas are replaced elsewhere, its reservations
    #: freed, its certificate revoked, and ``node/<id>`` ends.
    REMOVE = "remove"


class NodeEventKind(enum.StrEnum):
    """What ``node/<id>`` queues for its main loop."""

    ENROLL = "enroll"
    LIVENESS = "liveness"
    ADMIN = "admin"
    FACTS = "facts"
    RECONCILE = "reconcile"


# --------------------------------------------------------------------------- replicas


class RuntimeName(enum.StrEnum):
    """The runtime drivers an agent may offer (``agent.runtime.registry`` registers one
    driver per name; a manifest's ``runtime`` is one of these)."""

    DOCKER = "docker"
    EXEC = "exec"


#: Every runtime name.
RUNTIMES: tuple[str, ...] = tuple(r.value for r in RuntimeName)


class ReplicaPhase(enum.StrEnum):
    """A replica's lifecycle phase, as a runtime driver observes it and as its workload
    tracks it."""

    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    FAILED = "Failed"
    STOPPED = "Stopped"
    #: Exited 0 under restartPolicy Never/OnFailure: done, never replaced (workload only).
    COMPLETED = "Completed"


class DelayFunction(enum.StrEnum):
    """How the wait before each further reschedule of a crash-looping replica grows
    (``spec.reschedule.delayFunction``; Nomad's ``delay_function``)."""

    CONSTANT = "constant"
    EXPONENTIAL = "exponential"
    FIBONACCI = "fibonacci"


class WorkloadPhase(enum.StrEnum):
    """A workload's phase, derived from its replicas (``describe workload``, search)."""

    PROGRESSING = "Progressing"
    AVAILABLE = "Available"
    #: Every desired replica ran to completion (exit 0, restartPolicy Never/OnFailure).
    COMPLETED = "Completed"
    DEGRADED = "Degraded"
    PENDING = "Pending"
    DELETING = "Deleting"
    DELETED = "Deleted"
    #: It cannot make progress: an activity failed for good (the workflow says so), or its
    #: workflow task fails on every attempt (the client reads that from Temporal). The
    #: message says why; ``delete`` still works.
    STUCK = "Stuck"
    #: Its workflow did not answer (no coordinator polling, or a timeout); nothing of its
    #: state is known.
    UNKNOWN = "Unknown"


# --------------------------------------------------------------------------- resources

#: Resource dimensions in the scheduler's order, and the names messages use for them.
RESOURCE_FIELDS: tuple[str, ...] = (
    "cpu_millis",
    "memory_bytes",
    "storage_bytes",
    "gpu",
    "bandwidth_bps",
)
RESOURCE_NAMES: tuple[str, ...] = ("cpu", "memory", "storage", "gpu", "bandwidth")


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of every schedulable dimension: capacity, requests, allocations, deltas.

    ``gpu`` and ``bandwidth_bps`` default to 0, so a node that does not advertise them
    simply has none and a replica that does not ask for them never needs them. Amounts may
    be negative while they are deltas; :meth:`clamped` and :meth:`check_non_negative` are
    for the places where only a non-negative amount makes sense.
    """

    cpu_millis: int = 0
    memory_bytes: int = 0
    storage_bytes: int = 0
    gpu: int = 0
    bandwidth_bps: int = 0

    @classmethod
    def of(cls, values: tuple[int, ...] | list[int]) -> Resources:
        """From values in :data:`RESOURCE_FIELDS` order (missing trailing ones are 0)."""
        return cls(*(int(v) for v in values))

    def as_tuple(self) -> tuple[int, ...]:
        return (
            self.cpu_millis,
            self.memory_bytes,
            self.storage_bytes,
            self.gpu,
            self.bandwidth_bps,
        )

    def nonzero(self) -> dict[str, int]:
        """The dimensions that are not 0, by field name (a compact, JSON-able form)."""
        return {f: v for f, v in zip(RESOURCE_FIELDS, self.as_tuple(), strict=True) if v}

    def _zip(self, other: Resources, op: Callable[[int, int], int]) -> Resources:
        return Resources.of(
            [op(a, b) for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)]
        )

    def __add__(self, other: Resources) -> Resources:
        return self._zip(other, operator.add)

    def __sub__(self, other: Resources) -> Resources:
        return self._zip(other, operator.sub)

    def scaled(self, n: int) -> Resources:
        return Resources.of([v * n for v in self.as_tuple()])

    def clamped(self) -> Resources:
        """Every dimension at least 0 (a double release must not drive totals negative)."""
        return Resources.of([max(0, v) for v in self.as_tuple()])

    def check_non_negative(self) -> Resources:
        """``self``, or ``ValueError`` naming the first negative dimension."""
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be >= 0, got {getattr(self, f.name)}")
        return self

    def fits_within(self, other: Resources) -> bool:
        """Whether every dimension of ``self`` is at most the same dimension of ``other``."""
        return all(a <= b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True))

    fits_in = fits_within

    def over(self, capacity: Resources) -> list[str]:
        """Names of the dimensions where ``self`` exceeds ``capacity``."""
        return [
            name
            for a, b, name in zip(self.as_tuple(), capacity.as_tuple(), RESOURCE_NAMES, strict=True)
            if a > b
        ]


# --------------------------------------------------------------------------- scheduling

#: The score factors a cluster may weigh, with their default weights (CLD-REQ-021 for the
#: first five), in display order.
DEFAULT_WEIGHTS: dict[str, float] = {
    "locality": 0.3,
    "reliability": 0.25,
    "cost": 0.15,
    "utilization": 0.2,
    "network": 0.1,
    "node_affinity": 0.2,
    "workload_affinity": 0.2,
    "topology_spread": 0.2,
    "taint_toleration": 0.1,
    # Fewer of this workload's own replicas on the node and in its zone (the default
    # spreading of a multi-replica workload without spread constraints of its own).
    "replica_spread": 0.2,
}
SCORE_FACTORS: tuple[str, ...] = tuple(DEFAULT_WEIGHTS)

__all__ = [
    "DEFAULT_WEIGHTS",
    "RESOURCE_FIELDS",
    "RESOURCE_NAMES",
    "RUNTIMES",
    "SCORE_FACTORS",
    "AdminAction",
    "AdminState",
    "NodeEventKind",
    "NodeHealth",
    "NodeState",
    "ReplicaPhase",
    "Resources",
    "RuntimeName",
    "WorkloadPhase",
]
