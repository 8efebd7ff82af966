"""Spreading a workload's own replicas (issue 10, item 7): ``strategy: spread`` puts one
replica on every feasible node before any gets a second; the default (binpack) caps a node at
``replicas - minAvailable`` replicas of the workload while other feasible nodes have room,
relaxing when nothing else fits; and a soft ``replica_spread`` factor prefers nodes and zones
holding fewer of them. Tables on hand-built nodes, the manifest translation, and hypothesis
properties checked against the per-node reference of ``test_scheduler_properties``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from activities.scheduler_inputs import placement_request
from cloudless.cli.output import FACTOR_LABELS as CLI_LABELS
from cloudless.spec import ScoreWeights, load_manifest_file
from cloudless.testing.workloads import sleeper
from cloudless.vocabulary import SCORE_FACTORS
from policies.scheduler import (
    INSUFFICIENT_CPU,
    Decision,
    NodeIndex,
    NodeSpec,
    PlacementRequest,
    Resources,
    RunningReplica,
    SpreadConstraint,
    Weights,
    format_decision,
    plan_preemption,
    schedule,
)
from policies.scheduler.decide import DEFAULT_CONFIG
from policies.scheduler.explain import FACTOR_LABELS
from policies.scheduler.prepare import Accounting, prepare
from policies.scheduler.scoring import utilization, utilization_at
from policies.scheduler.testing import GI, MI, cluster, node
from tests.unit.test_scheduler_properties import (
    FAST,
    OWN,
    WORKLOADS,
    Reference,
    build,
    clusters,
    requests,
    roomy_clusters,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HELLO = Resources(cpu_millis=100, memory_bytes=32 * MI)
KEY = "default/hello"


def dev_cluster(*, replicas: list[tuple[str, str]] | None = None) -> NodeIndex:
    """The product docs' dev cluster, with the differences a real one shows: zone-b has the
    best record, zone-a restarted twice lately, the edge device is far away. Before the fix
    these outweighed `spread`'s emptiest-node preference and all replicas went to zone-b."""
    return cluster(
        node("zone-a", zone="zone-a", cpu=2000, memory=2 * GI, churn=2, latency=5),
        node("zone-b", zone="zone-b", cpu=4000, memory=4 * GI, latency=2),
        node("edge", zone="edge", cpu=1000, memory=1 * GI, uptime=0.9, latency=40),
        workloads={KEY: {"app": "hello"}},
        replicas=replicas or [],
    )


def hello(count: int = 3, **kw: object) -> PlacementRequest:
    base: dict[str, object] = {
        "count": count,
        "resources": HELLO,
        "workload_key": KEY,
        "workload_labels": {"app": "hello"},
        "replicas": 3,
        "min_available": 2,
        "sample_size": None,
    }
    return PlacementRequest(**{**base, **kw})  # type: ignore[arg-type]


def per_node(d: Decision) -> dict[str, int]:
    return dict(Counter(d.node_ids))


# --- the cap itself -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "replicas", "min_available", "count", "cap"),
    [
        ("spread", 3, 2, 3, 1),
        ("spread", 1, None, 1, 1),
        ("binpack", 3, 2, 3, 1),  # hello.yaml: one node lost leaves two
        ("binpack", 3, None, 3, 2),  # unset: never all on one node
        ("binpack", 10, 4, 10, 6),
        ("binpack", 10, 10, 10, 1),  # at least 1
        ("binpack", 3, 0, 3, None),  # minAvailable 0: may share a node
        ("binpack", 1, None, 1, None),  # a single replica: nothing to cap
        ("binpack", None, None, 5, None),  # totals unknown: no cap, whatever the count
        ("spread", None, None, 5, 1),  # spread's cap needs no totals
        ("zone-spread", 4, 2, 1, 2),  # the workload's totals, not this decision's count
    ],
)
def test_node_cap_is_replicas_minus_min_available(
    strategy: str, replicas: int | None, min_available: int | None, count: int, cap: int | None
) -> None:
    r = PlacementRequest(
        count=count,
        strategy=strategy,  # type: ignore[arg-type]
        replicas=replicas,
        min_available=min_available,
    )
    assert r.node_cap() == cap


