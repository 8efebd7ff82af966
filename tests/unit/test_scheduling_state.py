"""The coordinator's scheduler soft state (``activities/scheduler_index.py``), the
manifest -> PlacementRequest translation (``activities/scheduler_inputs.py``), and the node
facts advertised through labels (``cloudless/nodefacts.py``). No Temporal: snapshots and
commit results are built here."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from activities.scheduler_index import SchedulerState
from activities.scheduler_inputs import node_spec, placement_request, scheduler_config
from cloudless import nodefacts
from cloudless.model import (
    DEFAULT_WEIGHTS,
    SCORE_FACTORS,
    Allocation,
    ClusterSnapshot,
    CommitPlanInput,
    CommitPlanResult,
    LedgerNode,
    LedgerWorkload,
    NodeRecord,
    NodeState,
    Resources,
    SchedulerSettings,
    UpsertNodeInput,
)
from cloudless.spec import parse_workload
from policies import scheduler as sched
from workflows.cluster import Ledger


def ledger_with_nodes() -> Ledger:
    ledger = Ledger()
    for name, zone, labels in (
        ("a", "z1", {"cloudless.dev/region": "eu",
                     "taint.cloudless.dev/battery": "low.PreferNoSchedule"}),
        ("b", "z2", {"runtimeclass.cloudless.dev/gvisor": "true", "cloudless.dev/cost": "0.5"}),
    ):  # fmt: skip
        ledger.upsert_node(
            UpsertNodeInput(
                record=NodeRecord(
                    node_id=name,
                    zone=zone,
                    labels=labels,
                    capacity=Resources(cpu_millis=1000, memory_bytes=2**30),
                    runtimes=["docker", "exec"],
                ),
                state=NodeState.READY,
                uptime_ratio=0.9,
                churn=2,
            )
        )
    return ledger


def state_for(ledger: Ledger) -> SchedulerState:
    async def fetch() -> ClusterSnapshot:
        return ledger.snapshot("c").expand()

    return SchedulerState(fetch)


def alloc(rid: str, node_id: str, cpu: int, workload: str = "ns/w") -> Allocation:
    return Allocation(
        replica_id=rid, workload=workload, node_id=node_id, resources=Resources(cpu_millis=cpu)
    )


def test_node_facts_from_labels() -> None:
    labels = {
        "cloudless.dev/region": "eu-west",
        "cloudless.dev/gpu": "2",
        "cloudless.dev/bandwidth-mbps": "100",
        "cloudless.dev/cost": "0.04",
        "cloudless.dev/latency-ms": "12.5",
        "runtimeclass.cloudless.dev/gvisor": "true",
        "taint.cloudless.dev/dedicated": "ml.NoSchedule",
        "taint.cloudless.dev/battery": "PreferNoSchedule",
    }
    advert = nodefacts.parse(labels)
    assert advert.region == "eu-west" and advert.gpu == 2
    assert advert.bandwidth_bps == 100_000_000
    assert (advert.cost_per_core_hour, advert.latency_ms) == (0.04, 12.5)
    assert advert.runtime_classes == ("gvisor", "runc")
    assert {(t.key, t.value, t.effect) for t in advert.taints} == {
        ("dedicated", "ml", "NoSchedule"),
        ("battery", "", "PreferNoSchedule"),
    }
    assert nodefacts.problems(labels) == []
    bad = {"cloudless.dev/gpu": "two", "taint.cloudless.dev/x": "Sometimes"}
    assert len(nodefacts.problems(bad)) == 2
    assert nodefacts.parse(bad).gpu == 0 and nodefacts.parse(bad).taints == ()


def test_index_is_built_from_the_snapshot_with_every_fact() -> None:
    ledger = ledger_with_nodes()
    ledger.commit(
        CommitPlanInput(
            plan_id="p",
            allocations=[alloc("r1", "a", 300, "ns/db")],
            workloads={"ns/db": LedgerWorkload(labels={"app": "db"}, priority=5)},
        )
    )
    state = state_for(ledger)
    index = asyncio.run(state.current())
    a = index.node("a")
    assert a.region == "eu" and a.allocated.cpu_millis == 300
    assert a.taints == (sched.Taint("battery", "low", "PreferNoSchedule"),)
    assert (a.uptime_ratio, a.churn) == (0.9, 2.0)
    assert index.node("b").runtime_classes == frozenset({"runc", "gvisor"})
    assert index.node_workloads("a") == {"ns/db": 1}
    assert index.workload_labels("ns/db") == {"app": "db"}
    assert state.version == ledger.version and state.workloads["ns/db"].priority == 5


def test_reservations_commit_cancel_and_survive_a_reload() -> None:
    ledger = ledger_with_nodes()
    state = state_for(ledger)
    index = asyncio.run(state.current())
    p1 = CommitPlanInput(plan_id="p1", allocations=[alloc("r1", "a", 400)])
    t1 = state.reserve(p1)
    assert index.node("a").allocated.cpu_millis == 400  # visible to the next decision
    p2 = CommitPlanInput(plan_id="p2", allocations=[alloc("r2", "b", 100)])
    t2 = state.reserve(p2)
    state.cancel(t2)  # rejected
    assert index.node("b").allocated.cpu_millis == 0
    # p1 commits in the ledger, but a reload happens before its result arrives.
    ledger.validate(p1)
    result = ledger.commit(p1)
    state.mark_stale()
    index = asyncio.run(state.current())
    # In the snapshot and still reserved: counted twice meanwhile, which is conservative
    # (it can only make a decision skip room, never over-commit).
    assert index.node("a").allocated.cpu_millis == 800
    state.committed(t1, result)
    assert index.node("a").allocated.cpu_millis == 400  # counted once
    assert state.version == ledger.version and not state.behind


def test_a_takeover_of_an_older_owners_reservations_reloads_the_index() -> None:
    """A plan of a workload's newer run released what an older run still held: the index
    counted that room as taken, so it reloads rather than stay fuller than the ledger."""
    ledger = ledger_with_nodes()
    state = state_for(ledger)
    asyncio.run(state.current())
    base = state.version
    plan = CommitPlanInput(plan_id="p", allocations=[alloc("r1", "a", 100)])
    t = state.reserve(plan)
    state.committed(
        t,
        CommitPlanResult(version=base + 1, applied=True, allocations=[], taken_over=["ns/w"]),
    )
    assert state.behind


def test_a_gap_in_versions_makes_the_index_behind() -> None:
    ledger = ledger_with_nodes()
    state = state_for(ledger)
    asyncio.run(state.current())
    base = state.version
    plan = CommitPlanInput(plan_id="p", allocations=[alloc("r1", "a", 100)])
    t = state.reserve(plan)
    # Version base+1 was written by someone else; this plan got base+2.
    state.committed(t, CommitPlanResult(version=base + 2, applied=True, allocations=[]))
    assert state.version == base and not state.behind  # within the grace period
    state._gap_since = 0.0  # long ago
    assert state.behind


def manifest(**placement: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cloudless.dev/v1",
        "kind": "Workload",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "strategy": "zone-spread",
            "priorityClassName": "high",
            "container": {"image": "cloudless/busybox:latest"},
            "resources": {"cpu": "250m", "memory": "64Mi"},
            "security_context": {"runtime_class_name": "gvisor"},
            "placement": placement,
        },
    }


def test_manifest_translates_into_a_placement_request() -> None:
    w = parse_workload(
        manifest(
            nodeSelector={"disk": "ssd"},
            zones=["z1"],
            regions=["eu"],
            tolerations=[{"key": "battery", "operator": "Exists", "effect": "PreferNoSchedule"}],
            nodeAffinity={
                "required": [{"matchExpressions": [
                    {"key": "cores", "operator": "Gt", "values": ["4"]}]}],
                "preferred": [{"weight": 10, "preference": {"matchExpressions": [
                    {"key": "arch", "operator": "NotIn", "values": ["arm"]}]}}],
            },
            workloadAffinity={"preferred": [{"weight": 5, "term": {
                "labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}}]},
            workloadAntiAffinity={"required": [{
                "labelSelector": {"matchLabels": {"app": "web"}},
                "topologyKey": "kubernetes.io/hostname"}]},
            topologySpreadConstraints=[{"maxSkew": 2, "topologyKey": "region",
                                        "whenUnsatisfiable": "ScheduleAnyway"}],
            locality={"zones": ["z1"], "labels": {"data": "eu"}},
            weights={"cost": 0.5, "locality": 0},
        )
    )  # fmt: skip
    r = placement_request(w, 3)
    assert (r.count, r.workload_key, r.priority, r.strategy) == (
        3,
        "default/web",
        1000,
        "zone-spread",
    )
    assert r.resources == sched.Resources(cpu_millis=250, memory_bytes=64 * 2**20)
    assert r.runtime_class == "gvisor" and r.workload_labels == {"app": "web"}
    assert r.zones == {"z1"} and r.regions == {"eu"} and r.node_selector == {"disk": "ssd"}
    assert r.tolerations == (sched.Toleration("battery", "Exists", "", "PreferNoSchedule"),)
    assert r.node_affinity.required[0].match_expressions == (
        sched.MatchExpression("cores", "Gt", ("4",)),
    )
    assert r.node_affinity.preferred[0].weight == 10
    assert r.workload_affinity.preferred[0].term.topology_key == "zone"
    assert r.workload_anti_affinity.required[0].topology_key == "node"
    assert r.spread == (sched.SpreadConstraint(2, "region", "ScheduleAnyway", None),)
    assert r.locality.zones == {"z1"} and r.locality.labels == {"data": "eu"}
    assert r.weights is not None and (r.weights.cost, r.weights.locality) == (0.5, 0.0)
    assert r.weights.reliability == sched.Weights().reliability


def test_translated_request_schedules_on_the_index() -> None:
    ledger = ledger_with_nodes()
    index = asyncio.run(state_for(ledger).current())
    plain = parse_workload(manifest())
    d = sched.schedule(placement_request(plain, 2), index)
    assert d.node_ids == ("b", "b")  # only b offers gvisor
    spec = manifest(regions=["eu"])
    d = sched.schedule(placement_request(parse_workload(spec), 1), index)
    assert d.unplaced == 1
    assert d.reason == "0/2 nodes are available: 1 region mismatch, 1 runtime class unavailable"


def test_node_spec_from_ledger_node() -> None:
    n = LedgerNode(node_id="x", state=NodeState.CORDONED, churn=3, uptime_ratio=0.5)
    spec = node_spec(n)
    assert spec.state == "Cordoned" and spec.churn == 3.0 and spec.uptime_ratio == 0.5


def test_a_polled_ledger_version_ahead_of_the_index_makes_it_behind() -> None:
    """Writes this process did not make (another coordinator's plan, a settings change)
    are noticed by the version poll; this process's own writes in flight are not."""
    ledger = ledger_with_nodes()
    state = state_for(ledger)
    asyncio.run(state.current())
    base = state.version
    state.note_version(base)
    assert not state.behind
    # The ledger is one ahead: maybe our own commit still reporting back.
    state.note_version(base + 1)
    assert not state.behind
    t = state.reserve(CommitPlanInput(plan_id="p", allocations=[alloc("r1", "a", 100)]))
    state.committed(t, CommitPlanResult(version=base + 1, applied=True, allocations=[]))
    assert state.version == base + 1 and not state.behind
    assert state._ahead_since is None  # caught up: nothing to reload
    # Someone else wrote base + 2 and nothing of ours fills it in within the grace.
    state.note_version(base + 2)
    assert not state.behind
    state._ahead_since = 0.0
    assert state.behind
    ledger.version = base + 2
    asyncio.run(state.current())
    assert state.version == base + 2 and not state.behind


def test_scheduler_settings_live_in_the_ledger_and_reach_the_index() -> None:
    ledger = ledger_with_nodes()
    settings = SchedulerSettings(weights={"cost": 0.0, "reliability": 0.9}, sample_min=7)
    version = ledger.set_scheduler(settings)
    carried = Ledger(ledger.export())  # continue-as-new keeps them
    assert carried.scheduler == settings and carried.version == version
    state = state_for(carried)
    asyncio.run(state.current())
    assert state.settings == settings and state.config.sample_min == 7
    assert state.config.weights.reliability == 0.9 and state.config.weights.cost == 0.0
    assert state.config.weights.locality == sched.Weights().locality


def test_workload_weights_override_the_clusters_factor_by_factor() -> None:
    cluster = scheduler_config(SchedulerSettings(weights={"cost": 0.0, "reliability": 0.9}))
    w = parse_workload(manifest(weights={"reliability": 0.1}))
    request = placement_request(w, 1, base_weights=cluster.weights)
    assert request.weights is not None
    assert (request.weights.reliability, request.weights.cost) == (0.1, 0.0)
    # Without weights of its own, a request leaves them to the cluster's config.
    assert placement_request(parse_workload(manifest()), 1).weights is None


def test_settings_factors_are_the_schedulers() -> None:
    assert sched.Weights().as_dict() == DEFAULT_WEIGHTS
    assert tuple(DEFAULT_WEIGHTS) == SCORE_FACTORS == sched.FACTORS


def test_invalid_settings_name_the_problem() -> None:
    with pytest.raises(ValidationError, match="unknown score factor 'costs'"):
        SchedulerSettings(weights={"costs": 1.0})
    with pytest.raises(ValidationError, match="between 0 and 100"):
        SchedulerSettings(weights={"cost": float("nan")})
    with pytest.raises(ValidationError, match="at least one score factor"):
        SchedulerSettings(weights=dict.fromkeys(SCORE_FACTORS, 0.0))
    with pytest.raises(ValidationError, match="sample_percent"):
        SchedulerSettings(sample_percent=0)
