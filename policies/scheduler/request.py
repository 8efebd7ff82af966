"""What a placement asks for, as plain frozen values.

These are the scheduler's own types, not the manifest models: the control plane translates
a workload spec into a :class:`PlacementRequest` so that the scheduler stays free of
pydantic, I/O and the rest of Cloudless. Field names follow the product spec (CLD-REQ-020)
and Kubernetes where users already know them (``max_skew``, ``when_unsatisfiable``,
``match_expressions``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Literal, TypeAlias

from cloudless.vocabulary import (
    DEFAULT_WEIGHTS,
    SCORE_FACTORS,
    Resources,
)

Strategy: TypeAlias = Literal["binpack", "spread", "zone-spread"]
TopologyKey: TypeAlias = Literal["node", "zone", "region"]
Operator: TypeAlias = Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
TaintEffect: TypeAlias = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
WhenUnsatisfiable: TypeAlias = Literal["DoNotSchedule", "ScheduleAnyway"]
SampleSize: TypeAlias = int | Literal["auto"] | None

STRATEGIES: tuple[Strategy, ...] = ("binpack", "spread", "zone-spread")
TOPOLOGY_KEYS: tuple[TopologyKey, ...] = ("node", "zone", "region")


@dataclass(frozen=True)
class Taint:
    """A node repels replicas that do not tolerate this (key, value, effect)."""

    key: str
    value: str = ""
    effect: TaintEffect = "NoSchedule"


@dataclass(frozen=True)
class Toleration:
    """Kubernetes semantics: empty key with ``Exists`` tolerates every taint; no effect = any."""

    key: str = ""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: TaintEffect | None = None

    def tolerates(self, taint: Taint) -> bool:
        if self.effect is not None and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return self.key == "" or self.key == taint.key
        return self.key == taint.key and self.value == taint.value


@dataclass(frozen=True)
class MatchExpression:
    """One label test. ``NotIn`` and ``DoesNotExist`` hold when the label is absent;
    ``Gt``/``Lt`` compare integer label values and fail on absent or non-integer labels."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"{self.operator} on {self.key!r} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"{self.operator} on {self.key!r} takes no values")
        if self.operator in ("Gt", "Lt") and (
            len(self.values) != 1 or _as_int(self.values[0]) is None
        ):
            raise ValueError(f"{self.operator} on {self.key!r} needs exactly one integer")

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        op = self.operator
        if op == "In":
            return value is not None and value in self.values
        if op == "NotIn":
            return value is None or value not in self.values
        if op == "Exists":
            return value is not None
        if op == "DoesNotExist":
            return value is None
        number = _as_int(value) if value is not None else None
        if number is None:
            return False
        bound = int(self.values[0])
        return number > bound if op == "Gt" else number < bound


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class LabelSelector:
    """``match_labels`` and ``match_expressions`` ANDed; the empty selector matches everything."""

    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[MatchExpression, ...] = ()

    def expressions(self) -> tuple[MatchExpression, ...]:
        pinned = tuple(MatchExpression(k, "In", (v,)) for k, v in sorted(self.match_labels.items()))
        return pinned + self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            e.matches(labels) for e in self.match_expressions
        )


@dataclass(frozen=True)
class NodeSelectorTerm:
    """Expressions on node labels, ANDed."""

    match_expressions: tuple[MatchExpression, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(e.matches(labels) for e in self.match_expressions)


@dataclass(frozen=True)
class PreferredNodeTerm:
    weight: int
    term: NodeSelectorTerm

    def __post_init__(self) -> None:
        _check_weight(self.weight)


@dataclass(frozen=True)
class NodeAffinity:
    """``required`` terms are ORed (a node must match one); ``preferred`` add their weights."""

    required: tuple[NodeSelectorTerm, ...] = ()
    preferred: tuple[PreferredNodeTerm, ...] = ()


@dataclass(frozen=True)
class WorkloadAffinityTerm:
    """Replicas selected by ``selector`` within the same ``topology_key`` domain as the node."""

    selector: LabelSelector
    topology_key: TopologyKey = "node"


@dataclass(frozen=True)
class WeightedWorkloadAffinityTerm:
    weight: int
    term: WorkloadAffinityTerm

    def __post_init__(self) -> None:
        _check_weight(self.weight)


@dataclass(frozen=True)
class WorkloadAffinity:
    """Used for both affinity and anti-affinity; the request field says which."""

    required: tuple[WorkloadAffinityTerm, ...] = ()
    preferred: tuple[WeightedWorkloadAffinityTerm, ...] = ()


@dataclass(frozen=True)
class SpreadConstraint:
    """Topology spread. ``selector=None`` counts this workload's own replicas.

    Skew of a domain = its matching replicas (+1 for the one being placed) minus the minimum
    over eligible domains; ``DoNotSchedule`` filters nodes whose skew would exceed
    ``max_skew``, ``ScheduleAnyway`` only lowers their score.
    """

    max_skew: int = 1
    topology_key: TopologyKey = "zone"
    when_unsatisfiable: WhenUnsatisfiable = "DoNotSchedule"
    selector: LabelSelector | None = None

    def __post_init__(self) -> None:
        if self.max_skew < 1:
            raise ValueError(f"max_skew must be >= 1, got {self.max_skew}")


@dataclass(frozen=True)
class Locality:
    """Where the replica would like to be: near data or users. A preference, never a filter.

    A node scores 1 when its zone is listed or it carries every listed label, 0.5 when its
    region is listed or holds a listed zone, 0 otherwise.
    """

    zones: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (self.zones or self.regions or self.labels)


@dataclass(frozen=True)
class Weights:
    """Relative weight of each score factor (CLD-REQ-021 defaults for the first five).

    The total is ``100 * sum(w * f) / sum(w)`` over the factors that apply to the request,
    so weights need not sum to 1 and a factor with nothing to say (no locality preference,
    no preferred terms) does not dilute the others.
    """

    locality: float = DEFAULT_WEIGHTS["locality"]
    reliability: float = DEFAULT_WEIGHTS["reliability"]
    cost: float = DEFAULT_WEIGHTS["cost"]
    utilization: float = DEFAULT_WEIGHTS["utilization"]
    network: float = DEFAULT_WEIGHTS["network"]
    node_affinity: float = DEFAULT_WEIGHTS["node_affinity"]
    workload_affinity: float = DEFAULT_WEIGHTS["workload_affinity"]
    topology_spread: float = DEFAULT_WEIGHTS["topology_spread"]
    taint_toleration: float = DEFAULT_WEIGHTS["taint_toleration"]
    replica_spread: float = DEFAULT_WEIGHTS["replica_spread"]

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"weight {f.name} must be a finite number >= 0, got {value}")

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