def test_negative_totals_are_refused() -> None:
    with pytest.raises(ValueError, match="replicas"):
        PlacementRequest(replicas=-1)
    with pytest.raises(ValueError, match="min_available"):
        PlacementRequest(min_available=-1)


# --- strategy: spread -------------------------------------------------------------------


def test_spread_puts_one_replica_on_every_node_whatever_the_other_factors_say() -> None:
    d = schedule(hello(strategy="spread"), dev_cluster())
    assert per_node(d) == {"zone-a": 1, "zone-b": 1, "edge": 1}, d.node_ids
    # even when the other factors weigh five times as much as before
    heavy = Weights(reliability=5, network=5, cost=5)
    d = schedule(hello(strategy="spread", weights=heavy), dev_cluster())
    assert per_node(d) == {"zone-a": 1, "zone-b": 1, "edge": 1}


@pytest.mark.parametrize(
    ("existing", "count", "expected"),
    [
        ([], 3, {"zone-a": 1, "zone-b": 1, "edge": 1}),
        # a replacement goes where the workload has no replica yet
        ([("zone-a", KEY), ("zone-b", KEY)], 1, {"edge": 1}),
        ([("zone-b", KEY), ("zone-b", KEY)], 2, {"zone-a": 1, "edge": 1}),
        # existing imbalance: the emptiest catch up first
        ([("zone-b", KEY)] * 3, 4, {"zone-a": 2, "edge": 2}),
    ],
)
def test_spread_fills_every_node_once_before_any_twice(
    existing: list[tuple[str, str]], count: int, expected: dict[str, int]
) -> None:
    index = dev_cluster(replicas=existing)
    d = schedule(hello(count, strategy="spread", replicas=count + len(existing)), index)
    assert d.unplaced == 0
    assert per_node(d) == expected, d.node_ids


@pytest.mark.parametrize(("count", "shape"), [(5, [1, 2, 2]), (7, [2, 2, 3]), (9, [3, 3, 3])])
def test_spread_doubles_up_evenly_and_in_rounds(count: int, shape: list[int]) -> None:
    d = schedule(hello(count, strategy="spread", replicas=count), dev_cluster())
    assert sorted(per_node(d).values()) == shape, d.node_ids
    for start in range(0, count - count % 3, 3):  # each round of three visits every node
        assert set(d.node_ids[start : start + 3]) == {"zone-a", "zone-b", "edge"}, d.node_ids


def test_spread_doubles_up_only_where_there_is_room() -> None:
    # edge fits one replica of 600m, zone-a three, zone-b six
    index = dev_cluster()
    d = schedule(hello(6, strategy="spread", resources=Resources(600, 32 * MI)), index)
    assert per_node(d) == {"edge": 1, "zone-a": 2, "zone-b": 3}, d.node_ids
    assert set(d.node_ids[:3]) == {"edge", "zone-a", "zone-b"}
    assert set(d.node_ids[3:5]) == {"zone-a", "zone-b"}  # edge is full, the others go on


def test_spread_with_sampling_still_visits_every_node_first() -> None:
    index = cluster(*(node(f"n{i:03d}", cpu=8000, memory=8 * GI) for i in range(120)))
    r = hello(240, strategy="spread", replicas=240, sample_size=7)
    for seed in range(3):
        d = schedule(r, index, rng_seed=seed)
        assert d.unplaced == 0
        counts = Counter[str]()
        for n in d.node_ids:
            assert counts[n] == min(counts[m] for m in index), (n, counts[n])
            counts[n] += 1
        assert set(counts.values()) == {2}


