"""Placement: filter reasons, the summary line, scoring, in-decision accounting, invariants.

Table-driven tests call :func:`policies.placement.place` on hand-built nodes, in the manner
of the Kubernetes scheduler framework's plugin tests; the property tests at the end check
what must hold for any cluster and any request.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudless.model import NodeState
from policies.placement import (
    INSUFFICIENT_CPU,
    INSUFFICIENT_MEMORY,
    INSUFFICIENT_STORAGE,
    NOT_READY,
    READY,
    RUNTIME_MISSING,
    SELECTOR_MISMATCH,
    ZONE_MISMATCH,
    Demand,
    NodeView,
    PlacementDecision,
    PlacementRequest,
    Strategy,
    place,
    summarize,
)

MI = 1024**2
GI = 1024**3


def node(
    node_id: str,
    *,
    zone: str = "zone-a",
    labels: Mapping[str, str] | None = None,
    cpu: int = 4000,
    memory: int = 4 * GI,
    storage: int = 10 * GI,
    cpu_used: int = 0,
    memory_used: int = 0,
    storage_used: int = 0,
    state: str = READY,
    runtimes: frozenset[str] = frozenset({"docker", "exec"}),
) -> NodeView:
    return NodeView(
        node_id=node_id,
        zone=zone,
        labels=dict(labels or {}),
        cpu_capacity=cpu,
        memory_capacity=memory,
        storage_capacity=storage,
        cpu_allocated=cpu_used,
        memory_allocated=memory_used,
        storage_allocated=storage_used,
        state=state,
        runtimes=runtimes,
    )


def request(
    count: int = 1,
    *,
    cpu: int = 100,
    memory: int = 64 * MI,
    storage: int = 0,
    runtime: str = "docker",
    selector: Mapping[str, str] | None = None,
    zones: frozenset[str] = frozenset(),
    strategy: Strategy = "binpack",
) -> PlacementRequest:
    return PlacementRequest(
        count=count,
        demand=Demand(cpu_millis=cpu, memory_bytes=memory, storage_bytes=storage),
        runtime=runtime,
        node_selector=dict(selector or {}),
        zones=zones,
        strategy=strategy,
    )


def unavailable(total: int, *counts: tuple[int, str]) -> str:
    return f"0/{total} nodes are available: " + ", ".join(f"{n} {r}" for n, r in counts)


# --------------------------------------------------------------------------- filters

FILTER_CASES: list[tuple[str, NodeView, PlacementRequest, str]] = [
    ("draining", node("n", state=NodeState.DRAINING.value), request(), NOT_READY),
    ("suspect", node("n", state=NodeState.SUSPECT.value), request(), NOT_READY),
    ("joining", node("n", state=NodeState.JOINING.value), request(), NOT_READY),
    ("exec only", node("n", runtimes=frozenset({"exec"})), request(), RUNTIME_MISSING),
    ("no runtimes", node("n", runtimes=frozenset()), request(runtime="exec"), RUNTIME_MISSING),
    ("other zone", node("n", zone="zone-b"), request(zones=frozenset({"zone-a"})), ZONE_MISMATCH),
    (
        "label differs",
        node("n", labels={"disk": "hdd"}),
        request(selector={"disk": "ssd"}),
        SELECTOR_MISMATCH,
    ),
    (
        "label missing",
        node("n", labels={"tier": "edge"}),
        request(selector={"disk": "ssd"}),
        SELECTOR_MISMATCH,
    ),
    (
        "one of two labels",
        node("n", labels={"disk": "ssd", "tier": "edge"}),
        request(selector={"disk": "ssd", "tier": "standard"}),
        SELECTOR_MISMATCH,
    ),
    ("cpu", node("n", cpu=1000, cpu_used=950), request(cpu=100), INSUFFICIENT_CPU),
    ("cpu, none at all", node("n", cpu=0), request(cpu=1), INSUFFICIENT_CPU),
    (
        "memory",
        node("n", memory=GI, memory_used=GI - MI),
        request(memory=2 * MI),
        INSUFFICIENT_MEMORY,
    ),
    ("storage", node("n", storage=GI, storage_used=GI), request(storage=1), INSUFFICIENT_STORAGE),
    (
        "already over-committed",
        node("n", cpu=1000, cpu_used=1500),
        request(cpu=0),
        INSUFFICIENT_CPU,
    ),
]


@pytest.mark.parametrize(
    ("target", "req", "reason"),
    [case[1:] for case in FILTER_CASES],
    ids=[case[0] for case in FILTER_CASES],
)
def test_each_filter_rules_a_node_out_with_its_reason(
    target: NodeView, req: PlacementRequest, reason: str
) -> None:
    decision = place(req, [target])
    assert decision == PlacementDecision(
        node_ids=(), unplaced=1, reason=unavailable(1, (1, reason))
    )


PASS_CASES: list[tuple[str, NodeView, PlacementRequest]] = [
    ("ready", node("n", state=NodeState.READY.value), request()),
    ("exec runtime", node("n", runtimes=frozenset({"exec"})), request(runtime="exec")),
    ("no zone constraint", node("n", zone="edge"), request()),
    ("zone listed", node("n", zone="zone-b"), request(zones=frozenset({"zone-a", "zone-b"}))),
    ("no selector", node("n", labels={"disk": "hdd"}), request()),
    (
        "selector subset of labels",
        node("n", labels={"disk": "ssd", "tier": "edge"}),
        request(selector={"disk": "ssd"}),
    ),
    ("exact cpu fit", node("n", cpu=1000, cpu_used=900), request(cpu=100)),
    ("exact memory fit", node("n", memory=GI, memory_used=GI - MI), request(memory=MI)),
    ("exact storage fit", node("n", storage=GI, storage_used=GI - 1), request(storage=1)),
    ("zero demand on a full node", node("n", cpu=1000, cpu_used=1000), request(cpu=0)),
]


@pytest.mark.parametrize(
    ("target", "req"), [case[1:] for case in PASS_CASES], ids=[case[0] for case in PASS_CASES]
)
def test_a_node_that_passes_every_filter_is_chosen(target: NodeView, req: PlacementRequest) -> None:
    assert place(req, [target]) == PlacementDecision(node_ids=("n",), unplaced=0)


ORDER_CASES: list[tuple[str, NodeView, PlacementRequest, str]] = [
    (
        "readiness before runtime",
        node("n", state="Offline", runtimes=frozenset()),
        request(),
        NOT_READY,
    ),
    (
        "runtime before zone",
        node("n", zone="edge", runtimes=frozenset({"exec"})),
        request(zones=frozenset({"zone-a"})),
        RUNTIME_MISSING,
    ),
    (
        "zone before selector",
        node("n", zone="edge"),
        request(zones=frozenset({"zone-a"}), selector={"disk": "ssd"}),
        ZONE_MISMATCH,
    ),
    (
        "static filters before capacity",
        node("n", cpu=0, memory=0, storage=0, labels={}),
        request(selector={"disk": "ssd"}),
        SELECTOR_MISMATCH,
    ),
]


@pytest.mark.parametrize(
    ("target", "req", "reason"),
    [case[1:] for case in ORDER_CASES],
    ids=[case[0] for case in ORDER_CASES],
)
def test_a_node_failing_several_filters_reports_the_first_in_pipeline_order(
    target: NodeView, req: PlacementRequest, reason: str
) -> None:
    assert place(req, [target]).reason == unavailable(1, (1, reason))


# --------------------------------------------------------------------------- summary


def test_summary_counts_reasons_most_frequent_first() -> None:
    tight = [node(f"small-{i}", memory=32 * MI, labels={"disk": "ssd"}) for i in range(3)]
    wrong = [node(f"hdd-{i}", labels={"disk": "hdd"}) for i in range(2)]
    req = request(memory=64 * MI, selector={"disk": "ssd"})
    assert place(req, tight + wrong).reason == (
        "0/5 nodes are available: 3 insufficient memory, 2 node selector mismatch"
    )
    assert place(req, tight[:1] + wrong).reason == (
        "0/3 nodes are available: 2 node selector mismatch, 1 insufficient memory"
    )


@pytest.mark.parametrize(
    ("reasons", "expected"),
    [
        (Counter[str](), "0/0 nodes are available"),
        (Counter({NOT_READY: 1}), "0/1 nodes are available: 1 node not ready"),
        (
            Counter({ZONE_MISMATCH: 1, INSUFFICIENT_CPU: 1, NOT_READY: 2}),
            "0/4 nodes are available: 2 node not ready, 1 insufficient cpu, 1 zone mismatch",
        ),
    ],
    ids=["nothing", "one", "ties alphabetical"],
)
def test_summarize_formats_counts(reasons: Counter[str], expected: str) -> None:
    assert summarize(sum(reasons.values()), reasons) == expected


def test_no_nodes_at_all() -> None:
    assert place(request(count=2), []) == PlacementDecision(
        node_ids=(), unplaced=2, reason="0/0 nodes are available"
    )


@pytest.mark.parametrize("count", [0, -1])
def test_nothing_to_place_is_an_empty_decision(count: int) -> None:
    assert place(request(count=count), [node("n", state="Offline")]) == PlacementDecision(
        node_ids=(), unplaced=0
    )


# --------------------------------------------------------------------------- scoring


def _fill_levels() -> list[NodeView]:
    """Four equal nodes: empty, half used, mostly used (room for one more) and full."""
    return [
        node("empty"),
        node("half", cpu_used=2000, memory_used=2 * GI),
        node("most", cpu_used=3500, memory_used=3 * GI),
        node("full", cpu_used=4000, memory_used=4 * GI),
    ]


@pytest.mark.parametrize("order", [1, -1], ids=["as listed", "reversed"])
@pytest.mark.parametrize(("strategy", "expected"), [("binpack", "most"), ("spread", "empty")])
def test_binpack_picks_the_fullest_feasible_node_and_spread_the_emptiest(
    strategy: Strategy, expected: str, order: int
) -> None:
    decision = place(request(cpu=500, memory=GI, strategy=strategy), _fill_levels()[::order])
    assert decision == PlacementDecision(node_ids=(expected,), unplaced=0)


def test_binpack_fills_one_node_before_the_next() -> None:
    nodes = [node("b", cpu=2000), node("a", cpu=2000)]
    decision = place(request(count=3, cpu=1000, strategy="binpack"), nodes)
    assert decision.node_ids == ("a", "a", "b")


def test_spread_alternates_between_equal_nodes() -> None:
    nodes = [node(n) for n in ("c", "a", "b")]
    decision = place(request(count=5, strategy="spread"), nodes)
    assert decision.node_ids == ("a", "b", "c", "a", "b")


@pytest.mark.parametrize("strategy", ["binpack", "spread"])
def test_ties_are_broken_by_node_id_whatever_the_input_order(strategy: Strategy) -> None:
    ids = ["n10", "n02", "n07", "n01", "n05"]
    expected = place(request(strategy=strategy), [node(i) for i in sorted(ids)])
    assert expected.node_ids == ("n01",)
    shuffler = random.Random(7)
    for _ in range(10):
        shuffler.shuffle(ids)
        assert place(request(strategy=strategy), [node(i) for i in ids]) == expected


def test_equal_ratios_on_different_sizes_tie_and_fall_back_to_node_id() -> None:
    # 1 of 2 CPUs and 2 of 4 CPUs (same memory ratio) score the same after placement.
    nodes = [
        node("big", cpu=4000, memory=4 * GI, cpu_used=1000, memory_used=GI),
        node("small", cpu=2000, memory=2 * GI, cpu_used=0, memory_used=0),
    ]
    decision = place(request(cpu=1000, memory=GI), nodes)
    assert decision.node_ids == ("big",)


# --------------------------------------------------------------------------- accounting


@pytest.mark.parametrize("strategy", ["binpack", "spread"])
def test_a_batch_accounts_for_its_own_placements(strategy: Strategy) -> None:
    nodes = [node("two", cpu=2000), node("one", cpu=3000, cpu_used=2000)]
    decision = place(request(count=3, cpu=1000, strategy=strategy), nodes)
    assert decision.unplaced == 0
    assert Counter(decision.node_ids) == {"two": 2, "one": 1}


@pytest.mark.parametrize("strategy", ["binpack", "spread"])
def test_a_batch_never_double_books_memory_or_storage(strategy: Strategy) -> None:
    nodes = [
        node("mem", memory=GI, memory_used=GI - 128 * MI),
        node("disk", storage=3 * GI, storage_used=GI),
    ]
    decision = place(request(count=5, memory=64 * MI, storage=GI, strategy=strategy), nodes)
    # "mem" has room for 2 replicas by memory and 10 by storage; "disk" for 2 by storage.
    assert Counter(decision.node_ids) == {"mem": 2, "disk": 2}
    assert decision.unplaced == 1
    assert decision.reason == unavailable(2, (1, INSUFFICIENT_MEMORY), (1, INSUFFICIENT_STORAGE))


def test_partial_placement_reports_what_is_left_and_why() -> None:
    nodes = [
        node("a", cpu=2000),
        node("b", cpu=1000),
        node("down", state="Offline"),
        node("elsewhere", zone="zone-b"),
    ]
    decision = place(request(count=5, cpu=1000, zones=frozenset({"zone-a"})), nodes)
    assert Counter(decision.node_ids) == {"a": 2, "b": 1}
    assert decision.unplaced == 2
    assert decision.reason == unavailable(
        4, (2, INSUFFICIENT_CPU), (1, NOT_READY), (1, ZONE_MISMATCH)
    )


def test_place_does_not_mutate_its_inputs() -> None:
    nodes = [node("a", cpu=2000), node("b", cpu=1000)]
    before = [dataclasses.replace(n) for n in nodes]
    req = request(count=3, cpu=1000)
    place(req, nodes)
    assert nodes == before
    assert place(req, nodes) == place(req, before)


# --------------------------------------------------------------------------- properties

ZONES = ("zone-a", "zone-b", "edge")
LABELS = {"disk": ("ssd", "hdd"), "tier": ("standard", "edge")}
STATES = tuple(s.value for s in NodeState)
RUNTIMES = ("docker", "exec")
RUNTIME_SETS = (frozenset(RUNTIMES),) * 6 + tuple(frozenset({r}) for r in RUNTIMES) + (frozenset(),)

labels_st = st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in LABELS.items()})


def amount(unit: int, most: int) -> st.SearchStrategy[int]:
    """Mostly round multiples of ``unit`` (exact fits, ties), sometimes any value."""
    return st.one_of(
        st.integers(0, most).map(lambda k: k * unit),
        st.integers(0, most * unit),
    )


@st.composite
def node_views(draw: st.DrawFn, node_id: str) -> NodeView:
    cpu, memory, storage = draw(amount(250, 16)), draw(amount(256 * MI, 16)), draw(amount(GI, 8))
    over = draw(st.sampled_from([1, 1, 1, 2]))  # now and then a node already over-committed
    return NodeView(
        node_id=node_id,
        zone=draw(st.sampled_from(ZONES)),
        labels=draw(labels_st),
        cpu_capacity=cpu,
        memory_capacity=memory,
        storage_capacity=storage,
        cpu_allocated=draw(st.integers(0, cpu * over)),
        memory_allocated=draw(st.integers(0, memory * over)),
        storage_allocated=draw(st.integers(0, storage * over)),
        state=draw(st.sampled_from((READY,) * 3 * len(STATES) + STATES)),  # mostly Ready
        runtimes=draw(st.sampled_from(RUNTIME_SETS)),
    )


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeView]:
    ids = draw(
        st.lists(
            st.text("abcdefgh0123456789-", min_size=1, max_size=6),
            min_size=1,
            max_size=30,
            unique=True,
        )
    )
    return [draw(node_views(node_id)) for node_id in ids]


requests = st.builds(
    PlacementRequest,
    count=st.integers(1, 15),
    demand=st.builds(
        Demand,
        cpu_millis=amount(250, 8),
        memory_bytes=amount(128 * MI, 8),
        storage_bytes=st.one_of(st.just(0), amount(GI, 3)),
    ),
    runtime=st.sampled_from(RUNTIMES),
    node_selector=st.one_of(st.just({}), labels_st),
    zones=st.one_of(st.just(frozenset()), st.frozensets(st.sampled_from(ZONES), max_size=2)),
    strategy=st.sampled_from(("binpack", "spread")),
)


def statically_feasible(n: NodeView, req: PlacementRequest) -> bool:
    """The static filters restated independently of the implementation."""
    return (
        n.state == READY
        and req.runtime in n.runtimes
        and (not req.zones or n.zone in req.zones)
        and all(n.labels.get(k) == v for k, v in req.node_selector.items())
    )


def fits(n: NodeView, d: Demand, replicas: int) -> bool:
    """Whether ``replicas`` replicas of ``d`` fit on ``n`` on top of its allocations."""
    return (
        n.cpu_allocated + replicas * d.cpu_millis <= n.cpu_capacity
        and n.memory_allocated + replicas * d.memory_bytes <= n.memory_capacity
        and n.storage_allocated + replicas * d.storage_bytes <= n.storage_capacity
    )


def utilization(n: NodeView, d: Demand, replicas: int) -> float:
    cpu = (n.cpu_allocated + replicas * d.cpu_millis) / n.cpu_capacity if n.cpu_capacity else 1.0
    mem = (
        (n.memory_allocated + replicas * d.memory_bytes) / n.memory_capacity
        if n.memory_capacity
        else 1.0
    )
    return (cpu + mem) / 2


def check_conservation(nodes: list[NodeView], req: PlacementRequest, d: PlacementDecision) -> None:
    """Every replica is either placed or counted as unplaced, and only then is there a reason."""
    assert len(d.node_ids) + d.unplaced == max(req.count, 0)
    assert bool(d.reason) == (d.unplaced > 0)


def check_capacity(nodes: list[NodeView], req: PlacementRequest, d: PlacementDecision) -> None:
    """(a) No node's allocated plus placed resources exceed its capacity in any dimension."""
    by_id = {n.node_id: n for n in nodes}
    for node_id, k in Counter(d.node_ids).items():
        assert fits(by_id[node_id], req.demand, k), f"{node_id} over-committed by {k} replicas"


