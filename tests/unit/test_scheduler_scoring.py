"""Scheduler scoring: each factor's math, the weighted 0..100 total, strategies, ties and
the explanation that carries the breakdown."""

from __future__ import annotations

import dataclasses
import math

import pytest

from policies.scheduler import (
    FACTORS,
    Decision,
    LabelSelector,
    Locality,
    MatchExpression,
    NodeAffinity,
    NodeSelectorTerm,
    PlacementRequest,
    PreferredNodeTerm,
    Resources,
    SchedulerConfig,
    SpreadConstraint,
    Taint,
    WeightedWorkloadAffinityTerm,
    Weights,
    WorkloadAffinity,
    WorkloadAffinityTerm,
    format_decision,
    schedule,
)
from policies.scheduler.index import NodeIndex
from policies.scheduler.testing import GI, MI, cluster, node

SMALL = Resources(cpu_millis=1000, memory_bytes=1 * GI)
ONLY = {name: 0.0 for name in FACTORS}


def only(**weights: float) -> Weights:
    """Weights with every factor off except the ones given."""
    return Weights(**{**ONLY, **weights})


def scores(
    index: NodeIndex, request: PlacementRequest
) -> dict[str, tuple[float, dict[str, float]]]:
    """Every feasible node's total and factors, via the explanation of one decision."""
    d = schedule(dataclasses.replace(request, count=1, sample_size=None), index, top_k=100)
    return {c.node_id: (c.score, dict(c.factors)) for c in d.picks[0].candidates}


def factor(index: NodeIndex, request: PlacementRequest, name: str) -> dict[str, float]:
    return {n: f[name] for n, (_, f) in scores(index, request).items()}


def test_default_weights_are_the_documented_ones() -> None:
    w = Weights()
    assert (w.locality, w.reliability, w.cost, w.utilization, w.network) == (
        0.3,
        0.25,
        0.15,
        0.2,
        0.1,
    )
    assert SchedulerConfig().weights == w
    with pytest.raises(ValueError, match="cost"):
        Weights(cost=-1)
    with pytest.raises(ValueError, match="locality"):
        Weights(locality=math.nan)


def test_total_is_the_weighted_mean_of_factors_scaled_to_100() -> None:
    index = cluster(
        node("a", zone="z1", uptime=0.9, churn=3, cost=0.01, latency=50, cpu_used=1000),
        node("b", zone="z2", uptime=0.5, churn=0, cost=0.03, latency=10),
        node("c", zone="z3", region="region-2", uptime=1.0, churn=9, cost=0.02, latency=200),
    )
    r = PlacementRequest(resources=SMALL, locality=Locality(zones=frozenset({"z1"})))
    d = schedule(dataclasses.replace(r, sample_size=None), index, top_k=3)
    assert set(d.weights) == {"locality", "reliability", "cost", "utilization", "network"}
    for cand in d.picks[0].candidates:
        expected = (
            100 * sum(d.weights[f] * v for f, v in cand.factors.items()) / sum(d.weights.values())
        )
        assert cand.score == pytest.approx(expected)
        assert 0.0 <= cand.score <= 100.0
        assert all(0.0 <= v <= 1.0 for v in cand.factors.values())


def test_locality_zone_region_and_labels() -> None:
    index = cluster(
        node("same-zone", zone="z1", region="r1"),
        node("same-region", zone="z2", region="r1"),
        node("elsewhere", zone="z3", region="r2"),
        node("by-label", zone="z4", region="r3", labels={"data": "eu"}),
    )
    r = PlacementRequest(resources=SMALL, locality=Locality(zones=frozenset({"z1"})))
    assert factor(index, r, "locality") == {
        "same-zone": 1.0,
        "same-region": 0.5,
        "elsewhere": 0.0,
        "by-label": 0.0,
    }
    r = PlacementRequest(
        resources=SMALL, locality=Locality(regions=frozenset({"r2"}), labels={"data": "eu"})
    )
    assert factor(index, r, "locality") == {
        "same-zone": 0.0,
        "same-region": 0.0,
        "elsewhere": 0.5,
        "by-label": 1.0,
    }
    assert schedule(dataclasses.replace(r, weights=only(locality=1)), index).node_ids == (
        "by-label",
    )


def test_no_locality_preference_drops_the_factor() -> None:
    d = schedule(PlacementRequest(resources=SMALL), cluster(node("a")))
    assert "locality" not in d.weights
    assert "locality" not in d.picks[0].factors


@pytest.mark.parametrize(
    ("uptime", "churn", "expected"),
    [(1.0, 0, 1.0), (0.9, 0, 0.9), (1.0, 3, 0.5), (0.8, 6, 0.8 / 3), (0.0, 0, 0.0)],
)
def test_reliability_from_uptime_and_churn(uptime: float, churn: float, expected: float) -> None:
    index = cluster(node("n", uptime=uptime, churn=churn))
    assert factor(index, PlacementRequest(resources=SMALL), "reliability")["n"] == pytest.approx(
        expected
    )