# --- the default: binpack with a per-node cap -------------------------------------------


def test_default_hello_puts_no_two_replicas_on_one_node() -> None:
    d = schedule(hello(), dev_cluster())
    assert per_node(d) == {"zone-a": 1, "zone-b": 1, "edge": 1}, d.node_ids


def test_default_without_min_available_never_puts_every_replica_on_one_node() -> None:
    d = schedule(hello(min_available=None), dev_cluster())
    assert max(per_node(d).values()) <= 2, d.node_ids
    # minAvailable 0 says the workload does not mind: no cap, only the soft factor, which
    # bin-packing outweighs once it is switched off
    assert hello(min_available=0).node_cap() is None
    packed = hello(min_available=0, weights=Weights(replica_spread=0))
    assert len(per_node(schedule(packed, dev_cluster()))) == 1
    # the cap does not depend on the soft factor
    capped = schedule(hello(weights=Weights(replica_spread=0)), dev_cluster())
    assert max(per_node(capped).values()) == 1


def test_default_still_bin_packs_up_to_the_cap() -> None:
    # 10 replicas, minAvailable 6: at most 4 per node; binpack fills the fullest first
    index = cluster(
        node("full", cpu=8000, memory=8 * GI, cpu_used=4000, memory_used=4 * GI),
        node("empty-1", cpu=8000, memory=8 * GI),
        node("empty-2", cpu=8000, memory=8 * GI),
    )
    r = hello(10, replicas=10, min_available=6, resources=Resources(500, 512 * MI))
    d = schedule(r, index)
    assert d.node_ids[:4] == ("full",) * 4
    assert per_node(d)["full"] == 4 and max(per_node(d).values()) == 4 and d.unplaced == 0
    # other workloads still pack onto the fullest node: the cap is per workload
    other = dataclasses.replace(r, count=1, replicas=1, workload_key="default/other")
    assert schedule(other, index).node_ids == ("full",)


@pytest.mark.parametrize(
    ("nodes", "count", "expected"),
    [
        # two nodes for three replicas capped at 1: all placed, then evenly
        (("a", "b"), 3, {"a": 2, "b": 1}),
        (("a", "b"), 4, {"a": 2, "b": 2}),
        # one node: everything goes there, never Pending because of the cap
        (("a",), 3, {"a": 3}),
    ],
)
def test_the_cap_relaxes_when_nothing_else_fits(
    nodes: tuple[str, ...], count: int, expected: dict[str, int]
) -> None:
    index = cluster(*(node(n) for n in nodes))
    d = schedule(hello(count, replicas=count, min_available=count - 1), index)
    assert d.unplaced == 0
    assert per_node(d) == expected


def test_the_cap_relaxes_when_the_other_nodes_are_full() -> None:
    index = cluster(
        node("roomy", cpu=4000),
        node("busy", cpu=1000, cpu_used=1000),
        workloads={KEY: {"app": "hello"}},
        replicas=[("roomy", KEY)],
    )
    d = schedule(hello(2), index)
    assert d.node_ids == ("roomy", "roomy") and d.unplaced == 0
    # and what fits nowhere is reported by the real filter, never by the cap
    d = schedule(hello(60, replicas=61), index)
    assert d.unplaced == 20 and d.reasons == {INSUFFICIENT_CPU: 2}


def test_a_replacement_avoids_the_nodes_that_hold_the_survivors() -> None:
    index = dev_cluster(replicas=[("zone-b", KEY), ("edge", KEY)])
    assert schedule(hello(1), index).node_ids == ("zone-a",)


