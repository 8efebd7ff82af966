"""Placement: the constraints on, and preferences for, the nodes that run a workload's
replicas (node selectors, zones and regions, tolerations, node and workload (anti-)affinity,
topology spread, locality and per-workload score weights), in the scheduler's
Kubernetes-shaped vocabulary.
"""

from __future__ import annotations

import math
from typing import Annotated, Final, Literal, TypeAlias

from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, StrictInt

from cloudless.spec._base import _Model, _Problem, _Raw
from cloudless.spec._messages import _problem, _show
from cloudless.spec._scalars import _between
from cloudless.spec.names import DnsLabel, LabelKey, Labels

PlacementStrategy: TypeAlias = Literal["binpack", "spread", "zone-spread"]


def _topology_key(value: object) -> object:
    """Accept the Kubernetes well-known topology labels as synonyms of node/zone/region."""
    return _K8S_TOPOLOGY.get(value, value) if isinstance(value, str) else value


_K8S_TOPOLOGY: Final = {
    "kubernetes.io/hostname": "node",
    "hostname": "node",
    "topology.kubernetes.io/zone": "zone",
    "topology.kubernetes.io/region": "region",
}
TopologyKeyName: TypeAlias = Annotated[
    Literal["node", "zone", "region"], BeforeValidator(_topology_key)
]
TaintEffect: TypeAlias = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
SelectorOperator: TypeAlias = Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
TermWeight = Annotated[StrictInt, AfterValidator(_between(1, 100, 50))]
MaxSkew = Annotated[StrictInt, AfterValidator(_between(1, 1000, 1))]


def _check_score_weight(value: float) -> float:
    if math.isfinite(value) and 0 <= value <= 100:
        return value
    raise _problem(
        f"must be a number from 0 to 100, got {_show(value)}",
        "use a relative weight such as 0.3 (0 turns the factor off)",
    )


ScoreWeight = Annotated[float, AfterValidator(_check_score_weight)]


def _unique_strings(raw: _Raw, field: str, what: str) -> list[_Problem]:
    values = raw.get(field)
    problems: list[_Problem] = []
    if isinstance(values, list | tuple):
        seen: dict[str, int] = {}
        for index, value in enumerate(values):
            if not isinstance(value, str):
                continue
            if value in seen:
                problems.append(
                    _Problem(
                        (raw.key(field), index),
                        f"must be unique; {value!r} is already listed as "
                        f"{raw.key(field)}[{seen[value]}]",
                        f"remove the duplicate {what}",
                        value,
                    )
                )
            else:
                seen[value] = index
    return problems


class MatchExpression(_Model):
    """One label test, Kubernetes semantics: ``NotIn``/``DoesNotExist`` hold on an absent
    label; ``Gt``/``Lt`` compare one integer and fail on absent or non-integer labels."""

    key: LabelKey = Field(examples=["disk"])
    operator: SelectorOperator = Field(examples=["In"])
    values: tuple[str, ...] = Field((), examples=[["ssd"]])

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        op = raw.get("operator")
        values = raw.get("values", ())
        if not isinstance(values, list | tuple):
            return []
        where = (raw.key("values"),)
        if op in ("In", "NotIn") and not values:
            return [_Problem(where, f"must list at least one value for {op}",
                             "add `values: [ssd]` or use operator Exists", values)]  # fmt: skip
        if op in ("Exists", "DoesNotExist") and values:
            return [_Problem(where, f"must be empty for {op}", "remove values", values)]
        if op in ("Gt", "Lt") and (
            len(values) != 1 or not isinstance(values[0], str) or not _is_int(values[0])
        ):
            return [_Problem(where, f"must be exactly one integer (as a string) for {op}",
                             'write e.g. `values: ["4"]`', values)]  # fmt: skip
        return []


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


class LabelSelector(_Model):
    """Selects workloads by their labels: ``matchLabels`` and ``matchExpressions`` ANDed."""

    match_labels: Labels = Field(default_factory=dict, examples=[{"app": "db"}])
    match_expressions: tuple[MatchExpression, ...] = Field(
        (), examples=[[{"key": "tier", "operator": "In", "values": ["cache"]}]]
    )


class NodeSelectorTerm(_Model):
    """Expressions on node labels, ANDed."""

    match_expressions: tuple[MatchExpression, ...] = Field(
        examples=[[{"key": "disk", "operator": "In", "values": ["ssd"]}]]
    )

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        exprs = raw.get("match_expressions")
        if isinstance(exprs, list | tuple) and not exprs:
            message = "must have at least 1 expression (an empty term would match every node)"
            fix = "add e.g. `{key: disk, operator: In, values: [ssd]}`"
            return [_Problem((raw.key("match_expressions"),), message, fix, exprs)]
        return []


