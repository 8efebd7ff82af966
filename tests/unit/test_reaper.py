"""The reaper's pure decisions (:mod:`policies.reaper`), by table and by property, and the
ledger equation over simulated workload runs: whatever runs are started, killed, placed
and released (late commits of dead runs included), once the reaper has run, every node's
reservations equal the sum of the live replicas' requests on it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cloudless.model import (
    Allocation,
    ClaimWorkloadInput,
    CommitPlanInput,
    LedgerWorkload,
    NodeRecord,
    NodeState,
    ReapWorkloadInput,
    Resources,
    UpsertNodeInput,
)
from policies.reaper import (
    AgentReplica,
    HeldWorkload,
    OrphanKind,
    RunStatus,
    WorkloadRun,
    least_recently_seen,
    orphaned_replicas,
    reap_reason,
    workloads_to_reap,
)
from workflows.cluster import Ledger, PlanRejected, StaleOwner

# ----------------------------------------------------------------------------- reservations


@pytest.mark.parametrize(
    ("owner", "run", "reaped"),
    [
        (5, None, True),
        (5, WorkloadRun(RunStatus.ABSENT), True),
        (5, WorkloadRun(RunStatus.CLOSED, "Terminated"), True),
        (5, WorkloadRun(RunStatus.FOREIGN, "cloudless-other"), True),
        (5, WorkloadRun(RunStatus.RUNNING), False),  # its status was not asked
        (5, WorkloadRun(RunStatus.RUNNING, owner=5), False),
        (5, WorkloadRun(RunStatus.RUNNING, owner=9), True),  # an earlier run's leftovers
        (0, WorkloadRun(RunStatus.RUNNING, owner=9), True),  # placed with no owner
        (9, WorkloadRun(RunStatus.RUNNING, owner=5), False),  # cannot happen: not guessed
        (0, WorkloadRun(RunStatus.RUNNING, owner=0), False),
    ],
)
def test_reap_reason_by_table(owner: int, run: WorkloadRun | None, reaped: bool) -> None:
    reason = reap_reason(HeldWorkload("ns/w", owner), run)
    assert (reason is not None) == reaped, reason


def test_the_reason_says_why() -> None:
    closed = reap_reason(HeldWorkload("ns/w", 3), WorkloadRun(RunStatus.CLOSED, "Terminated"))
    assert closed == "its workflow is closed (Terminated)"


def test_keys_not_looked_at_are_never_reaped_and_the_limit_holds() -> None:
    held = [HeldWorkload(f"ns/w{i}", 1) for i in range(10)]
    runs: dict[str, WorkloadRun | None] = {f"ns/w{i}": None for i in range(0, 10, 2)}
    reaps = workloads_to_reap(held, runs, limit=3)
    assert [r.key for r in reaps] == ["ns/w0", "ns/w2", "ns/w4"]
    assert all(r.owner == 1 for r in reaps)


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5)), unique_by=lambda t: t[0]),
    st.dictionaries(
        st.integers(0, 3),
        st.one_of(
            st.none(),
            st.builds(
                WorkloadRun,
                st.sampled_from(list(RunStatus)),
                st.just(""),
                st.integers(0, 5),
            ),
        ),
    ),
    st.integers(1, 5),
)
def test_reaps_are_bounded_and_only_of_what_was_judged(
    held: list[tuple[int, int]], runs: dict[int, WorkloadRun | None], limit: int
) -> None:
    items = [HeldWorkload(f"ns/w{k}", owner) for k, owner in held]
    judged = {f"ns/w{k}": r for k, r in runs.items()}
    reaps = workloads_to_reap(items, judged, limit=limit)
    assert len(reaps) <= limit
    owners = {h.key: h.owner for h in items}
    for r in reaps:
        run = judged[r.key]  # never a key that was not looked at
        assert r.owner == owners[r.key]
        assert run is None or run.status != RunStatus.RUNNING or run.owner > r.owner


# ----------------------------------------------------------------------------- replicas

NOW = 1_000_000.0


def test_orphans_by_kind_with_a_grace_for_young_starts() -> None:
    listed = [
        AgentReplica("a-1", "ns/a", epoch=3, started_at=NOW - 600),  # placed here: kept
        AgentReplica("a-2", "ns/a", epoch=1, started_at=NOW - 600),  # moved away
        AgentReplica("a-3", "ns/a", epoch=2, started_at=NOW - 600),  # placed again since
        AgentReplica("a-4", "ns/a", epoch=0, started_at=NOW - 600),  # epoch unknown: kept
        AgentReplica("b-1", "ns/b", epoch=1, started_at=NOW - 600),  # workload gone
        AgentReplica("b-2", "ns/b", epoch=1, started_at=NOW - 5),  # too young
        AgentReplica("b-3", "ns/b", epoch=1, started_at=0.0),  # never started: not young
        AgentReplica("c-1", "ns/c", epoch=1, started_at=NOW - 600),  # not learnt: kept
    ]
    assigned = {"ns/a": {"a-1": 3, "a-3": 4, "a-4": 2}, "ns/b": None}
    orphans = orphaned_replicas(listed, assigned, now=NOW, grace=60)
    assert [(o.replica_id, o.kind) for o in orphans] == [
        ("a-2", OrphanKind.NOT_PLACED_HERE),
        ("a-3", OrphanKind.OLDER_PLACEMENT),
        ("b-1", OrphanKind.WORKLOAD_GONE),
        ("b-3", OrphanKind.WORKLOAD_GONE),
    ]
    assert len(orphaned_replicas(listed, assigned, now=NOW, grace=60, limit=2)) == 2


@given(
    st.lists(
        st.builds(
            AgentReplica,
            st.sampled_from([f"r{i}" for i in range(8)]),
            st.sampled_from(["ns/a", "ns/b", "ns/c"]),
            st.integers(0, 4),
            st.sampled_from([0.0, NOW - 1, NOW - 1000]),
        ),
        unique_by=lambda r: r.replica_id,
    ),
    st.dictionaries(
        st.sampled_from(["ns/a", "ns/b", "ns/c"]),
        st.one_of(
            st.none(),
            st.dictionaries(st.sampled_from([f"r{i}" for i in range(8)]), st.integers(0, 4)),
        ),
    ),
)
def test_a_replica_its_running_workload_places_here_is_never_an_orphan(
    listed: list[AgentReplica], assigned: dict[str, dict[str, int] | None]
) -> None:
    orphans = {o.replica_id for o in orphaned_replicas(listed, assigned, now=NOW, grace=60)}
    for r in listed:
        placed = assigned.get(r.workload, {})
        if r.workload not in assigned or NOW - r.started_at < 60:
            assert r.replica_id not in orphans  # unknown, or too young to judge
        elif placed is not None and r.replica_id in placed:
            stale = 0 < r.epoch < placed[r.replica_id]
            assert (r.replica_id in orphans) == stale
        else:
            assert r.replica_id in orphans


def test_least_recently_seen_gets_round_everything() -> None:
    seen = {"a": 5.0, "b": 1.0}
    assert least_recently_seen(["a", "b", "c", "d"], seen, 2) == ["c", "d"]
    assert least_recently_seen(["a", "b"], seen, 1) == ["b"]


# ----------------------------------------------------------------------------- the equation

KEYS = ["ns/a", "ns/b"]
NODES = ["n1", "n2", "n3"]


@dataclass
class Run:
    owner: int
    alive: bool = True
    #: replica id -> (node, cpu) this run placed and has not released.
    replicas: dict[str, tuple[str, int]] = field(default_factory=dict)


Op = tuple[str, int, int, int]  # (kind, workload index, node index, cpu or pick)

OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["start", "place", "place", "release", "kill", "late_place", "late_release", "reap"]
        ),
        st.integers(0, len(KEYS) - 1),
        st.integers(0, len(NODES) - 1),
        st.integers(1, 400),
    ),
    max_size=40,
)


def _plan(
    pid: str, key: str, owner: int, allocs: list[Allocation], releases: list[Allocation]
) -> CommitPlanInput:
    return CommitPlanInput(
        plan_id=pid,
        allocations=allocs,
        releases=releases,
        workloads={key: LedgerWorkload(resources=allocs[0].resources)} if allocs else {},
        owners={key: owner},
    )


def _reap_all(ledger: Ledger, runs: dict[str, list[Run]]) -> None:
    """One reaper pass as the activity does it, with every running run's owner known."""
    held = [HeldWorkload(k, m.owner) for k, m in ledger.workloads.items()]
    facts: dict[str, WorkloadRun | None] = {}
    for key in ledger.workloads:
        current = runs[key][-1] if runs.get(key) else None
        if current is None:
            facts[key] = None
        elif current.alive:
            facts[key] = WorkloadRun(RunStatus.RUNNING, owner=current.owner)
        else:
            facts[key] = WorkloadRun(RunStatus.CLOSED, "Terminated")
    for reap in workloads_to_reap(held, facts):
        ledger.reap(ReapWorkloadInput(workload=reap.key, owner=reap.owner))