def test_preemption_prefers_a_node_under_the_cap() -> None:
    # Both nodes are full. Evicting on `a` would take only a priority-1 replica, but `a`
    # already holds a replica of hello, whose cap is 1: the plan evicts on `b` instead.
    own = RunningReplica("hello-1", "a", 10, Resources(1000, 1 * GI), KEY)
    low_a = RunningReplica("low-a", "a", 1, Resources(3000, 3 * GI), "default/low")
    low_b = RunningReplica("low-b", "b", 3, Resources(4000, 4 * GI), "default/low")
    index = cluster(node("a", cpu=4000, memory=4 * GI), node("b", cpu=4000, memory=4 * GI))
    for r in (own, low_a, low_b):
        index.allocate(r.node_id, r.resources, workload_key=r.workload_key)
    request = hello(1, priority=10, resources=Resources(1000, 1 * GI))
    plan = plan_preemption(request, index, [low_a, low_b])
    assert plan is not None and plan.node_id == "b", plan
    # where the cap cannot bind (minAvailable 0), the cheaper victims win as before
    uncapped = dataclasses.replace(request, min_available=0)
    plan = plan_preemption(uncapped, index, [low_a, low_b])
    assert plan is not None and plan.node_id == "a", plan
    # and with every node at the cap, the one holding the fewest replicas is chosen
    index.allocate("b", Resources(0, 0), workload_key=KEY)
    index.allocate("a", Resources(0, 0), workload_key=KEY)
    plan = plan_preemption(request, index, [low_a, low_b])
    assert plan is not None and plan.node_id == "b", plan


# --- the soft factor ----------------------------------------------------------------------


def factor_of(index: NodeIndex, r: PlacementRequest) -> dict[str, float]:
    d = schedule(dataclasses.replace(r, count=1, sample_size=None), index, top_k=100)
    return {c.node_id: c.factors["replica_spread"] for c in d.picks[0].candidates}


def test_replica_spread_prefers_fewer_replicas_on_the_node_and_in_the_zone() -> None:
    index = cluster(
        node("a1", zone="a"),
        node("a2", zone="a"),
        node("b1", zone="b"),
        node("b2", zone="b"),
        workloads={KEY: {"app": "hello"}},
        replicas=[("a1", KEY), ("a1", KEY), ("a2", KEY)],
    )
    r = hello(replicas=10, min_available=0)  # no cap: the factor alone
    f = factor_of(index, r)
    # node term 3/(3 + count - min), zone term 5/(5 + count - min), averaged
    assert f == pytest.approx(
        {"a1": (3 / 5 + 5 / 8) / 2, "a2": (3 / 4 + 5 / 8) / 2, "b1": 1.0, "b2": 1.0}
    )


def test_replica_spread_applies_to_multi_replica_workloads_without_own_constraints() -> None:
    index = dev_cluster()
    assert "replica_spread" in schedule(hello(1), index).weights
    assert "replica_spread" not in schedule(hello(1, replicas=1), index).weights
    own = (SpreadConstraint(max_skew=1, topology_key="zone"),)
    assert "replica_spread" not in schedule(hello(1, spread=own), index).weights
    assert Weights().replica_spread == 0.2


# --- the manifest translation --------------------------------------------------------------


def test_hello_yaml_spreads_over_the_dev_cluster() -> None:
    [workload] = load_manifest_file(EXAMPLES / "hello.yaml")
    assert workload.spec.strategy == "spread"
    request = placement_request(workload, workload.spec.replicas, sample_size=None)
    assert (request.replicas, request.min_available, request.strategy) == (3, 2, "spread")
    assert per_node(schedule(request, dev_cluster())) == {"zone-a": 1, "zone-b": 1, "edge": 1}
    default = workload.model_copy(
        update={"spec": workload.spec.model_copy(update={"strategy": "binpack"})}
    )
    request = placement_request(default, 3, sample_size=None)
    assert request.node_cap() == 1
    assert per_node(schedule(request, dev_cluster())) == {"zone-a": 1, "zone-b": 1, "edge": 1}
    # a replacement decision (count 1) still knows the workload's totals
    one = placement_request(default, 1, sample_size=None)
    assert (one.count, one.replicas, one.node_cap()) == (1, 3, 1)