def test_reliability_prefers_the_node_with_the_better_history() -> None:
    index = cluster(node("flaky", uptime=0.99, churn=6), node("steady", uptime=0.95, churn=0))
    r = PlacementRequest(resources=SMALL, weights=only(reliability=1))
    assert schedule(r, index).node_ids == ("steady",)


def test_cost_is_normalized_over_feasible_nodes() -> None:
    index = cluster(
        node("cheap", cost=0.01),
        node("mid", cost=0.02),
        node("dear", cost=0.03),
        node("free-but-full", cost=0.0, memory=GI // 2),  # infeasible: not in the range
    )
    r = PlacementRequest(resources=SMALL)
    assert factor(index, r, "cost") == pytest.approx({"cheap": 1.0, "mid": 0.5, "dear": 0.0})
    same = cluster(node("a", cost=0.02), node("b", cost=0.02))
    assert factor(same, r, "cost") == {"a": 1.0, "b": 1.0}


def test_network_prefers_low_latency() -> None:
    index = cluster(node("near", latency=0), node("mid", latency=50), node("far", latency=150))
    r = PlacementRequest(resources=SMALL)
    assert factor(index, r, "network") == pytest.approx({"near": 1.0, "mid": 0.5, "far": 0.25})
    assert schedule(dataclasses.replace(r, weights=only(network=1)), index).node_ids == ("near",)


def test_binpack_prefers_fuller_and_spread_emptier() -> None:
    index = cluster(
        node("empty", cpu=4000, memory=4 * GI),
        node("half", cpu=4000, memory=4 * GI, cpu_used=2000, memory_used=2 * GI),
        node("tight", cpu=4000, memory=4 * GI, cpu_used=3000, memory_used=3 * GI),
    )
    r = PlacementRequest(resources=SMALL)
    util = factor(index, r, "utilization")
    assert util == pytest.approx({"empty": 0.25, "half": 0.75, "tight": 1.0})
    assert schedule(r, index).node_ids == ("tight",)
    spread = dataclasses.replace(r, strategy="spread")
    assert factor(index, spread, "utilization") == pytest.approx(
        {"empty": 0.75, "half": 0.25, "tight": 0.0}
    )
    assert schedule(spread, index).node_ids == ("empty",)


def test_zone_spread_prefers_the_zone_with_fewer_replicas_then_emptier_nodes() -> None:
    index = cluster(
        node("a-empty", zone="a"),
        node("b-full", zone="b", cpu_used=2000, memory_used=2 * GI),
        node("b-empty", zone="b"),
        workloads={"ns/web": {"app": "web"}},
        replicas=[("a-empty", "ns/web")],
    )
    r = PlacementRequest(
        resources=SMALL,
        workload_key="ns/web",
        workload_labels={"app": "web"},
        strategy="zone-spread",
        weights=only(utilization=1),
    )
    util = factor(index, r, "utilization")
    assert util["b-empty"] > util["b-full"] > util["a-empty"]
    # zones tie after the first pick (a=1, b=1): the emptier node wins, then zone b again
    assert schedule(dataclasses.replace(r, count=3), index).node_ids == (
        "b-empty",
        "a-empty",
        "b-empty",
    )


def test_per_request_weights_override_the_cluster_ones() -> None:
    index = cluster(node("cheap", cost=0.01, latency=200), node("fast", cost=0.05, latency=1))
    r = PlacementRequest(resources=SMALL)
    cost_cluster = SchedulerConfig(weights=only(cost=1))
    assert schedule(r, index, config=cost_cluster).node_ids == ("cheap",)
    fast = dataclasses.replace(r, weights=only(network=1))
    assert schedule(fast, index, config=cost_cluster).node_ids == ("fast",)
    assert schedule(fast, index, config=cost_cluster).weights == {"network": 1.0}


def test_preferred_node_affinity_weights() -> None:
    index = cluster(
        node("ssd", labels={"disk": "ssd"}),
        node("ssd-gpu", labels={"disk": "ssd", "gpu": "yes"}),
        node("plain"),
    )
    affinity = NodeAffinity(
        preferred=(
            PreferredNodeTerm(30, NodeSelectorTerm((MatchExpression("disk", "In", ("ssd",)),))),
            PreferredNodeTerm(70, NodeSelectorTerm((MatchExpression("gpu", "Exists"),))),
        )
    )
    r = PlacementRequest(resources=SMALL, node_affinity=affinity)
    assert factor(index, r, "node_affinity") == pytest.approx(
        {"ssd": 0.3, "ssd-gpu": 1.0, "plain": 0.0}
    )
    assert schedule(r, index).node_ids == ("ssd-gpu",)


def test_preferred_workload_affinity_and_anti_affinity() -> None:
    index = cluster(
        node("with-cache", zone="a"),
        node("near-cache", zone="a"),
        node("with-batch", zone="b"),
        node("alone", zone="c"),
        workloads={"ns/cache": {"app": "cache"}, "ns/batch": {"tier": "batch"}},
        replicas=[("with-cache", "ns/cache"), ("with-batch", "ns/batch")],
    )
    r = PlacementRequest(
        resources=SMALL,
        workload_affinity=WorkloadAffinity(
            preferred=(
                WeightedWorkloadAffinityTerm(
                    60, WorkloadAffinityTerm(LabelSelector({"app": "cache"}), "zone")
                ),
            )
        ),
        workload_anti_affinity=WorkloadAffinity(
            preferred=(
                WeightedWorkloadAffinityTerm(
                    40, WorkloadAffinityTerm(LabelSelector({"tier": "batch"}), "node")
                ),
            )
        ),
    )
    assert factor(index, r, "workload_affinity") == pytest.approx(
        {"with-cache": 1.0, "near-cache": 1.0, "with-batch": 0.0, "alone": 0.4}
    )


def test_prefer_no_schedule_taint_lowers_the_score_only() -> None:
    battery = Taint("battery", "low", "PreferNoSchedule")
    index = cluster(node("tainted", taints=[battery], cost=0.0), node("clean", cost=0.05))
    r = PlacementRequest(resources=SMALL)
    assert factor(index, r, "taint_toleration") == {"tainted": 0.5, "clean": 1.0}
    assert schedule(dataclasses.replace(r, weights=only(taint_toleration=1)), index).node_ids == (
        "clean",
    )
    only_tainted = cluster(node("tainted", taints=[battery]))
    assert schedule(r, only_tainted).node_ids == ("tainted",)


def test_schedule_anyway_spread_scores_closeness_to_the_minimum() -> None:
    index = cluster(
        node("a1", zone="a"),
        node("b1", zone="b"),
        node("c1", zone="c"),
        workloads={"ns/web": {"app": "web"}},
        replicas=[("a1", "ns/web"), ("a1", "ns/web"), ("b1", "ns/web")],
    )
    soft = SpreadConstraint(max_skew=1, topology_key="zone", when_unsatisfiable="ScheduleAnyway")
    r = PlacementRequest(
        resources=SMALL, workload_key="ns/web", workload_labels={"app": "web"}, spread=(soft,)
    )
    assert factor(index, r, "topology_spread") == pytest.approx({"a1": 1 / 3, "b1": 0.5, "c1": 1.0})


def test_ties_go_to_the_smallest_node_id_whatever_the_insertion_order() -> None:
    specs = [node(f"n{i}") for i in (3, 1, 2)]
    r = PlacementRequest(resources=SMALL, sample_size=None)
    for order in (specs, specs[::-1]):
        assert schedule(r, cluster(*order)).node_ids == ("n1",)
    assert schedule(dataclasses.replace(r, count=3), cluster(*specs)).node_ids == ("n1",) * 3
    many = [node(f"m{i:03d}") for i in range(150)]  # past the direct-comparison limit
    for order in (many, many[::-1]):
        assert schedule(r, cluster(*order)).node_ids == ("m000",)


def test_explanation_lists_top_candidates_with_breakdowns() -> None:
    index = cluster(
        *(node(f"n{i}", cpu_used=i * 300) for i in range(6)), node("bad", state="Draining")
    )
    r = PlacementRequest(resources=SMALL, count=2)
    d: Decision = schedule(r, index, top_k=3)
    first = d.picks[0]
    assert [c.node_id for c in first.candidates] == ["n5", "n4", "n3"]
    assert first.candidates[0].node_id == first.node_id
    assert [c.score for c in first.candidates] == sorted(
        (c.score for c in first.candidates), reverse=True
    )
    assert set(first.factors) == {"reliability", "cost", "utilization", "network"}
    lines = format_decision(d)
    assert lines[0].startswith("placed 2/2 replica(s) with binpack: 7 nodes, 6 feasible")
    assert "filtered: 1 node not ready" in lines
    assert any(line.startswith("replica 1: n5 (score") for line in lines)
    assert any(line.lstrip().startswith("* n5") for line in lines)
    assert schedule(r, index, top_k=0).picks[0].candidates == ()


def test_explanation_of_a_failure() -> None:
    index = cluster(node("a", memory=GI // 2), node("b", state="Offline"))
    d = schedule(PlacementRequest(resources=SMALL, count=2), index)
    assert format_decision(d)[-1] == (
        "unplaced 2: 0/2 nodes are available: 1 insufficient memory, 1 node not ready"
    )


def test_memory_only_demand_still_scores_utilization() -> None:
    index = cluster(node("a", memory=8 * GI), node("b", memory=2 * GI))
    r = PlacementRequest(resources=Resources(memory_bytes=512 * MI))
    assert schedule(r, index).node_ids == ("b",)
