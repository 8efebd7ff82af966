"""Scheduling fields of the manifest: tolerations, node affinity, workload (anti-)affinity,
topology spread, locality, strategies, priority and score weights — accepted shapes, the
Kubernetes synonyms, errors with path and fix, and spec-hash stability for manifests that
do not use them."""

from __future__ import annotations

from typing import Any

import pytest

from cloudless.spec import parse_workload
from tests.unit.test_spec import issues_of, minimal, put

PL = "spec.placement"
IN_SSD = {"key": "disk", "operator": "In", "values": ["ssd"]}
SELECT_WEB = {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}


def full_placement() -> dict[str, Any]:
    return {
        "nodeSelector": {"tier": "edge"},
        "zones": ["zone-a"],
        "regions": ["eu-west"],
        "tolerations": [
            {"key": "dedicated", "value": "ml", "effect": "NoSchedule"},
            {"operator": "Exists"},
        ],
        "nodeAffinity": {
            "required": [{"matchExpressions": [IN_SSD]}],
            "preferred": [{"weight": 20, "preference": {"matchExpressions": [IN_SSD]}}],
        },
        "workloadAffinity": {"preferred": [{"weight": 5, "term": SELECT_WEB}]},
        "workloadAntiAffinity": {"required": [SELECT_WEB]},
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}
        ],
        "locality": {"zones": ["zone-a"], "regions": ["eu-west"], "labels": {"data": "eu"}},
        "weights": {"locality": 0.5, "cost": 0},
    }


def test_full_placement_parses_and_round_trips() -> None:
    m = put(minimal(), PL, full_placement())
    m = put(m, "spec.strategy", "zone-spread")
    m = put(m, "spec.priorityClassName", "high")
    w = parse_workload(m)
    p = w.spec.placement
    assert p.tolerations[1].operator == "Exists" and p.tolerations[1].key == ""
    assert p.node_affinity is not None and p.node_affinity.preferred[0].weight == 20
    assert p.workload_anti_affinity is not None
    assert p.workload_anti_affinity.required[0].topology_key == "zone"
    assert p.weights is not None and p.weights.locality == 0.5 and p.weights.network is None
    assert w.spec.effective_priority == 1000 and w.spec.strategy == "zone-spread"
    again = parse_workload(w.to_manifest())
    assert again == w and again.spec_hash() == w.spec_hash()


def test_kubernetes_spellings_are_accepted() -> None:
    m = put(
        minimal(),
        PL,
        {
            "podAntiAffinity": {
                "required": [
                    {"labelSelector": {"matchLabels": {"app": "web"}},
                     "topologyKey": "kubernetes.io/hostname"}
                ],
                "preferred": [
                    {"weight": 1, "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {"app": "web"}},
                        "topologyKey": "topology.kubernetes.io/zone"}}
                ],
            },
            "topologySpreadConstraints": [{"topologyKey": "topology.kubernetes.io/region"}],
        },
    )  # fmt: skip
    p = parse_workload(m).spec.placement
    assert p.workload_anti_affinity is not None
    assert p.workload_anti_affinity.required[0].topology_key == "node"
    assert p.workload_anti_affinity.preferred[0].term.topology_key == "zone"
    assert p.topology_spread_constraints[0].topology_key == "region"
    assert p.topology_spread_constraints[0].max_skew == 1


def test_priority_defaults_and_values() -> None:
    assert parse_workload(minimal()).spec.effective_priority == 0
    assert parse_workload(put(minimal(), "spec.priority", -5)).spec.effective_priority == -5
    low = put(minimal(), "spec.priorityClassName", "low")
    assert parse_workload(low).spec.effective_priority == -1000
    both = put(low, "spec.priority", -1000)
    assert parse_workload(both).spec.effective_priority == -1000


def test_manifests_without_the_new_fields_keep_their_spec_hash() -> None:
    """Upgrading the coordinator must not roll every running workload."""
    w = parse_workload(minimal())
    placement = w.to_manifest()["spec"]["placement"]
    assert placement == {"nodeSelector": {}, "zones": []}
    assert "priority" not in w.to_manifest()["spec"]