@settings(max_examples=400, deadline=None)
@given(OPS)
# A terminated run's placement lands after the next run placed (refused as stale) ...
@example([("start", 0, 0, 1), ("kill", 0, 0, 1), ("start", 0, 0, 1), ("place", 0, 0, 100),
          ("late_place", 0, 1, 200)])  # fmt: skip
# ... or before it did (taken over at its first placement, or reaped) ...
@example([("start", 0, 0, 1), ("kill", 0, 0, 1), ("start", 0, 0, 1), ("late_place", 0, 1, 200),
          ("place", 0, 0, 100)])  # fmt: skip
@example([("start", 0, 0, 1), ("kill", 0, 0, 1), ("start", 0, 0, 1),
          ("late_place", 0, 1, 200)])  # fmt: skip
# ... and a dead run's late release never frees what the live run holds.
@example([("start", 0, 0, 1), ("place", 0, 0, 300), ("kill", 0, 0, 1), ("start", 0, 0, 1),
          ("place", 0, 0, 300), ("late_release", 0, 0, 1)])  # fmt: skip
# A run killed with replicas placed, never applied again: reaped.
@example([("start", 1, 2, 1), ("place", 1, 2, 300), ("kill", 1, 0, 1)])
def test_after_the_reaper_reservations_equal_the_live_replicas(ops: list[Op]) -> None:
    ledger = Ledger()
    for n in NODES:
        ledger.upsert_node(
            UpsertNodeInput(
                record=NodeRecord(node_id=n, capacity=Resources(cpu_millis=1000)),
                state=NodeState.READY,
            )
        )
    runs: dict[str, list[Run]] = {k: [] for k in KEYS}
    seq = 0
    for kind, ki, ni, amount in ops:
        seq += 1
        key, node_id = KEYS[ki], NODES[ni]
        history = runs[key]
        current = history[-1] if history else None
        dead = [r for r in history if not r.alive]
        if kind == "start" and (current is None or not current.alive):
            # Temporal runs one execution per workflow id: a new one only after the last.
            history.append(Run(ledger.claim(ClaimWorkloadInput(workload=key)).owner))
        elif kind == "place" and current is not None and current.alive:
            a = Allocation(
                replica_id=f"r{seq}",
                workload=key,
                node_id=node_id,
                resources=Resources(cpu_millis=amount),
            )
            plan = _plan(f"p{seq}", key, current.owner, [a], [])
            try:
                ledger.validate(plan)
            except PlanRejected:
                continue  # no room: the run decides again later
            ledger.commit(plan)  # a live run is never refused as stale
            current.replicas[a.replica_id] = (node_id, amount)
        elif kind == "release" and current is not None and current.replicas:
            rid = sorted(current.replicas)[amount % len(current.replicas)]
            where, cpu = current.replicas.pop(rid)
            a = Allocation(
                replica_id=rid, workload=key, node_id=where, resources=Resources(cpu_millis=cpu)
            )
            ledger.commit(_plan(f"p{seq}", key, current.owner, [], [a]))
        elif kind == "kill" and current is not None:
            current.alive = False
        elif kind == "late_place" and dead:
            run = dead[amount % len(dead)]
            a = Allocation(
                replica_id=f"late{seq}",
                workload=key,
                node_id=node_id,
                resources=Resources(cpu_millis=amount),
            )
            plan = _plan(f"p{seq}", key, run.owner, [a], [])
            try:
                ledger.validate(plan)
            except (PlanRejected, StaleOwner):
                continue
            ledger.commit(plan)
            run.replicas[a.replica_id] = (node_id, amount)
        elif kind == "late_release" and dead:
            run = dead[amount % len(dead)]
            if run.replicas:
                rid = sorted(run.replicas)[0]
                where, cpu = run.replicas.pop(rid)
                a = Allocation(
                    replica_id=rid,
                    workload=key,
                    node_id=where,
                    resources=Resources(cpu_millis=cpu),
                )
                ledger.commit(_plan(f"p{seq}", key, run.owner, [], [a]))
        elif kind == "reap":
            _reap_all(ledger, runs)
        for entry in ledger.nodes.values():  # bookkeeping invariant, after every step
            total = Resources()
            for key_held, per_node in ledger.held.items():
                if entry.node_id in per_node:
                    total = total + per_node[entry.node_id]
                    assert entry.workloads.get(key_held, 0) > 0
            assert entry.allocated == total
            assert entry.allocated.fits_within(entry.capacity)
    _reap_all(ledger, runs)
    for n in NODES:
        live = [
            cpu
            for history in runs.values()
            for run in history
            if run.alive
            for where, cpu in run.replicas.values()
            if where == n
        ]
        entry = ledger.nodes[n]
        assert entry.allocated.cpu_millis == sum(live), (n, entry, runs)
        assert entry.replicas == len(live)
