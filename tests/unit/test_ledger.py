"""The ``cluster/<name>`` ledger's bookkeeping (:class:`workflows.cluster.Ledger`), without
Temporal: the commit validator, idempotent retries, pending workloads and their wake-up,
compact carried state, and a Hypothesis property test that no sequence of concurrent plans
ever over-commits a node."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudless.model import (
    Allocation,
    AwaitCapacityInput,
    CommitPlanInput,
    LedgerWorkload,
    NodeRecord,
    NodeState,
    Resources,
    UpsertNodeInput,
)
from workflows.cluster import Ledger, PlanRejected


def res(cpu: int = 0, mem: int = 0, gpu: int = 0) -> Resources:
    return Resources(cpu_millis=cpu, memory_bytes=mem, gpu=gpu)


def node(
    ledger: Ledger,
    node_id: str,
    cpu: int = 1000,
    mem: int = 1000,
    state: NodeState = NodeState.READY,
    labels: dict[str, str] | None = None,
) -> None:
    ledger.upsert_node(
        UpsertNodeInput(
            record=NodeRecord(
                node_id=node_id, zone="z", capacity=res(cpu, mem), labels=labels or {}
            ),
            state=state,
        )
    )


def alloc(rid: str, node_id: str, cpu: int, workload: str = "ns/w", mem: int = 0) -> Allocation:
    return Allocation(replica_id=rid, workload=workload, node_id=node_id, resources=res(cpu, mem))


def commit(ledger: Ledger, plan: CommitPlanInput) -> None:
    ledger.validate(plan)
    ledger.commit(plan)


def test_validator_rejects_overcommit_and_not_ready_nodes_whole() -> None:
    ledger = Ledger()
    node(ledger, "a")
    node(ledger, "b", state=NodeState.CORDONED)
    commit(ledger, CommitPlanInput(plan_id="p1", allocations=[alloc("r1", "a", 600)]))
    with pytest.raises(PlanRejected) as info:
        ledger.validate(
            CommitPlanInput(
                plan_id="p2",
                allocations=[alloc("r2", "a", 300), alloc("r3", "a", 200), alloc("r4", "b", 1)],
            )
        )
    text = str(info.value)
    assert "node 'a' would be over-committed on cpu" in text
    assert "node 'b' is Cordoned, not Ready" in text
    assert ledger.nodes["a"].allocated.cpu_millis == 600  # nothing of p2 applied


def test_release_in_the_same_plan_makes_room() -> None:
    ledger = Ledger()
    node(ledger, "a")
    commit(ledger, CommitPlanInput(plan_id="p1", allocations=[alloc("r1", "a", 800, "ns/low")]))
    commit(
        ledger,
        CommitPlanInput(
            plan_id="p2",
            releases=[alloc("x", "a", 800, "ns/low")],
            allocations=[alloc("r2", "a", 900, "ns/high")],
        ),
    )
    a = ledger.nodes["a"]
    assert a.allocated.cpu_millis == 900 and a.workloads == {"ns/high": 1}


def test_a_shrunken_node_still_accepts_releases() -> None:
    ledger = Ledger()
    node(ledger, "a", cpu=1000)
    commit(ledger, CommitPlanInput(plan_id="p1", allocations=[alloc("r1", "a", 900)]))
    node(ledger, "a", cpu=500)  # the agent now reports less
    commit(ledger, CommitPlanInput(plan_id="p2", releases=[alloc("r1", "a", 900)]))
    assert ledger.nodes["a"].allocated.cpu_millis == 0


def test_gpu_capacity_comes_from_the_node_labels() -> None:
    ledger = Ledger()
    node(ledger, "g", labels={"cloudless.dev/gpu": "1", "cloudless.dev/region": "eu"})
    g = ledger.nodes["g"]
    assert g.capacity.gpu == 1 and g.region == "eu"
    gpu = Allocation(replica_id="r", workload="ns/w", node_id="g", resources=res(1, gpu=1))
    commit(ledger, CommitPlanInput(plan_id="p1", allocations=[gpu]))
    with pytest.raises(PlanRejected, match="over-committed on gpu"):
        ledger.validate(CommitPlanInput(plan_id="p2", allocations=[gpu]))


def test_a_retried_plan_answers_from_cache_without_applying_twice() -> None:
    ledger = Ledger()
    node(ledger, "a")
    plan = CommitPlanInput(plan_id="p1", allocations=[alloc("r1", "a", 600)])
    commit(ledger, plan)
    again = CommitPlanInput(plan_id="p1", allocations=[alloc("r1", "a", 600)])
    ledger.validate(again)  # not rejected although it would not fit twice
    result = ledger.commit(again)
    assert not result.applied and [a.replica_id for a in result.allocations] == ["r1"]
    assert ledger.nodes["a"].allocated.cpu_millis == 600


def test_workload_metadata_lives_while_replicas_are_placed() -> None:
    ledger = Ledger()
    node(ledger, "a")
    meta = LedgerWorkload(labels={"app": "w"}, priority=7, resources=res(100))
    commit(
        ledger,
        CommitPlanInput(
            plan_id="p1",
            allocations=[alloc("r1", "a", 100), alloc("r2", "a", 100)],
            workloads={"ns/w": meta},
        ),
    )
    w = ledger.workloads["ns/w"]
    assert (w.priority, w.labels, w.replicas) == (7, {"app": "w"}, 2)
    commit(ledger, CommitPlanInput(plan_id="p2", releases=[alloc("r1", "a", 100)]))
    assert ledger.workloads["ns/w"].replicas == 1
    commit(ledger, CommitPlanInput(plan_id="p3", releases=[alloc("r2", "a", 100)]))
    assert "ns/w" not in ledger.workloads
    # A double release changes nothing.
    commit(ledger, CommitPlanInput(plan_id="p4", releases=[alloc("r2", "a", 100)]))
    assert ledger.nodes["a"].allocated == Resources() and ledger.nodes["a"].replicas == 0


def test_pending_workloads_are_woken_by_room_they_fit_in() -> None:
    ledger = Ledger()
    node(ledger, "a")
    commit(ledger, CommitPlanInput(plan_id="p1", allocations=[alloc("r1", "a", 900, "ns/hog")]))
    # Registration is refused if the ledger moved since the decision.
    assert not ledger.await_capacity(
        AwaitCapacityInput(workload="ns/big", resources=res(500), version=ledger.version - 1)
    )
    for key, cpu in (("ns/big", 500), ("ns/huge", 5000)):
        assert ledger.await_capacity(
            AwaitCapacityInput(workload=key, resources=res(cpu), version=ledger.version)
        )
    released = ledger.commit(
        CommitPlanInput(plan_id="p2", releases=[alloc("r1", "a", 900, "ns/hog")])
    )
    assert released.woken == ["ns/big"]
    assert set(ledger.pending) == {"ns/huge"}
    joined = ledger.upsert_node(
        UpsertNodeInput(
            record=NodeRecord(node_id="big", capacity=res(8000, 8000)), state=NodeState.JOINING
        )
    )
    assert joined.woken == []  # not Ready yet
    ready = ledger.upsert_node(
        UpsertNodeInput(
            record=NodeRecord(node_id="big", capacity=res(8000, 8000)), state=NodeState.READY
        )
    )
    assert ready.woken == ["ns/huge"] and not ledger.pending


def test_carried_state_round_trips_and_stays_compact() -> None:
    ledger = Ledger()
    for i in range(50):
        node(ledger, f"n{i}", labels={"tier": "edge"})
    allocations = [alloc(f"ns-w-{i:05d}", f"n{i % 50}", 10) for i in range(2000)]
    commit(ledger, CommitPlanInput(plan_id="big", allocations=allocations))
    ledger.await_capacity(
        AwaitCapacityInput(workload="ns/p", resources=res(1), version=ledger.version)
    )
    carried = json.loads(json.dumps(ledger.export()))
    again = Ledger(carried)
    assert again.version == ledger.version
    assert again.nodes == ledger.nodes and again.workloads == ledger.workloads
    assert again.pending == ledger.pending
    assert again.commit(CommitPlanInput(plan_id="big")).allocations == allocations
    per_allocation = len(json.dumps(carried["plans"])) / len(allocations)
    assert per_allocation < 40, per_allocation  # replica id and node id, little else


# ----------------------------------------------------------------------------- property

NODES = ["a", "b", "c"]


@st.composite
def plans(draw: st.DrawFn) -> list[tuple[list[tuple[str, int, int]], list[int]]]:
    """Rounds of concurrently proposed plans: allocations (node, cpu, mem) and releases
    (indices into what was committed so far)."""
    return draw(
        st.lists(
            st.tuples(
                st.lists(
                    st.tuples(st.sampled_from(NODES), st.integers(0, 700), st.integers(0, 700)),
                    max_size=4,
                ),
                st.lists(st.integers(0, 50), max_size=3),
            ),
            min_size=1,
            max_size=30,
        )
    )


@settings(max_examples=300, deadline=None)
@given(plans(), st.lists(st.sampled_from(NODES), max_size=3))
def test_no_sequence_of_plans_ever_overcommits_a_node(
    rounds: list[tuple[list[tuple[str, int, int]], list[int]]], cordon: list[str]
) -> None:
    """Plans decided on stale snapshots arrive in any order: whatever the validator lets
    through, every node stays within capacity and its totals equal the committed sum."""
    ledger = Ledger()
    for n in NODES:
        node(ledger, n, state=NodeState.CORDONED if n in cordon else NodeState.READY)
    committed: list[Allocation] = []
    for i, (allocs, release_idx) in enumerate(rounds):
        releases = [committed[j] for j in sorted(set(release_idx)) if j < len(committed)]
        plan = CommitPlanInput(
            plan_id=f"p{i}",
            allocations=[
                alloc(f"r{i}-{k}", n, cpu, mem=mem) for k, (n, cpu, mem) in enumerate(allocs)
            ],
            releases=releases,
        )
        try:
            ledger.validate(plan)
        except PlanRejected:
            continue
        ledger.commit(plan)
        assert not any(a.node_id in cordon for a in plan.allocations)
        committed = [a for a in committed if a not in releases] + list(plan.allocations)
        for n in NODES:
            entry = ledger.nodes[n]
            assert entry.allocated.fits_within(entry.capacity), entry
            mine = [a for a in committed if a.node_id == n]
            assert entry.allocated.cpu_millis == sum(a.resources.cpu_millis for a in mine)
            assert entry.allocated.memory_bytes == sum(a.resources.memory_bytes for a in mine)
            assert entry.replicas == len(mine)


def test_state_at_5000_nodes_and_50000_replicas_fits_a_temporal_payload() -> None:
    """The carried state (continue-as-new input) and the snapshot query result must stay
    under Temporal's 2 MB payload limit at the issue's scale."""
    from temporalio.contrib.pydantic import pydantic_data_converter

    from cloudless.model import ClusterSnapshot

    ledger = Ledger()
    for i in range(5000):
        node(ledger, f"node-{i:05d}", cpu=8000, mem=16 * 2**30,
             labels={"tier": "standard", "cloudless.dev/region": f"region-{i % 8}"})  # fmt: skip
    meta = LedgerWorkload(resources=res(100, 64 * 2**20))
    for w in range(5000):
        key = f"default/wl-{w:05d}"
        allocations = [
            alloc(f"default-wl-{w:05d}-{r}", f"node-{(w * 7 + r * 501) % 5000:05d}", 100, key,
                  mem=64 * 2**20)
            for r in range(10)
        ]  # fmt: skip
        ledger.commit(
            CommitPlanInput(
                plan_id=f"p{w}",
                allocations=allocations,
                workloads={key: meta.model_copy(update={"labels": {"app": f"wl-{w}"}})},
            )
        )
    converter = pydantic_data_converter.payload_converter
    carried = converter.to_payloads([ledger.export()])[0].data
    snapshot = converter.to_payloads([ledger.snapshot("c")])[0].data
    assert len(carried) < 2_000_000, len(carried)
    assert len(snapshot) < 2_000_000, len(snapshot)
    expanded = converter.from_payloads(
        converter.to_payloads([ledger.snapshot("c")]), [ClusterSnapshot]
    )[0]
    assert len(expanded.nodes) == 5000 and sum(n.replicas for n in expanded.nodes) == 50_000
    assert expanded.nodes[17] == ledger.nodes["node-00017"]