# --- properties ---------------------------------------------------------------------------


@st.composite
def totals(draw: st.DrawFn) -> tuple[int | None, int | None]:
    replicas = draw(st.one_of(st.none(), st.integers(1, 12)))
    top = replicas if replicas is not None else 12
    return replicas, draw(st.one_of(st.none(), st.integers(0, top)))


def check_cap_order(index: NodeIndex, request: PlacementRequest, decision: Decision) -> None:
    """Every pick went to a node under the cap, or, if no feasible node was under it, to a
    node holding the fewest of the workload's replicas among the feasible ones."""
    ref = Reference(index, request)
    cap = request.node_cap()
    for pick in decision.picks:
        assert ref.failure(pick.node_id) is None
        if cap is not None:
            feasible = [n for n in ref.specs if ref.failure(n) is None]
            fewest = min(ref.replicas[n][OWN] for n in feasible)
            assert ref.replicas[pick.node_id][OWN] < max(cap, fewest + 1), (pick.node_id, cap)
        ref.place(pick.node_id)
    if decision.unplaced:  # never Pending because of the cap alone
        assert all(ref.failure(n) is not None for n in ref.specs)


@FAST
@given(clusters(), requests(), totals(), st.integers(0, 3))
def test_every_pick_respects_the_cap_order_and_the_cap_never_strands_a_replica(
    cluster_: tuple[list[NodeSpec], list[tuple[int, str]]],
    request: PlacementRequest,
    total: tuple[int | None, int | None],
    seed: int,
) -> None:
    replicas, min_available = total
    request = dataclasses.replace(request, replicas=replicas, min_available=min_available)
    index = build(*cluster_)
    decision = schedule(request, index, rng_seed=seed)
    event(f"cap: {request.node_cap()}")
    check_cap_order(index, request, decision)


def plain(cluster_: tuple[list[NodeSpec], list[tuple[int, str]]]) -> NodeIndex:
    """A roomy cluster without replicas of the workload being placed."""
    specs, replicas = cluster_
    return build(specs, [(i, k) for i, k in replicas if k != OWN])


def roomy_request(count: int, **kw: object) -> PlacementRequest:
    return PlacementRequest(
        count=count,
        resources=HELLO,
        workload_key=OWN,
        workload_labels=WORKLOADS[OWN],
        **kw,  # type: ignore[arg-type]
    )


@FAST
@given(roomy_clusters(), st.integers(1, 20), st.sampled_from([None, "auto", 1, 3]), st.integers())
def test_spread_keeps_per_node_counts_within_one_when_capacity_allows(
    cluster_: tuple[list[NodeSpec], list[tuple[int, str]]],
    count: int,
    sample: object,
    seed: int,
) -> None:
    index = plain(cluster_)  # every node has room for at least 10 of these
    r = roomy_request(count, strategy="spread", sample_size=sample, replicas=count)
    d = schedule(r, index, rng_seed=seed % 1000)
    assert d.unplaced == 0
    counts = dict.fromkeys(index, 0)
    for n in d.node_ids:
        counts[n] += 1
    assert max(counts.values()) - min(counts.values()) <= 1, counts


