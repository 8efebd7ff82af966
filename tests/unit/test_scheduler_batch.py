"""Batch placement (in-decision accounting of capacity, anti-affinity and spread), sampling
inside a batch, and the preemption planner's rules."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from policies.scheduler import (
    INSUFFICIENT_CPU,
    INSUFFICIENT_MEMORY,
    SPREAD_SKEW_EXCEEDED,
    WORKLOAD_AFFINITY_MISMATCH,
    WORKLOAD_ANTI_AFFINITY_CONFLICT,
    LabelSelector,
    NodeIndex,
    PlacementRequest,
    Resources,
    RunningReplica,
    SpreadConstraint,
    WorkloadAffinity,
    WorkloadAffinityTerm,
    plan_preemption,
    schedule,
)
from policies.scheduler.testing import GI, MI, cluster, node

WEB = {"app": "web"}
ONE = Resources(cpu_millis=1000, memory_bytes=1 * GI)


def web(count: int, **kw: object) -> PlacementRequest:
    base: dict[str, object] = {
        "count": count,
        "resources": ONE,
        "workload_key": "ns/web",
        "workload_labels": WEB,
        "sample_size": None,
    }
    return PlacementRequest(**{**base, **kw})  # type: ignore[arg-type]


def anti(key: str) -> WorkloadAffinity:
    return WorkloadAffinity(
        required=(WorkloadAffinityTerm(LabelSelector(WEB), key),)  # type: ignore[arg-type]
    )


def test_a_batch_never_double_books_a_node() -> None:
    index = cluster(*(node(f"n{i:02d}", cpu=10_000, memory=10 * GI) for i in range(10)))
    d = schedule(web(100), index)
    assert d.unplaced == 0
    assert Counter(d.node_ids) == {f"n{i:02d}": 10 for i in range(10)}
    over = schedule(web(101), index)
    assert over.unplaced == 1
    assert over.reason == "0/10 nodes are available: 10 insufficient memory"


def test_binpack_fills_one_node_before_the_next() -> None:
    index = cluster(node("a", cpu=4000, memory=4 * GI), node("b", cpu=4000, memory=4 * GI))
    assert schedule(web(5), index).node_ids == ("a", "a", "a", "a", "b")
    spread = schedule(web(4, strategy="spread"), index).node_ids
    assert spread == ("a", "b", "a", "b")


def test_the_binding_dimension_is_reported() -> None:
    index = cluster(node("a", cpu=2000, memory=100 * GI))
    d = schedule(web(3), index)
    assert d.node_ids == ("a", "a")
    assert d.reasons == {INSUFFICIENT_CPU: 1}
    index = cluster(node("a", cpu=100_000, memory=2 * GI))
    assert schedule(web(3), index).reasons == {INSUFFICIENT_MEMORY: 1}


def test_anti_affinity_holds_within_the_batch() -> None:
    index = cluster(*(node(f"n{i}", zone=f"z{i % 2}") for i in range(4)))
    d = schedule(web(6, workload_anti_affinity=anti("node")), index)
    assert sorted(d.node_ids) == ["n0", "n1", "n2", "n3"]
    assert d.unplaced == 2
    assert d.reason == "0/4 nodes are available: 4 workload anti-affinity conflict"
    zones = schedule(web(3, workload_anti_affinity=anti("zone")), index)
    assert len(zones.picks) == 2
    assert {int(n[1]) % 2 for n in zones.node_ids} == {0, 1}
    assert zones.reasons == {WORKLOAD_ANTI_AFFINITY_CONFLICT: 4}


def test_anti_affinity_counts_replicas_already_placed() -> None:
    index = cluster(
        node("a"),
        node("b"),
        node("c"),
        workloads={"ns/web": WEB},
        replicas=[("a", "ns/web"), ("c", "ns/web")],
    )
    d = schedule(web(2, workload_anti_affinity=anti("node")), index)
    assert d.node_ids == ("b",)


def test_spread_max_skew_within_the_batch() -> None:
    index = cluster(
        *(node(f"{z}{i}", zone=z, cpu=16_000, memory=16 * GI) for z in "abc" for i in range(2))
    )
    spread = (SpreadConstraint(max_skew=1, topology_key="zone"),)
    d = schedule(web(9, spread=spread), index)
    per_zone = Counter(n[0] for n in d.node_ids)
    assert per_zone == {"a": 3, "b": 3, "c": 3}
    # every prefix of the batch keeps the skew within 1
    counts = Counter[str]()
    for n in d.node_ids:
        counts[n[0]] += 1
        assert max(counts[z] for z in "abc") - min(counts[z] for z in "abc") <= 1


def test_spread_evens_out_an_existing_imbalance_first() -> None:
    index = cluster(
        node("a1", zone="a", cpu=16_000, memory=16 * GI),
        node("b1", zone="b", cpu=16_000, memory=16 * GI),
        workloads={"ns/web": WEB},
        replicas=[("a1", "ns/web")] * 3,
    )
    d = schedule(web(4, spread=(SpreadConstraint(max_skew=1, topology_key="zone"),)), index)
    # a=3, b=0: b must catch up to 3 before a may take another (skew <= 1 at every pick)
    assert d.node_ids[:3] == ("b1", "b1", "b1")
    assert len(d.node_ids) == 4


def test_spread_blocks_when_only_an_overloaded_zone_has_room() -> None:
    index = cluster(
        node("a1", zone="a", cpu=16_000, memory=16 * GI),
        node("b1", zone="b", cpu=1000, memory=1 * GI),
    )
    d = schedule(web(4, spread=(SpreadConstraint(max_skew=1, topology_key="zone"),)), index)
    assert Counter(d.node_ids) == {"a1": 2, "b1": 1}
    assert d.reasons == {SPREAD_SKEW_EXCEEDED: 1, INSUFFICIENT_MEMORY: 1}


def test_self_affinity_keeps_a_group_together() -> None:
    index = cluster(*(node(f"{z}{i}", zone=z) for z in "abc" for i in range(3)))
    together = WorkloadAffinity(required=(WorkloadAffinityTerm(LabelSelector(WEB), "zone"),))
    d = schedule(web(9, workload_affinity=together, strategy="spread"), index)
    assert d.unplaced == 0
    assert len({n[0] for n in d.node_ids}) == 1
    # one zone holds 3 nodes x 4 replicas; the 13th fits nowhere in that zone
    d = schedule(web(13, workload_affinity=together), index)
    assert len(d.picks) == 12 and len({n[0] for n in d.node_ids}) == 1
    assert d.reasons == {INSUFFICIENT_MEMORY: 3, WORKLOAD_AFFINITY_MISMATCH: 6}


def test_sampled_batch_resamples_when_the_sample_fills_up() -> None:
    index = cluster(*(node(f"n{i:02d}", cpu=2000, memory=2 * GI) for i in range(50)))
    d = schedule(web(100, sample_size=5), index, rng_seed=7)
    assert d.unplaced == 0
    assert d.scored_nodes == 5
    assert max(Counter(d.node_ids).values()) == 2
    assert schedule(web(100, sample_size=5), index, rng_seed=7) == d


def test_zero_replicas_is_an_empty_decision() -> None:
    d = schedule(web(0), cluster(node("a")))
    assert d.picks == () and d.unplaced == 0 and d.reason == ""


# --- preemption ---------------------------------------------------------------------------


def running(rid: str, node_id: str, priority: int, gib: int = 1) -> RunningReplica:
    return RunningReplica(rid, node_id, priority, Resources(1000 * gib, gib * GI), "ns/low")


def full_cluster(*replicas: RunningReplica, nodes: tuple[str, ...] = ("a", "b")) -> NodeIndex:
    index = cluster(*(node(n, cpu=4000, memory=4 * GI) for n in nodes))
    for r in replicas:
        index.allocate(r.node_id, r.resources, workload_key=r.workload_key)
    return index


def test_preemption_evicts_the_fewest_lowest_priority_replicas() -> None:
    reps = [
        running("a-1", "a", 1),
        running("a-2", "a", 1),
        running("a-3", "a", 5),
        running("a-4", "a", 5),
        running("b-1", "b", 3, gib=2),
        running("b-2", "b", 3, gib=2),
    ]
    index = full_cluster(*reps)
    need_two = PlacementRequest(resources=Resources(2000, 2 * GI), priority=10)
    plan = plan_preemption(need_two, index, reps)
    assert plan is not None
    # node a: evict the two priority-1 replicas (max victim priority 1) beats node b (3)
    assert plan.node_id == "a"
    assert {v.replica_id for v in plan.victims} == {"a-1", "a-2"}
    assert plan.max_victim_priority == 1


def test_preemption_never_evicts_equal_or_higher_priority() -> None:
    reps = [running("a-1", "a", 5, gib=4), running("b-1", "b", 7, gib=4)]
    index = full_cluster(*reps)
    r = PlacementRequest(resources=ONE, priority=5)
    assert plan_preemption(r, index, reps) is None
    plan = plan_preemption(dataclasses.replace(r, priority=6), index, reps)
    assert plan is not None and plan.node_id == "a"
    assert [v.replica_id for v in plan.victims] == ["a-1"]


def test_preemption_victims_are_minimal() -> None:
    # a holds 1+1+2 GiB of priority 1; the request needs 2 GiB: evicting the 2 GiB replica
    # alone is enough, so the two small ones are spared
    reps = [running("s1", "a", 1), running("s2", "a", 1), running("big", "a", 1, gib=2)]
    index = full_cluster(*reps, nodes=("a",))
    plan = plan_preemption(
        PlacementRequest(resources=Resources(2000, 2 * GI), priority=2), index, reps
    )
    assert plan is not None
    assert [v.replica_id for v in plan.victims] == ["big"]


def test_preemption_prefers_fewer_victims_at_equal_priority() -> None:
    reps = [
        running("a-1", "a", 1),
        running("a-2", "a", 1),
        running("a-3", "a", 1),
        running("a-4", "a", 1),
        running("b-1", "b", 1, gib=2),
        running("b-2", "b", 1, gib=2),
    ]
    index = full_cluster(*reps)
    plan = plan_preemption(
        PlacementRequest(resources=Resources(2000, 2 * GI), priority=2), index, reps
    )
    assert plan is not None and plan.node_id == "b" and len(plan.victims) == 1


def test_no_preemption_when_the_replica_fits_or_nothing_helps() -> None:
    reps = [running("a-1", "a", 1)]
    index = full_cluster(*reps)
    assert plan_preemption(PlacementRequest(resources=ONE, priority=9), index, reps) is None
    too_big = PlacementRequest(resources=Resources(1000, 8 * GI), priority=9)
    assert plan_preemption(too_big, index, reps) is None


def test_preemption_respects_non_capacity_filters() -> None:
    reps = [running("a-1", "a", 1, gib=4), running("b-1", "b", 1, gib=4)]
    index = full_cluster(*reps)
    index.update_node("a", labels={"disk": "ssd"})
    r = PlacementRequest(resources=ONE, priority=5, node_selector={"disk": "ssd"})
    plan = plan_preemption(r, index, reps)
    assert plan is not None and plan.node_id == "a"
    index.set_state("a", "Draining")
    assert plan_preemption(r, index, reps) is None


@pytest.mark.parametrize("count", [1, 7])
def test_memory_demand_in_mebibytes(count: int) -> None:
    index = cluster(node("a", memory=1 * GI))
    d = schedule(web(count, resources=Resources(100, 128 * MI)), index)
    assert len(d.picks) == min(count, 8)