#: Factor names in display order (the vocabulary's); every one is a field of :class:`Weights`.
FACTORS: tuple[str, ...] = SCORE_FACTORS
if tuple(f.name for f in fields(Weights)) != FACTORS:  # pragma: no cover - a typo guard
    raise ImportError("Weights' fields must be cloudless.vocabulary.SCORE_FACTORS, in order")


@dataclass(frozen=True)
class SchedulerConfig:
    """Per-cluster settings; a request may override ``weights`` and the sample size.

    The automatic sample scores ``max(sample_min, sample_percent% of feasible)`` nodes, the
    same shape as the Kubernetes ``percentageOfNodesToScore`` floor of 100 nodes.
    """

    weights: Weights = field(default_factory=Weights)
    sample_min: int = 100
    sample_percent: float = 5.0
    top_k: int = 3

    def __post_init__(self) -> None:
        if self.sample_min < 1:
            raise ValueError("sample_min must be >= 1")
        if not 0 < self.sample_percent <= 100:
            raise ValueError("sample_percent must be in (0, 100]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")


@dataclass(frozen=True)
class PlacementRequest:
    """``count`` identical replicas of one workload and every constraint on where they go.

    ``zones``/``regions``/``node_selector``/``node_affinity.required`` restrict nodes;
    ``locality`` only prefers. ``workload_key`` names the workload in the index's replica
    counts (e.g. ``namespace/name``) and ``workload_labels`` are what selectors match.

    ``replicas`` and ``min_available`` are the workload's desired totals (``count`` is only
    what this decision places, e.g. one replacement); they set the per-node cap of
    :meth:`node_cap` and whether the default replica spreading applies. ``replicas=None``
    (totals unknown, as in a bare scheduler call) leaves only ``spread``'s cap: a request
    never means something else because of how many replicas one decision places.
    """

    count: int = 1
    resources: Resources = field(default_factory=Resources)
    workload_key: str = ""
    workload_labels: Mapping[str, str] = field(default_factory=dict)
    runtime: str = "docker"
    runtime_class: str | None = None
    zones: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    node_affinity: NodeAffinity = field(default_factory=NodeAffinity)
    workload_affinity: WorkloadAffinity = field(default_factory=WorkloadAffinity)
    workload_anti_affinity: WorkloadAffinity = field(default_factory=WorkloadAffinity)
    spread: tuple[SpreadConstraint, ...] = ()
    locality: Locality = field(default_factory=Locality)
    strategy: Strategy = "binpack"
    weights: Weights | None = None
    priority: int = 0
    sample_size: SampleSize = "auto"
    #: Nodes ruled out for this request: where the replicas being placed crash-looped
    #: recently. A hard filter here; the caller decides again without it if nothing fits.
    avoid_nodes: frozenset[str] = frozenset()
    replicas: int | None = None
    min_available: int | None = None

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        for name in ("replicas", "min_available"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if isinstance(self.sample_size, int) and self.sample_size < 1:
            raise ValueError("sample_size must be >= 1, 'auto' or None (full scan)")

    def tolerates(self, taint: Taint) -> bool:
        return any(t.tolerates(taint) for t in self.tolerations)

    @property
    def multi_replica(self) -> bool:
        """Whether the workload is known to want more than one replica."""
        return self.replicas is not None and self.replicas > 1

    def node_cap(self) -> int | None:
        """Most replicas of this workload one node should hold while others have room.

        ``spread``: 1, so every feasible node gets one before any gets a second. Otherwise
        ``replicas - minAvailable`` (at least 1), so losing one node never takes more than
        the disruption budget (CLD-REQ-030); an unset ``minAvailable`` counts as 1, so no
        multi-replica workload lands on one node alone. ``None`` when it cannot bind (a
        single replica, ``minAvailable: 0``, or totals unknown). Never a reason to stay
        Pending: when no feasible node is under the cap, the nodes holding the fewest
        replicas are allowed (see ``decide.py``).
        """
        if self.strategy == "spread":
            return 1
        if self.replicas is None or self.replicas <= 1:
            return None
        keep = 1 if self.min_available is None else self.min_available
        cap = max(1, self.replicas - keep)
        return None if cap >= self.replicas else cap


def _check_weight(weight: int) -> None:
    if not 1 <= weight <= 100:
        raise ValueError(f"preferred term weight must be in 1..100, got {weight}")