def check_static(nodes: list[NodeView], req: PlacementRequest, d: PlacementDecision) -> None:
    """(b) Every chosen node passes every static filter."""
    by_id = {n.node_id: n for n in nodes}
    for node_id in d.node_ids:
        assert statically_feasible(by_id[node_id], req), f"{node_id} is not feasible"


def check_maximal(nodes: list[NodeView], req: PlacementRequest, d: PlacementDecision) -> None:
    """(c) A replica is left over only when no feasible node has room for one more."""
    if d.unplaced == 0:
        return
    placed = Counter(d.node_ids)
    for n in nodes:
        if statically_feasible(n, req):
            assert not fits(n, req.demand, placed[n.node_id] + 1), f"{n.node_id} had room"
    # The summary accounts for every node exactly once.
    head, _, tail = d.reason.partition(": ")
    assert head == f"0/{len(nodes)} nodes are available"
    counted = sum(int(part.split(" ", 1)[0]) for part in tail.split(", ") if part)
    assert counted == len(nodes)


def check_best_pick(nodes: list[NodeView], req: PlacementRequest, d: PlacementDecision) -> None:
    """Replaying the decision, every pick had the best fit score among nodes with room."""
    sign = 1.0 if req.strategy == "binpack" else -1.0
    placed: Counter[str] = Counter()
    for chosen in d.node_ids:
        scores = {
            n.node_id: sign * utilization(n, req.demand, placed[n.node_id] + 1)
            for n in nodes
            if statically_feasible(n, req) and fits(n, req.demand, placed[n.node_id] + 1)
        }
        assert scores[chosen] >= max(scores.values()) - 1e-6, f"{chosen} was not the best fit"
        placed[chosen] += 1


@settings(max_examples=200, deadline=None)
@given(nodes=clusters(), req=requests)
def test_placement_invariants(nodes: list[NodeView], req: PlacementRequest) -> None:
    decision = place(req, nodes)
    check_conservation(nodes, req, decision)
    check_capacity(nodes, req, decision)
    check_static(nodes, req, decision)
    check_maximal(nodes, req, decision)
    check_best_pick(nodes, req, decision)


@settings(max_examples=100, deadline=None)
@given(nodes=clusters(), req=requests, seed=st.integers(0, 2**16))
def test_the_same_snapshot_gives_the_same_plan(
    nodes: list[NodeView], req: PlacementRequest, seed: int
) -> None:
    """(d) Same input, same output; also for copies and for any order of the nodes."""
    decision = place(req, nodes)
    assert place(req, nodes) == decision
    assert place(dataclasses.replace(req), [dataclasses.replace(n) for n in nodes]) == decision
    shuffled = list(nodes)
    random.Random(seed).shuffle(shuffled)
    assert place(req, shuffled) == decision