class PreferredSchedulingTerm(_Model):
    """A node-affinity preference: nodes matching ``preference`` gain ``weight`` (1-100)."""

    weight: TermWeight = Field(examples=[50])
    preference: NodeSelectorTerm = Field(
        examples=[{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]
    )


class NodeAffinity(_Model):
    """``required`` terms are ORed (a node must match one); ``preferred`` add weights."""

    required: tuple[NodeSelectorTerm, ...] = Field(
        (), examples=[[{"matchExpressions": [{"key": "arch", "operator": "In", "values": ["x"]}]}]]
    )
    preferred: tuple[PreferredSchedulingTerm, ...] = Field((), examples=[[]])


class WorkloadAffinityTerm(_Model):
    """Replicas selected by ``labelSelector`` in the same ``topologyKey`` domain
    (``node``, ``zone`` or ``region``; the Kubernetes well-known labels are accepted)."""

    label_selector: LabelSelector = Field(examples=[{"matchLabels": {"app": "db"}}])
    topology_key: TopologyKeyName = Field("node", examples=["zone"])


class WeightedWorkloadAffinityTerm(_Model):
    weight: TermWeight = Field(examples=[50])
    term: WorkloadAffinityTerm = Field(
        validation_alias=AliasChoices("term", "podAffinityTerm", "pod_affinity_term"),
        examples=[{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}],
    )


class WorkloadAffinity(_Model):
    """Used for affinity and anti-affinity alike; the field name says which."""

    required: tuple[WorkloadAffinityTerm, ...] = Field(
        (), examples=[[{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]]
    )
    preferred: tuple[WeightedWorkloadAffinityTerm, ...] = Field((), examples=[[]])


class Toleration(_Model):
    """Lets replicas onto nodes with a matching taint. An empty ``key`` with ``Exists``
    tolerates every taint; no ``effect`` matches every effect."""

    key: str = Field("", examples=["dedicated"])
    operator: Literal["Equal", "Exists"] = Field("Equal", examples=["Equal"])
    value: str = Field("", examples=["ml"])
    effect: TaintEffect | None = Field(None, examples=["NoSchedule"])

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        op = raw.get("operator", "Equal")
        if op == "Exists" and raw.get("value", "") not in ("", None):
            fix = "remove value, or use `operator: Equal`"
            return [_Problem((raw.key("value"),), "must be empty when operator is Exists", fix,
                             raw.get("value"))]  # fmt: skip
        if op == "Equal" and raw.get("key", "") == "":
            return [_Problem((raw.key("key"),), "is required when operator is Equal",
                             "name the taint key, or use `operator: Exists` to tolerate all",
                             raw.get("key", ""))]  # fmt: skip
        return []


class TopologySpreadConstraint(_Model):
    """At most ``maxSkew`` more matching replicas in one domain than in the emptiest one."""

    max_skew: MaxSkew = Field(1, examples=[1])
    topology_key: TopologyKeyName = Field(examples=["zone"])
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = Field(
        "DoNotSchedule", examples=["DoNotSchedule"]
    )
    #: Which replicas count; by default this workload's own.
    label_selector: LabelSelector | None = Field(None, examples=[{"matchLabels": {"app": "web"}}])


class Locality(_Model):
    """Where replicas would like to run (near data or users): a preference, never a filter."""

    zones: tuple[DnsLabel, ...] = Field((), examples=[["zone-a"]])
    regions: tuple[DnsLabel, ...] = Field((), examples=[["eu-west"]])
    labels: Labels = Field(default_factory=dict, examples=[{"data": "eu"}])


class ScoreWeights(_Model):
    """Per-workload weights of the placement score's factors; unset ones keep the cluster's
    (locality 0.3, reliability 0.25, cost 0.15, utilization 0.2, network 0.1, ...)."""

    locality: ScoreWeight | None = Field(None, examples=[0.3])
    reliability: ScoreWeight | None = Field(None, examples=[0.25])
    cost: ScoreWeight | None = Field(None, examples=[0.15])
    utilization: ScoreWeight | None = Field(None, examples=[0.2])
    network: ScoreWeight | None = Field(None, examples=[0.1])
    node_affinity: ScoreWeight | None = Field(None, examples=[0.2])
    workload_affinity: ScoreWeight | None = Field(None, examples=[0.2])
    topology_spread: ScoreWeight | None = Field(None, examples=[0.2])
    taint_toleration: ScoreWeight | None = Field(None, examples=[0.1])
    replica_spread: ScoreWeight | None = Field(None, examples=[0.2])


def _empty(value: object) -> bool:
    return not value


class Placement(_Model):
    """Constraints on (and preferences for) the nodes that run the replicas.

    Fields added after ``nodeSelector``/``zones`` are left out of dumps while empty, so
    manifests that do not use them keep their spec hash.
    """

    node_selector: Labels = Field(default_factory=dict, examples=[{"disk": "ssd"}])
    zones: tuple[DnsLabel, ...] = Field((), examples=[["zone-a", "zone-b"]])
    regions: tuple[DnsLabel, ...] = Field((), exclude_if=_empty, examples=[["eu-west"]])
    tolerations: tuple[Toleration, ...] = Field(
        (),
        exclude_if=_empty,
        examples=[[{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]],
    )
    node_affinity: NodeAffinity | None = Field(None, examples=[{"required": []}])
    workload_affinity: WorkloadAffinity | None = Field(
        None,
        validation_alias=AliasChoices("workloadAffinity", "workload_affinity", "podAffinity"),
        examples=[{"preferred": []}],
    )
    workload_anti_affinity: WorkloadAffinity | None = Field(
        None,
        validation_alias=AliasChoices(
            "workloadAntiAffinity", "workload_anti_affinity", "podAntiAffinity"
        ),
        examples=[{"required": [{"labelSelector": {"matchLabels": {"app": "web"}}}]}],
    )
    topology_spread_constraints: tuple[TopologySpreadConstraint, ...] = Field(
        (), exclude_if=_empty, examples=[[{"maxSkew": 1, "topologyKey": "zone"}]]
    )
    locality: Locality | None = Field(None, examples=[{"zones": ["zone-a"]}])
    weights: ScoreWeights | None = Field(None, examples=[{"cost": 0.5}])

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        problems = [
            *_unique_strings(raw, "zones", "zone"),
            *_unique_strings(raw, "regions", "region"),
        ]
        return problems