@FAST
@given(
    roomy_clusters(),
    st.integers(2, 20),
    st.data(),
    st.sampled_from([None, "auto", 2]),
    st.sampled_from(["binpack", "zone-spread"]),
)
def test_default_holds_at_most_replicas_minus_min_available_per_node_when_room_exists(
    cluster_: tuple[list[NodeSpec], list[tuple[int, str]]],
    replicas: int,
    data: st.DataObject,
    sample: object,
    strategy: str,
) -> None:
    index = plain(cluster_)
    min_available = data.draw(st.one_of(st.none(), st.integers(1, replicas)))
    r = roomy_request(
        replicas,
        replicas=replicas,
        min_available=min_available,
        sample_size=sample,
        strategy=strategy,
    )
    cap = r.node_cap()
    assert cap is not None
    d = schedule(r, index)
    assert d.unplaced == 0
    fullest = max(Counter(d.node_ids).values())
    if replicas <= cap * len(index):  # room under the cap exists
        assert fullest <= cap, (cap, Counter(d.node_ids))
    else:  # then evenly: within one of the fewest
        assert fullest <= -(-replicas // len(index)), Counter(d.node_ids)


# --- the incremental refresh ----------------------------------------------------------------


@FAST
@given(
    roomy_clusters(),
    st.integers(1, 24),
    totals(),
    st.sampled_from(["binpack", "spread", "zone-spread"]),
    st.sampled_from([None, 2, 5]),
    st.integers(0, 3),
)
def test_the_own_replica_fast_path_decides_exactly_as_a_full_refresh(
    cluster_: tuple[list[NodeSpec], list[tuple[int, str]]],
    count: int,
    total: tuple[int | None, int | None],
    strategy: str,
    sample: int | None,
    seed: int,
) -> None:
    """Between picks, a workload whose only domain terms are its own counts updates the
    picked node's zone only (``_placed_own``); the generic refresh recomputes everything.
    Same picks, same scores, same factor values, bit for bit."""
    replicas, min_available = total
    index = build(*cluster_)
    r = roomy_request(
        count,
        replicas=replicas,
        min_available=min_available,
        strategy=strategy,
        sample_size=sample,
    )
    fast = schedule(r, index, rng_seed=seed)
    with mock.patch.object(Accounting, "own_only", property(lambda _self: False)):
        full = schedule(r, index, rng_seed=seed)
    event(f"own only: {fast.weights.get('replica_spread', 0) > 0}")
    assert fast.picks == full.picks


@FAST
@given(clusters(), requests(), st.data())
def test_utilization_at_one_node_equals_the_vector_form(
    cluster_: tuple[list[NodeSpec], list[tuple[int, str]]],
    request: PlacementRequest,
    data: st.DataObject,
) -> None:
    index = build(*cluster_)
    prep = prepare(request, index, DEFAULT_CONFIG)
    slots = np.arange(len(index), dtype=np.int64)
    acc = Accounting(prep, index, slots)
    for _ in range(data.draw(st.integers(0, 3))):  # some replicas placed by the batch
        acc.place(data.draw(st.integers(0, len(slots) - 1)))
    vector = utilization(acc, None)
    assert [utilization_at(acc, j) for j in range(len(slots))] == vector.tolist()


def test_every_factor_has_a_label_and_a_manifest_weight() -> None:
    """`rspr` in `explain` and `describe`, `placement.weights.replica_spread` in manifests."""
    assert tuple(CLI_LABELS) == tuple(FACTOR_LABELS) == SCORE_FACTORS
    assert dict(CLI_LABELS) == dict(FACTOR_LABELS)
    assert FACTOR_LABELS["replica_spread"] == "rspr"
    assert tuple(ScoreWeights.model_fields) == SCORE_FACTORS
    w = sleeper("w", 3, placement={"weights": {"replica_spread": 0}})
    request = placement_request(w, 3, sample_size=None)
    assert request.weights is not None and request.weights.replica_spread == 0
    assert "replica_spread" not in schedule(request, dev_cluster()).weights


def test_explain_shows_the_cap_and_the_rspr_column() -> None:
    lines = format_decision(schedule(hello(), dev_cluster()))
    assert "per-node cap: 1 replica(s) of this workload while other feasible nodes have fewer" in (
        lines
    )
    assert any("replica_spread 0.2" in line for line in lines)
    table = next(line for line in lines if line.strip().startswith("node"))
    assert table.split()[-1] == "rspr", table
    # no cap line where none can bind
    assert not any(
        "per-node cap" in line
        for line in format_decision(schedule(hello(1, replicas=1), dev_cluster()))
    )
