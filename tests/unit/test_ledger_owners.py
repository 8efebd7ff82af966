"""The ledger's per-workload reservations and their owners (:class:`workflows.cluster.Ledger`):
claims by a workload's first run, refusal of plans from runs that are over, takeover by a
newer run, the reaper's conditional release, node removal and certificate revocation, and
the exact per-workload amounts carried across continue-as-new."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from cloudless.model import (
    Allocation,
    AwaitCapacityInput,
    ClaimWorkloadInput,
    CommitPlanInput,
    LedgerWorkload,
    NodeRecord,
    NodeState,
    ReapWorkloadInput,
    RemoveNodeInput,
    Resources,
    UpsertNodeInput,
)
from workflows.cluster import Ledger, StaleOwner

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def res(cpu: int = 0, mem: int = 0) -> Resources:
    return Resources(cpu_millis=cpu, memory_bytes=mem)


def node(ledger: Ledger, node_id: str, cpu: int = 1000, mem: int = 1000) -> None:
    ledger.upsert_node(
        UpsertNodeInput(
            record=NodeRecord(node_id=node_id, zone="z", capacity=res(cpu, mem)),
            state=NodeState.READY,
        )
    )


def alloc(rid: str, node_id: str, cpu: int, workload: str = "ns/w") -> Allocation:
    return Allocation(replica_id=rid, workload=workload, node_id=node_id, resources=res(cpu))


def place(
    ledger: Ledger, plan_id: str, owner: int, *allocs: Allocation, workload: str = "ns/w"
) -> None:
    plan = CommitPlanInput(
        plan_id=plan_id,
        allocations=list(allocs),
        workloads={workload: LedgerWorkload(resources=allocs[0].resources)},
        owners={workload: owner},
    )
    ledger.validate(plan)
    ledger.commit(plan)


def release(ledger: Ledger, plan_id: str, owner: int, *allocs: Allocation) -> None:
    plan = CommitPlanInput(
        plan_id=plan_id, releases=list(allocs), owners={allocs[0].workload: owner}
    )
    ledger.validate(plan)
    ledger.commit(plan)


def cpu(ledger: Ledger, node_id: str) -> int:
    return ledger.nodes[node_id].allocated.cpu_millis


def test_a_first_run_claims_its_workload_and_frees_what_earlier_runs_left() -> None:
    ledger = Ledger()
    node(ledger, "a")
    first = ledger.claim(ClaimWorkloadInput(workload="ns/w")).owner
    place(ledger, "p1", first, alloc("r1", "a", 300), alloc("r2", "a", 200))
    assert ledger.workloads["ns/w"].owner == first and cpu(ledger, "a") == 500
    # The run was terminated with both replicas placed; the workload is applied again.
    second = ledger.claim(ClaimWorkloadInput(workload="ns/w"))
    assert second.owner > first
    assert second.released == {"a": 2}
    assert cpu(ledger, "a") == 0 and "ns/w" not in ledger.workloads
    assert ledger.nodes["a"].workloads == {} and ledger.nodes["a"].replicas == 0


def test_a_claim_wakes_pending_workloads_that_now_fit() -> None:
    ledger = Ledger()
    node(ledger, "a")
    owner = ledger.claim(ClaimWorkloadInput(workload="ns/w")).owner
    place(ledger, "p1", owner, alloc("r1", "a", 900))
    assert ledger.await_capacity(
        AwaitCapacityInput(workload="ns/big", resources=res(500), version=ledger.version)
    )
    assert ledger.claim(ClaimWorkloadInput(workload="ns/w")).woken == ["ns/big"]


def test_a_run_that_is_over_can_neither_place_nor_release() -> None:
    ledger = Ledger()
    node(ledger, "a")
    old = ledger.claim(ClaimWorkloadInput(workload="ns/w")).owner
    new = ledger.claim(ClaimWorkloadInput(workload="ns/w")).owner
    place(ledger, "p1", new, alloc("n1", "a", 400))
    # The old run's placement activity was still in flight when its run ended.
    late = CommitPlanInput(
        plan_id="late",
        allocations=[alloc("o1", "a", 100)],
        workloads={"ns/w": LedgerWorkload(resources=res(100))},
        owners={"ns/w": old},
    )
    with pytest.raises(StaleOwner, match="newer run"):
        ledger.validate(late)
    # Its release of a replica that went at the claim must not free the new run's room.
    release(ledger, "late-release", old, alloc("o0", "a", 400))
    assert cpu(ledger, "a") == 400 and ledger.nodes["a"].workloads == {"ns/w": 1}


def test_a_newer_run_takes_over_what_an_older_one_committed_after_the_claim() -> None:
    ledger = Ledger()
    node(ledger, "a", cpu=1000)
    old = ledger.claim(ClaimWorkloadInput(workload="ns/w")).owner
    new = ledger.claim(ClaimWorkloadInput(workload="ns/w")).owner
    # The late commit of the old run lands between the new run's claim and its first plan.
    place(ledger, "late", old, alloc("o1", "a", 800))
    assert ledger.workloads["ns/w"].owner == old
    # The new run's plan would not fit beside it, but the takeover makes the room.
    plan = CommitPlanInput(
        plan_id="p1",
        allocations=[alloc("n1", "a", 600)],
        workloads={"ns/w": LedgerWorkload(resources=res(600))},
        owners={"ns/w": new},
    )
    ledger.validate(plan)
    assert ledger.commit(plan).taken_over == ["ns/w"]
    assert cpu(ledger, "a") == 600 and ledger.workloads["ns/w"].owner == new
    assert ledger.nodes["a"].workloads == {"ns/w": 1}


def test_the_reaper_releases_only_what_the_given_owner_still_holds() -> None:
    ledger = Ledger()
    node(ledger, "a")
    node(ledger, "b")
    owner = ledger.claim(ClaimWorkloadInput(workload="ns/w")).owner
    place(ledger, "p1", owner, alloc("r1", "a", 300), alloc("r2", "b", 200))
    wrong = ledger.reap(ReapWorkloadInput(workload="ns/w", owner=owner - 1))
    assert not wrong.reaped and cpu(ledger, "a") == 300
    done = ledger.reap(ReapWorkloadInput(workload="ns/w", owner=owner))
    assert done.reaped and done.replicas == {"a": 1, "b": 1} and done.freed == res(500)
    assert cpu(ledger, "a") == cpu(ledger, "b") == 0 and not ledger.workloads
    assert not ledger.reap(ReapWorkloadInput(workload="ns/w", owner=owner)).reaped  # idempotent


def test_exact_amounts_survive_a_resource_change_and_continue_as_new() -> None:
    """Mid-rollout a workload holds replicas of two sizes on one node; the carried state
    keeps the exact amount, so a reap frees exactly what was reserved."""
    ledger = Ledger()
    node(ledger, "a", cpu=4000)
    owner = ledger.claim(ClaimWorkloadInput(workload="ns/w")).owner
    place(ledger, "p1", owner, alloc("old1", "a", 300), alloc("old2", "a", 300))
    place(ledger, "p2", owner, alloc("new1", "a", 500))  # the template asks for more now
    release(ledger, "p3", owner, alloc("old1", "a", 300))
    assert cpu(ledger, "a") == 800
    carried = json.loads(json.dumps(ledger.export()))
    assert carried["held"] == [["ns/w", "a", {"cpu_millis": 800}]]
    again = Ledger(carried)
    assert again.held == ledger.held and again.nodes == ledger.nodes
    assert again.reap(ReapWorkloadInput(workload="ns/w", owner=owner)).freed == res(800)
    assert again.nodes["a"].allocated == Resources()


def test_a_release_never_takes_more_than_the_workload_holds_on_the_node() -> None:
    ledger = Ledger()
    node(ledger, "a")
    place(ledger, "p1", 0, alloc("r1", "a", 100, "ns/x"), workload="ns/x")
    place(ledger, "p2", 0, alloc("r2", "a", 300, "ns/y"), workload="ns/y")
    # A release claiming more than was reserved (say, a stale per-replica size).
    release(ledger, "p3", 0, alloc("r1", "a", 250, "ns/x"))
    assert cpu(ledger, "a") == 300 and ledger.held == {"ns/y": {"a": res(300)}}


def test_removing_a_node_frees_it_forgets_it_and_revokes_its_certificate() -> None:
    ledger = Ledger()
    node(ledger, "gone")
    node(ledger, "b")
    owner = ledger.claim(ClaimWorkloadInput(workload="ns/w")).owner
    place(ledger, "p1", owner, alloc("r1", "gone", 300), alloc("r2", "b", 300))
    result = ledger.remove_node(
        RemoveNodeInput(
            node_id="gone",
            certificate_serial="ab12",
            certificate_not_after=NOW + timedelta(days=30),
        ),
        NOW,
    )
    assert result.removed and result.revoked and result.released == {"ns/w": 1}
    assert "gone" not in ledger.nodes and ledger.held == {"ns/w": {"b": res(300)}}
    assert ledger.workloads["ns/w"].replicas == 1
    assert set(ledger.revoked) == {"ab12"}
    # A workload's late release on the removed node changes nothing.
    release(ledger, "p2", owner, alloc("r1", "gone", 300))
    assert ledger.workloads["ns/w"].replicas == 1 and cpu(ledger, "b") == 300
    # Revocations expire with the certificate, and survive continue-as-new until then.
    assert set(Ledger(json.loads(json.dumps(ledger.export()))).revoked) == {"ab12"}
    later = NOW + timedelta(days=31)
    ledger.remove_node(RemoveNodeInput(node_id="other"), later)
    assert ledger.revoked == {}


def test_a_certificate_that_already_expired_is_not_listed() -> None:
    ledger = Ledger()
    node(ledger, "a")
    result = ledger.remove_node(
        RemoveNodeInput(node_id="a", certificate_serial="ff", certificate_not_after=NOW), NOW
    )
    assert result.removed and not result.revoked and ledger.revoked == {}


def test_removing_a_node_revokes_every_unexpired_certificate_renewals_issued_it() -> None:
    ledger = Ledger()
    node(ledger, "a")
    result = ledger.remove_node(
        RemoveNodeInput(
            node_id="a",
            certificate_serial="c3",
            certificate_not_after=NOW + timedelta(days=30),
            more_certificates={
                "c2": NOW + timedelta(days=10),
                "c1": NOW - timedelta(seconds=1),  # expired: refused anyway
            },
        ),
        NOW,
    )
    assert result.revoked
    assert {s: r.not_after for s, r in ledger.revoked.items()} == {
        "c3": NOW + timedelta(days=30),
        "c2": NOW + timedelta(days=10),
    }
