"""Properties of the scheduler on random clusters and requests, checked against a plain
per-node reference implementation of every filter written here from the rules alone.

- every pick passes every filter at the moment it is made (so no node is over-committed in
  any dimension, anti-affinity and spread hold inside the batch);
- when replicas are left over, the reason counts are exactly the reference's;
- sampled decisions are feasible too, and never beat the full scan, whose best score they
  report;
- the same index, request and seed give the same decision; a full scan does not depend on
  the order nodes joined in;
- index writes round-trip: allocate/release, upsert/remove, snapshots stay isolated.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from policies.scheduler import (
    INSUFFICIENT_BANDWIDTH,
    INSUFFICIENT_CPU,
    INSUFFICIENT_GPU,
    INSUFFICIENT_MEMORY,
    INSUFFICIENT_STORAGE,
    NODE_AFFINITY_MISMATCH,
    NOT_READY,
    REGION_MISMATCH,
    RUNTIME_CLASS_MISSING,
    RUNTIME_MISSING,
    SELECTOR_MISMATCH,
    SPREAD_SKEW_EXCEEDED,
    UNTOLERATED_TAINT,
    WORKLOAD_AFFINITY_MISMATCH,
    WORKLOAD_ANTI_AFFINITY_CONFLICT,
    ZONE_MISMATCH,
    Decision,
    LabelSelector,
    MatchExpression,
    NodeAffinity,
    NodeIndex,
    NodeSelectorTerm,
    NodeSpec,
    PlacementRequest,
    Resources,
    SpreadConstraint,
    Taint,
    Toleration,
    WorkloadAffinity,
    WorkloadAffinityTerm,
    first_failure,
    schedule,
)
from policies.scheduler.testing import GI, MI

ZONES = {"a": "r1", "b": "r1", "c": "r2", "": ""}
TAINTS = [
    Taint("dedicated", "gpu", "NoSchedule"),
    Taint("maintenance", "", "NoExecute"),
    Taint("battery", "low", "PreferNoSchedule"),
]
TOLERATIONS = [
    Toleration("dedicated", "Equal", "gpu"),
    Toleration("maintenance", "Exists"),
    Toleration("", "Exists", effect="PreferNoSchedule"),
]
WORKLOADS: dict[str, dict[str, str]] = {
    "ns/web": {"app": "web"},
    "ns/db": {"app": "db", "tier": "data"},
    "ns/cache": {"app": "cache", "tier": "data"},
}
OWN = "ns/web"
SELECTORS = [LabelSelector({"app": "web"}), LabelSelector({"tier": "data"})]
FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


# --- generators ------------------------------------------------------------------------


@st.composite
def node_specs(draw: st.DrawFn, i: int) -> NodeSpec:
    zone = draw(st.sampled_from(sorted(ZONES)))
    cpu = draw(st.sampled_from([4000, 8000, 4000, 2000, 1000, 0]))
    memory = draw(st.sampled_from([4 * GI, 8 * GI, 4 * GI, 2 * GI, 1 * GI, 0]))
    used = draw(st.sampled_from([0.0, 0.0, 0.25, 0.5, 0.9]))
    labels = {}
    if disk := draw(st.sampled_from(["ssd", "hdd", None])):
        labels["disk"] = disk
    if cores := draw(st.sampled_from(["2", "8", "16", None])):
        labels["cores"] = cores
    return NodeSpec(
        node_id=f"n{i:02d}",
        capacity=Resources(
            cpu,
            memory,
            draw(st.sampled_from([4 * GI, 1 * GI, 0])),
            draw(st.sampled_from([1, 0, 2])),
            draw(st.sampled_from([100, 30, 0])),
        ),
        allocated=Resources(int(cpu * used), int(memory * used)),
        zone=zone,
        region=ZONES[zone],
        labels=labels,
        state=draw(st.sampled_from(["Ready"] * 10 + ["Suspect", "Draining"])),
        runtimes=frozenset(
            draw(st.sampled_from([("docker", "exec")] * 6 + [("exec",), ("docker",)]))
        ),
        runtime_classes=frozenset(draw(st.sampled_from([("runc", "gvisor"), ("runc",)]))),
        taints=draw(
            st.sampled_from(
                [()] * 8 + [(TAINTS[0],), (TAINTS[1],), (TAINTS[2],), (TAINTS[0], TAINTS[2])]
            )
        ),
        uptime_ratio=draw(st.sampled_from([0.5, 0.9, 1.0])),
        churn=float(draw(st.integers(0, 5))),
        cost_per_core_hour=draw(st.sampled_from([0.0, 0.01, 0.02])),
        latency_ms=float(draw(st.integers(0, 100))),
    )


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[NodeSpec], list[tuple[int, str]]]:
    n = draw(st.integers(1, 10))
    specs = [draw(node_specs(i)) for i in range(n)]
    replicas = draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(sorted(WORKLOADS))), max_size=8)
    )
    return specs, replicas


@st.composite
def roomy_clusters(draw: st.DrawFn) -> tuple[list[NodeSpec], list[tuple[int, str]]]:
    """Ready, untainted nodes with room, so workload constraints decide where replicas go."""
    n = draw(st.integers(2, 9))
    specs = []
    for i in range(n):
        zone = draw(st.sampled_from(sorted(ZONES)))
        cpu = draw(st.sampled_from([2000, 4000, 8000]))
        specs.append(
            NodeSpec(
                f"n{i:02d}",
                Resources(cpu, cpu * MI),
                Resources(draw(st.sampled_from([0, 500, 1000]))),
                zone=zone,
                region=ZONES[zone],
                cost_per_core_hour=draw(st.sampled_from([0.0, 0.01])),
            )
        )
    replicas = draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(sorted(WORKLOADS))), max_size=8)
    )
    return specs, replicas


@st.composite
def workload_requests(draw: st.DrawFn) -> PlacementRequest:
    """Always one or two workload constraints (affinity, anti-affinity, spread)."""
    on = draw(
        st.sets(st.sampled_from(["affinity", "anti", "spread", "spread2"]), min_size=1, max_size=2)
    )
    spread = tuple(
        SpreadConstraint(
            max_skew=draw(st.integers(1, 2)),
            topology_key=draw(st.sampled_from(["zone", "node", "region"])),
            when_unsatisfiable=draw(
                st.sampled_from(["DoNotSchedule", "DoNotSchedule", "ScheduleAnyway"])
            ),
            selector=draw(st.sampled_from([None, None, *SELECTORS])),
        )
        for kind in ("spread", "spread2")
        if kind in on
    )
    return PlacementRequest(
        count=draw(st.integers(1, 12)),
        resources=Resources(500, 500 * MI),
        workload_key=OWN,
        workload_labels=WORKLOADS[OWN],
        workload_affinity=WorkloadAffinity(
            required=draw(st.sampled_from(WORKLOAD_TERMS[2:])) if "affinity" in on else ()
        ),
        workload_anti_affinity=WorkloadAffinity(
            required=draw(st.sampled_from(WORKLOAD_TERMS[2:])) if "anti" in on else ()
        ),
        spread=spread,
        strategy=draw(st.sampled_from(["binpack", "spread", "zone-spread"])),
        sample_size=draw(st.sampled_from([None, None, "auto", 1, 2])),
    )


def build(specs: list[NodeSpec], replicas: list[tuple[int, str]]) -> NodeIndex:
    index = NodeIndex(specs)
    for key, labels in WORKLOADS.items():
        index.register_workload(key, labels)
    for i, key in replicas:
        index.allocate(specs[i].node_id, Resources(), workload_key=key)
    return index


WEB_SEL = LabelSelector({"app": "web"})
DATA_SEL = LabelSelector({"tier": "data"})
WORKLOAD_TERMS: list[tuple[WorkloadAffinityTerm, ...]] = [
    (),
    (),
    (WorkloadAffinityTerm(WEB_SEL, "node"),),
    (WorkloadAffinityTerm(WEB_SEL, "zone"),),
    (WorkloadAffinityTerm(DATA_SEL, "region"),),
    (WorkloadAffinityTerm(DATA_SEL, "node"),),
]


KINDS = [
    "class",
    "zones",
    "regions",
    "selector",
    "tolerations",
    "node_affinity",
    "affinity",
    "anti",
    "spread",
]


@st.composite
def requests(draw: st.DrawFn) -> PlacementRequest:
    """A request with up to three kinds of constraint, so that most examples place some."""
    on = draw(st.sets(st.sampled_from(KINDS), max_size=3))
    r = PlacementRequest(
        count=draw(st.integers(1, 12)),
        resources=Resources(
            draw(st.sampled_from([500, 1000, 0, 2000])),
            draw(st.sampled_from([256 * MI, 1 * GI, 0, 2 * GI])),
            draw(st.sampled_from([0, 0, GI])),
            draw(st.sampled_from([0, 0, 0, 1])),
            draw(st.sampled_from([0, 0, 10])),
        ),
        workload_key=OWN,
        workload_labels=WORKLOADS[OWN],
        runtime=draw(st.sampled_from(["docker", "exec"])),
        strategy=draw(st.sampled_from(["binpack", "spread", "zone-spread"])),
        sample_size=draw(st.sampled_from([None, None, "auto", 1, 2, 3])),
    )
    changes: dict[str, object] = {}
    if "class" in on:
        changes["runtime_class"] = draw(st.sampled_from(["runc", "gvisor"]))
    if "zones" in on:
        changes["zones"] = draw(st.sampled_from([frozenset("ab"), frozenset("c")]))
    if "regions" in on:
        changes["regions"] = draw(st.sampled_from([frozenset({"r1"}), frozenset({"r2"})]))
    if "selector" in on:
        changes["node_selector"] = {"disk": "ssd"}
    if "tolerations" in on:
        changes["tolerations"] = tuple(
            draw(st.lists(st.sampled_from(TOLERATIONS), min_size=1, max_size=2, unique=True))
        )
    if "node_affinity" in on:
        changes["node_affinity"] = NodeAffinity(
            required=draw(
                st.sampled_from(
                    [
                        (NodeSelectorTerm((MatchExpression("cores", "Gt", ("4",)),)),),
                        (
                            NodeSelectorTerm((MatchExpression("disk", "In", ("ssd",)),)),
                            NodeSelectorTerm((MatchExpression("cores", "DoesNotExist"),)),
                        ),
                    ]
                )
            )
        )
    if "affinity" in on:
        changes["workload_affinity"] = WorkloadAffinity(
            required=draw(st.sampled_from(WORKLOAD_TERMS[2:]))
        )
    if "anti" in on:
        changes["workload_anti_affinity"] = WorkloadAffinity(
            required=draw(st.sampled_from(WORKLOAD_TERMS[2:]))
        )
    if "spread" in on:
        changes["spread"] = (
            SpreadConstraint(
                max_skew=draw(st.integers(1, 2)),
                topology_key=draw(st.sampled_from(["zone", "node", "region"])),
                when_unsatisfiable=draw(st.sampled_from(["DoNotSchedule", "ScheduleAnyway"])),
                selector=draw(st.sampled_from([None, *SELECTORS])),
            ),
        )
    return dataclasses.replace(r, **changes)  # type: ignore[arg-type]


# --- the reference: one node at a time, straight from the rules --------------------------


class Reference:
    """Current usage and replica counts, and the first filter a node fails."""

    def __init__(self, index: NodeIndex, request: PlacementRequest) -> None:
        self.request = request
        self.specs = {n: index.node(n) for n in index}
        self.used = {n: list(s.allocated.as_tuple()) for n, s in self.specs.items()}
        self.replicas = {n: Counter(index.node_workloads(n)) for n in self.specs}
        keys = set(WORKLOADS) | {k for c in self.replicas.values() for k in c}
        self.labels = {k: dict(index.workload_labels(k)) for k in keys}

    def place(self, node_id: str) -> None:
        for d, x in enumerate(self.request.resources.as_tuple()):
            self.used[node_id][d] += x
        self.replicas[node_id][self.request.workload_key] += 1

    def static_failure(self, s: NodeSpec) -> str | None:
        r = self.request
        if s.state != "Ready":
            return NOT_READY
        if r.runtime not in s.runtimes:
            return RUNTIME_MISSING
        if r.runtime_class is not None and r.runtime_class not in s.runtime_classes:
            return RUNTIME_CLASS_MISSING
        if r.regions and s.region not in r.regions:
            return REGION_MISMATCH
        if r.zones and s.zone not in r.zones:
            return ZONE_MISMATCH
        if any(s.labels.get(k) != v for k, v in r.node_selector.items()):
            return SELECTOR_MISMATCH
        if any(t.effect != "PreferNoSchedule" and not r.tolerates(t) for t in s.taints):
            return UNTOLERATED_TAINT
        terms = r.node_affinity.required
        if terms and not any(t.matches(s.labels) for t in terms):
            return NODE_AFFINITY_MISMATCH
        return None

    def failure(self, node_id: str) -> str | None:
        s = self.specs[node_id]
        if (reason := self.static_failure(s)) is not None:
            return reason
        r = self.request
        need = r.resources.as_tuple()
        cap = s.capacity.as_tuple()
        for d, reason in (
            (1, INSUFFICIENT_MEMORY),
            (0, INSUFFICIENT_CPU),
            (2, INSUFFICIENT_STORAGE),
            (3, INSUFFICIENT_GPU),
            (4, INSUFFICIENT_BANDWIDTH),
        ):
            if need[d] > 0 and self.used[node_id][d] + need[d] > cap[d]:
                return reason
        for term in r.workload_affinity.required:
            if not self.domain(s, term.topology_key):
                return WORKLOAD_AFFINITY_MISMATCH
            first = self.total(term.selector) == 0 and term.selector.matches(r.workload_labels)
            if not first and self.count(s, term.topology_key, term.selector) == 0:
                return WORKLOAD_AFFINITY_MISMATCH
        for term in r.workload_anti_affinity.required:
            if self.domain(s, term.topology_key) and self.count(
                s, term.topology_key, term.selector
            ):
                return WORKLOAD_ANTI_AFFINITY_CONFLICT
        for c in r.spread:
            if c.when_unsatisfiable != "DoNotSchedule":
                continue
            if not self.domain(s, c.topology_key):
                return SPREAD_SKEW_EXCEEDED
            eligible = [
                e
                for e in self.specs.values()
                if self.static_failure(e) is None and self.domain(e, c.topology_key)
            ]
            least = min(self.count(e, c.topology_key, c.selector) for e in eligible)
            own = 1 if c.selector is None or c.selector.matches(r.workload_labels) else 0
            if self.count(s, c.topology_key, c.selector) + own - least > c.max_skew:
                return SPREAD_SKEW_EXCEEDED
        return None

    def domain(self, s: NodeSpec, key: str) -> str:
        return s.node_id if key == "node" else s.zone if key == "zone" else s.region

    def matches(self, selector: LabelSelector | None, workload: str) -> bool:
        if selector is None:
            return workload == self.request.workload_key
        return selector.matches(self.labels[workload])

    def on(self, node_id: str, selector: LabelSelector | None) -> int:
        return sum(c for w, c in self.replicas[node_id].items() if self.matches(selector, w))

    def total(self, selector: LabelSelector | None) -> int:
        return sum(self.on(n, selector) for n in self.specs)

    def count(self, s: NodeSpec, key: str, selector: LabelSelector | None) -> int:
        dom = self.domain(s, key)
        return sum(
            self.on(n, selector) for n, e in self.specs.items() if self.domain(e, key) == dom
        )


def replay(index: NodeIndex, request: PlacementRequest, decision: Decision) -> Reference:
    """Check every pick against the reference at the moment it was made."""
    ref = Reference(index, request)
    for pick in decision.picks:
        assert ref.failure(pick.node_id) is None, (pick.node_id, ref.failure(pick.node_id))
        ref.place(pick.node_id)
    return ref


# --- properties ------------------------------------------------------------------------


@FAST
@given(clusters(), requests(), st.integers(0, 3))
def test_every_pick_is_feasible_and_leftovers_fit_nowhere(
    cluster: tuple[list[NodeSpec], list[tuple[int, str]]], request: PlacementRequest, seed: int
) -> None:
    index = build(*cluster)
    decision = schedule(request, index, rng_seed=seed)
    assert len(decision.picks) + decision.unplaced == request.count
    ref = replay(index, request, decision)
    # never over-committed in any dimension on a node this decision used
    for node_id, k in Counter(decision.node_ids).items():
        spec = index.node(node_id)
        for d, (cap, used, need) in enumerate(
            zip(
                spec.capacity.as_tuple(),
                spec.allocated.as_tuple(),
                request.resources.as_tuple(),
                strict=True,
            )
        ):
            assert used + k * need <= cap, (node_id, d)
    event(f"picks: {min(len(decision.picks), 3)}")
    for reason in decision.reasons:
        event(f"unplaced: {reason}")
    if decision.unplaced:
        failures = Counter(ref.failure(n) for n in ref.specs)
        assert None not in failures
        assert decision.reasons == dict(failures)
        assert decision.reason.startswith(f"0/{len(index)} nodes are available")
    assert all(0.0 <= p.score <= 100.0 for p in decision.picks)


@FAST
@given(roomy_clusters(), workload_requests(), st.integers(0, 3))
def test_workload_constraints_hold_at_every_pick_of_a_batch(
    cluster: tuple[list[NodeSpec], list[tuple[int, str]]], request: PlacementRequest, seed: int
) -> None:
    index = build(*cluster)
    decision = schedule(request, index, rng_seed=seed)
    event(f"picks: {min(len(decision.picks), 4)}")
    ref = replay(index, request, decision)
    if decision.unplaced:
        failures = Counter(ref.failure(n) for n in ref.specs)
        assert None not in failures
        assert decision.reasons == dict(failures)


@FAST
@given(clusters(), requests())
def test_anti_affinity_is_never_violated(
    cluster: tuple[list[NodeSpec], list[tuple[int, str]]], request: PlacementRequest
) -> None:
    request = dataclasses.replace(
        request,
        workload_anti_affinity=WorkloadAffinity(
            required=(WorkloadAffinityTerm(LabelSelector({"app": "web"}), "zone"),)
        ),
    )
    index = build(*cluster)
    decision = schedule(request, index)
    zones = [index.node(n).zone for n in decision.node_ids]
    with_zone = [z for z in zones if z]
    assert len(with_zone) == len(set(with_zone))
    for z in with_zone:
        assert not any(index.node(n).zone == z and index.node_workloads(n).get(OWN) for n in index)


@FAST
@given(clusters(), requests(), st.integers(0, 5), st.integers(1, 4))
def test_sampled_decisions_are_feasible_and_report_their_gap(
    cluster: tuple[list[NodeSpec], list[tuple[int, str]]],
    request: PlacementRequest,
    seed: int,
    sample: int,
) -> None:
    index = build(*cluster)
    sampled = dataclasses.replace(request, sample_size=sample, count=max(1, request.count))
    decision = schedule(sampled, index, rng_seed=seed, compare_full_scan=True)
    replay(index, sampled, decision)
    full = schedule(dataclasses.replace(sampled, sample_size=None, count=1), index)
    if not decision.picks:
        assert not full.picks
        return
    assert decision.full_scan_best == full.picks[0].score
    gap, best, pick = decision.score_gap, decision.full_scan_best, decision.picks[0].score
    assert gap is not None and gap >= 0.0
    # The gap is the first pick's shortfall (none if it is the best). A difference of
    # floats: `best - (best - pick)` is not always `pick` again, so it is not compared
    # exactly (30.3 - (30.3 - 10.1) == 10.099999999999998).
    assert math.isclose(pick + gap, max(best, pick), rel_tol=0.0, abs_tol=1e-9), (pick, best, gap)
    assert pick <= full.picks[0].score + 1e-9


@FAST
@given(clusters(), requests(), st.integers(0, 1000), st.randoms(use_true_random=False))
def test_same_input_same_decision(
    cluster: tuple[list[NodeSpec], list[tuple[int, str]]],
    request: PlacementRequest,
    seed: int,
    rnd: random.Random,
) -> None:
    specs, replicas = cluster
    index = build(specs, replicas)
    first = schedule(request, index, rng_seed=seed)
    assert schedule(request, index, rng_seed=seed) == first
    assert schedule(request, index.snapshot(), rng_seed=seed) == first
    # a full scan does not depend on the order nodes joined in
    full = dataclasses.replace(request, sample_size=None)
    order = list(range(len(specs)))
    rnd.shuffle(order)
    shuffled = build([specs[i] for i in order], [(order.index(i), k) for i, k in replicas])
    assert schedule(full, shuffled).node_ids == schedule(full, index).node_ids


# --- index round trips -------------------------------------------------------------------


def columns_of(index: NodeIndex) -> dict[str, object]:
    cols = index.columns()
    out: dict[str, object] = {
        f.name: np.array(getattr(cols, f.name)).tolist()
        for f in dataclasses.fields(cols)
        if isinstance(getattr(cols, f.name), np.ndarray)
    }
    out["labels"] = {k: v.tolist() for k, v in cols.labels.items()}
    out["workloads"] = {n: index.node_workloads(n) for n in index}
    return out


@FAST
@given(
    clusters(),
    st.lists(
        st.tuples(
            st.integers(0, 9), st.integers(0, 2000), st.sampled_from([*sorted(WORKLOADS), None])
        ),
        max_size=6,
    ),
)
def test_allocate_then_release_restores_the_index(
    cluster: tuple[list[NodeSpec], list[tuple[int, str]]],
    ops: list[tuple[int, int, str | None]],
) -> None:
    index = build(*cluster)
    before = columns_of(index)
    snap = index.snapshot()
    ids = sorted(index)
    done = []
    for i, cpu, key in ops:
        node_id = ids[i % len(ids)]
        amount = Resources(cpu_millis=cpu, memory_bytes=cpu * MI)
        index.allocate(node_id, amount, workload_key=key)
        done.append((node_id, amount, key))
        assert index.free(node_id) == _free(index.node(node_id))
    assert columns_of(snap) == before  # the snapshot did not see any of it
    for node_id, amount, key in reversed(done):
        index.release(node_id, amount, workload_key=key)
    assert columns_of(index) == before


def _free(spec: NodeSpec) -> Resources:
    return Resources.of(
        [
            max(0, c - a)
            for c, a in zip(spec.capacity.as_tuple(), spec.allocated.as_tuple(), strict=True)
        ]
    )


@FAST
@given(clusters(), st.data())
def test_upsert_remove_and_update_round_trip(
    cluster: tuple[list[NodeSpec], list[tuple[int, str]]], data: st.DataObject
) -> None:
    specs, replicas = cluster
    index = build(specs, replicas)
    for spec in specs:
        got = index.node(spec.node_id)
        assert dataclasses.replace(got, labels=dict(got.labels)) == dataclasses.replace(
            spec, labels=dict(spec.labels)
        )
    victim = data.draw(st.sampled_from(specs))
    snap = index.snapshot()
    index.remove(victim.node_id)
    assert victim.node_id not in index and victim.node_id in snap
    assert snap.node(victim.node_id).capacity == victim.capacity
    others = [s for s in specs if s.node_id != victim.node_id]
    rebuilt = build(others, [])
    request = PlacementRequest(count=3, resources=Resources(500, 256 * MI), sample_size=None)
    # removed node's replicas are forgotten; without workload terms the rest decides alike
    assert schedule(request, index).node_ids == schedule(request, rebuilt).node_ids
    index.upsert(victim)  # reuses the free slot
    assert index.node(victim.node_id).allocated == victim.allocated
    index.update_node(
        victim.node_id,
        state="Cordoned",
        labels={"disk": "nvme"},
        taints=(TAINTS[0],),
        latency_ms=7.0,
    )
    node = index.node(victim.node_id)
    assert (node.state, dict(node.labels), node.taints, node.latency_ms) == (
        "Cordoned",
        {"disk": "nvme"},
        (TAINTS[0],),
        7.0,
    )
    assert node.capacity == victim.capacity and node.allocated == victim.allocated


def test_workload_relabel_moves_its_counts() -> None:
    index = build([NodeSpec("a", Resources(1000, GI)), NodeSpec("b", Resources(1000, GI))], [])
    index.allocate("a", Resources(), workload_key="ns/db")
    anti = PlacementRequest(
        workload_anti_affinity=WorkloadAffinity(
            required=(WorkloadAffinityTerm(LabelSelector({"tier": "data"}), "node"),)
        ),
        sample_size=None,
    )
    assert schedule(anti, index).node_ids == ("b",)
    index.register_workload("ns/db", {"app": "db", "tier": "archive"})
    assert schedule(anti, index).node_ids == ("a",)


def test_snapshot_survives_vocabulary_growth_in_the_live_index() -> None:
    live = build([NodeSpec("a", Resources(1000, GI)), NodeSpec("b", Resources(1000, GI))], [])
    snap = live.snapshot()
    for i in range(70):  # past one 64-bit taint word, new labels and runtimes too
        live.upsert(
            NodeSpec(
                f"t{i}",
                Resources(1000, GI),
                taints=(Taint(f"k{i}"),),
                labels={f"l{i}": "x"},
                runtimes=frozenset({f"rt{i % 20}"}),
            )
        )
    live.update_node("a", state="Draining")
    request = PlacementRequest(count=2, resources=Resources(100, MI), sample_size=None)
    assert schedule(request, snap).node_ids == ("a", "a")
    assert schedule(request, live).node_ids == ("b", "b")
    assert len(snap) == 2 and len(live) == 72


def test_sampled_decisions_at_5k_nodes_stay_near_the_full_scan() -> None:
    """The quality bound the default sample keeps on a realistic fleet (the benchmark's
    5,000 heterogeneous nodes, full policy): every sampled pick is feasible, and its score
    is close to the full scan's best: mean gap under 3 points of 100, 95th percentile
    under 8, never above 15 (measured: about 1.4 / 4.0 / 5.7)."""
    from bench.scheduler_decision import build_cluster, full_policy

    index, _, workloads = build_cluster(5000)
    regions = sorted({index.node(i).region for i in list(index)[:200]})
    gaps = []
    for seed in range(120):
        request = full_policy(workloads[seed % 50], regions)
        decision = schedule(request, index, rng_seed=seed, compare_full_scan=True, top_k=0)
        assert decision.scored_nodes < decision.feasible_nodes  # it did sample
        # (The reference model is too slow for 5,000 nodes; the scheduler's filters are
        # checked against it on small clusters above.)
        (pick,) = decision.node_ids
        assert first_failure(request, index, pick) is None
        assert decision.score_gap is not None
        gaps.append(decision.score_gap)
    assert float(np.mean(gaps)) < 3.0, gaps
    assert float(np.percentile(gaps, 95)) < 8.0, gaps
    assert max(gaps) < 15.0, gaps