REJECTIONS = [
    ("tol-exists-value", f"{PL}.tolerations", [{"key": "a", "operator": "Exists", "value": "x"}],
     "[0].value", "empty when operator is Exists"),
    ("tol-equal-nokey", f"{PL}.tolerations", [{"value": "x"}], "[0].key",
     "required when operator is Equal"),
    ("tol-effect", f"{PL}.tolerations", [{"key": "a", "effect": "NoRun"}], "[0].effect",
     "NoSchedule"),
    ("expr-in-empty", f"{PL}.nodeAffinity.required",
     [{"matchExpressions": [{"key": "a", "operator": "In"}]}],
     "[0].matchExpressions[0].values", "at least one value"),
    ("expr-exists-values", f"{PL}.nodeAffinity.required",
     [{"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}],
     "[0].matchExpressions[0].values", "must be empty"),
    ("expr-gt-text", f"{PL}.nodeAffinity.required",
     [{"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["many"]}]}],
     "[0].matchExpressions[0].values", "one integer"),
    ("expr-op", f"{PL}.nodeAffinity.required",
     [{"matchExpressions": [{"key": "a", "operator": "Near"}]}],
     "[0].matchExpressions[0].operator", "DoesNotExist"),
    ("term-empty", f"{PL}.nodeAffinity.required", [{"matchExpressions": []}],
     "[0].matchExpressions", "at least 1 expression"),
    ("pref-weight", f"{PL}.nodeAffinity.preferred",
     [{"weight": 0, "preference": {"matchExpressions": [IN_SSD]}}], "[0].weight",
     "between 1 and 100"),
    ("topology-key", f"{PL}.workloadAffinity.required",
     [{"labelSelector": {}, "topologyKey": "rack"}], "[0].topologyKey", "region"),
    ("spread-skew", f"{PL}.topologySpreadConstraints", [{"maxSkew": 0, "topologyKey": "zone"}],
     "[0].maxSkew", "between 1 and 1000"),
    ("spread-when", f"{PL}.topologySpreadConstraints",
     [{"topologyKey": "zone", "whenUnsatisfiable": "Never"}], "[0].whenUnsatisfiable",
     "ScheduleAnyway"),
    ("spread-key-missing", f"{PL}.topologySpreadConstraints", [{"maxSkew": 1}],
     "[0].topologyKey", "required"),
    ("region-dup", f"{PL}.regions", ["eu", "eu"], "[1]", "unique"),
    ("locality-zone", f"{PL}.locality", {"zones": ["Zone A"]}, ".zones[0]", "DNS-1123"),
    ("weight-negative", f"{PL}.weights", {"cost": -1}, ".cost", "from 0 to 100"),
    ("weight-unknown", f"{PL}.weights", {"price": 1}, ".price", "unknown field"),
    ("strategy", "spec.strategy", "zonespread", "", "zone-spread"),
    ("priority-range", "spec.priority", 2 * 10**9, "", "between"),
    ("priority-class", "spec.priorityClassName", "urgent", "", "system-critical"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "suffix", "text"),
    [row[1:] for row in REJECTIONS],
    ids=[row[0] for row in REJECTIONS],
)
def test_rejects(path: str, value: object, suffix: str, text: str) -> None:
    issues = issues_of(put(minimal(), path, value))
    assert [issue.path for issue in issues] == [path + suffix], issues
    [issue] = issues
    assert text in f"{issue.message} (fix: {issue.fix})", issue


def test_priority_and_class_must_agree() -> None:
    m = put(put(minimal(), "spec.priority", 5), "spec.priorityClassName", "high")
    [issue] = issues_of(m)
    assert issue.path == "spec.priority"
    assert "(1000)" in issue.message and "only one" in issue.fix


def test_the_ha_example_loads() -> None:
    from pathlib import Path

    from cloudless.spec import load_manifest_file

    path = Path(__file__).resolve().parents[2] / "examples" / "web-ha.yaml"
    [w] = load_manifest_file(path)
    p = w.spec.placement
    assert w.spec.strategy == "zone-spread" and w.spec.effective_priority == 1000
    assert p.workload_anti_affinity is not None and p.weights is not None
    assert p.weights.reliability == 0.4
