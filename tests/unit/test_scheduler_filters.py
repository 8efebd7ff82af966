"""Scheduler filters: one table per filter, each row a hand-built node, a request and the
reason the node is ruled out (or None), in the manner of the Kubernetes plugin tests.

Rows are checked through :func:`first_failure` (the reason a user would see for that node)
and through :func:`schedule` (the node is or is not chosen).
"""

from __future__ import annotations

import dataclasses

import pytest

from policies.scheduler import (
    AVOIDED_NODE,
    INSUFFICIENT_BANDWIDTH,
    INSUFFICIENT_CPU,
    INSUFFICIENT_GPU,
    INSUFFICIENT_MEMORY,
    INSUFFICIENT_STORAGE,
    NODE_AFFINITY_MISMATCH,
    NOT_READY,
    REASONS,
    REGION_MISMATCH,
    RUNTIME_CLASS_MISSING,
    RUNTIME_MISSING,
    SELECTOR_MISMATCH,
    SPREAD_SKEW_EXCEEDED,
    UNTOLERATED_TAINT,
    WORKLOAD_AFFINITY_MISMATCH,
    WORKLOAD_ANTI_AFFINITY_CONFLICT,
    ZONE_MISMATCH,
    LabelSelector,
    MatchExpression,
    NodeAffinity,
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
    summarize,
)
from policies.scheduler.testing import GI, MI, cluster, node

SMALL = Resources(cpu_millis=500, memory_bytes=512 * MI)


def req(**kw: object) -> PlacementRequest:
    kw.setdefault("resources", SMALL)
    return PlacementRequest(**kw)  # type: ignore[arg-type]


def check(spec: NodeSpec, request: PlacementRequest, expected: str | None) -> None:
    index = cluster(spec)
    assert first_failure(request, index, spec.node_id) == expected
    decision = schedule(dataclasses.replace(request, count=1), index)
    assert decision.node_ids == (() if expected else (spec.node_id,))
    if expected:
        assert decision.reason == f"0/1 nodes are available: 1 {expected}"


def expr(key: str, op: str, *values: str) -> MatchExpression:
    return MatchExpression(key, op, tuple(values))  # type: ignore[arg-type]


def required(*terms: tuple[MatchExpression, ...]) -> NodeAffinity:
    return NodeAffinity(required=tuple(NodeSelectorTerm(t) for t in terms))


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("Ready", None),
        ("Joining", NOT_READY),
        ("Suspect", NOT_READY),
        ("Offline", NOT_READY),
        ("Draining", NOT_READY),
        ("Cordoned", NOT_READY),
        ("Left", NOT_READY),
    ],
)
def test_node_state(state: str, expected: str | None) -> None:
    check(node("n", state=state), req(), expected)


@pytest.mark.parametrize(
    ("runtimes", "classes", "runtime", "runtime_class", "expected"),
    [
        (("docker", "exec"), ("runc",), "docker", None, None),
        (("exec",), ("runc",), "docker", None, RUNTIME_MISSING),
        (("docker",), ("runc",), "wasm", None, RUNTIME_MISSING),  # nobody advertises it
        (("docker",), ("runc",), "docker", "runc", None),
        (("docker",), ("runc",), "docker", "gvisor", RUNTIME_CLASS_MISSING),
        (("docker",), ("runc", "gvisor"), "docker", "gvisor", None),
        (("exec",), ("runc",), "docker", "gvisor", RUNTIME_MISSING),  # runtime checked first
    ],
)
def test_runtime_and_class(
    runtimes: tuple[str, ...],
    classes: tuple[str, ...],
    runtime: str,
    runtime_class: str | None,
    expected: str | None,
) -> None:
    spec = node("n", runtimes=runtimes, runtime_classes=classes)
    check(spec, req(runtime=runtime, runtime_class=runtime_class), expected)


@pytest.mark.parametrize(
    ("zone", "region", "zones", "regions", "expected"),
    [
        ("a", "r1", set(), set(), None),
        ("a", "r1", {"a", "b"}, set(), None),
        ("c", "r1", {"a", "b"}, set(), ZONE_MISMATCH),
        ("", "r1", {"a"}, set(), ZONE_MISMATCH),
        ("a", "r1", set(), {"r1"}, None),
        ("a", "r2", set(), {"r1"}, REGION_MISMATCH),
        ("c", "r2", {"a"}, {"r1"}, REGION_MISMATCH),  # region is checked before zone
        ("a", "r1", {"a"}, {"r9"}, REGION_MISMATCH),  # unknown region matches nothing
    ],
)
def test_zones_and_regions(
    zone: str, region: str, zones: set[str], regions: set[str], expected: str | None
) -> None:
    spec = node("n", zone=zone, region=region)
    check(spec, req(zones=frozenset(zones), regions=frozenset(regions)), expected)


@pytest.mark.parametrize(
    ("labels", "selector", "expected"),
    [
        ({}, {}, None),
        ({"disk": "ssd"}, {"disk": "ssd"}, None),
        ({"disk": "hdd"}, {"disk": "ssd"}, SELECTOR_MISMATCH),
        ({}, {"disk": "ssd"}, SELECTOR_MISMATCH),
        ({"disk": "ssd"}, {"disk": "ssd", "gpu": "yes"}, SELECTOR_MISMATCH),
        ({"disk": "ssd", "gpu": "yes"}, {"disk": "ssd", "gpu": "yes"}, None),
        ({"disk": ""}, {"disk": ""}, None),  # empty value is a value, not absence
    ],
)
def test_node_selector(
    labels: dict[str, str], selector: dict[str, str], expected: str | None
) -> None:
    check(node("n", labels=labels), req(node_selector=selector), expected)


NO_SCHEDULE = Taint("dedicated", "gpu", "NoSchedule")
NO_EXECUTE = Taint("maintenance", "", "NoExecute")
PREFER_NO = Taint("battery", "low", "PreferNoSchedule")


@pytest.mark.parametrize(
    ("taints", "tolerations", "expected"),
    [
        ((), (), None),
        ((NO_SCHEDULE,), (), UNTOLERATED_TAINT),
        ((NO_EXECUTE,), (), UNTOLERATED_TAINT),
        ((PREFER_NO,), (), None),  # a score penalty, not a filter
        ((NO_SCHEDULE,), (Toleration("dedicated", "Equal", "gpu"),), None),
        ((NO_SCHEDULE,), (Toleration("dedicated", "Equal", "tpu"),), UNTOLERATED_TAINT),
        ((NO_SCHEDULE,), (Toleration("dedicated", "Exists"),), None),
        (
            (NO_SCHEDULE,),
            (Toleration("dedicated", "Exists", effect="NoExecute"),),
            UNTOLERATED_TAINT,
        ),
        ((NO_SCHEDULE,), (Toleration("dedicated", "Exists", effect="NoSchedule"),), None),
        ((NO_SCHEDULE, NO_EXECUTE), (Toleration("dedicated", "Exists"),), UNTOLERATED_TAINT),
        ((NO_SCHEDULE, NO_EXECUTE), (Toleration("", "Exists"),), None),  # tolerates everything
    ],
)
def test_taints_and_tolerations(
    taints: tuple[Taint, ...], tolerations: tuple[Toleration, ...], expected: str | None
) -> None:
    check(node("n", taints=taints), req(tolerations=tolerations), expected)


def test_many_taints_span_several_bitset_words() -> None:
    taints = [Taint(f"t{i}", "", "NoSchedule") for i in range(70)]
    index = cluster(node("a", taints=taints[:1]), node("b", taints=taints[69:]), node("c"))
    tolerate_last = req(tolerations=(Toleration("t69", "Exists"),))
    assert first_failure(tolerate_last, index, "a") == UNTOLERATED_TAINT
    assert first_failure(tolerate_last, index, "b") is None
    assert first_failure(tolerate_last, index, "c") is None


def test_avoided_nodes_are_ruled_out_and_counted() -> None:
    """A replica moved away from a crash loop avoids the nodes it crashed on (the
    placement activity decides again without them when nothing else fits)."""
    index = cluster(node("a"), node("b"), node("c", state="Suspect"))
    away = req(avoid_nodes=frozenset({"a", "gone"}))  # an unknown node is simply ignored
    assert first_failure(away, index, "a") == AVOIDED_NODE
    assert first_failure(away, index, "b") is None
    assert schedule(away, index).node_ids == ("b",)
    stuck = schedule(req(avoid_nodes=frozenset({"a", "b"})), index)
    assert stuck.node_ids == ()
    assert stuck.reason == (
        "0/3 nodes are available: 2 replica crash-looped here recently, 1 node not ready"
    )


LABELS = {"device": "pc", "cores": "16", "name": "box"}


@pytest.mark.parametrize(
    ("affinity", "expected"),
    [
        (required((expr("device", "In", "pc", "vps"),)), None),
        (required((expr("device", "In", "phone"),)), NODE_AFFINITY_MISMATCH),
        (required((expr("device", "NotIn", "phone"),)), None),
        (required((expr("device", "NotIn", "pc"),)), NODE_AFFINITY_MISMATCH),
        (required((expr("missing", "NotIn", "x"),)), None),  # absent label is "not in"
        (required((expr("device", "Exists"),)), None),
        (required((expr("missing", "Exists"),)), NODE_AFFINITY_MISMATCH),
        (required((expr("missing", "DoesNotExist"),)), None),
        (required((expr("device", "DoesNotExist"),)), NODE_AFFINITY_MISMATCH),
        (required((expr("cores", "Gt", "8"),)), None),
        (required((expr("cores", "Gt", "16"),)), NODE_AFFINITY_MISMATCH),
        (required((expr("cores", "Lt", "32"),)), None),
        (required((expr("cores", "Lt", "4"),)), NODE_AFFINITY_MISMATCH),
        (required((expr("name", "Gt", "1"),)), NODE_AFFINITY_MISMATCH),  # not a number
        (required((expr("missing", "Lt", "1"),)), NODE_AFFINITY_MISMATCH),
        # expressions in a term are ANDed, terms are ORed
        (required((expr("device", "In", "pc"), expr("cores", "Gt", "32"))), NODE_AFFINITY_MISMATCH),
        (required((expr("device", "In", "phone"),), (expr("cores", "Gt", "8"),)), None),
        # preferred terms never filter
        (NodeAffinity(preferred=()), None),
    ],
)
def test_required_node_affinity(affinity: NodeAffinity, expected: str | None) -> None:
    check(node("n", labels=LABELS), req(node_affinity=affinity), expected)


@pytest.mark.parametrize(
    ("spec", "demand", "expected"),
    [
        (node("n", cpu=1000, memory=1 * GI), Resources(1000, 1 * GI), None),  # exactly full
        (node("n", cpu=1000, memory=1 * GI), Resources(1001, 1 * GI), INSUFFICIENT_CPU),
        (node("n", cpu=1000, memory=1 * GI), Resources(500, 1 * GI + 1), INSUFFICIENT_MEMORY),
        (node("n", cpu=1000, memory=1 * GI), Resources(2000, 2 * GI), INSUFFICIENT_MEMORY),
        (
            node("n", cpu=1000, memory=1 * GI, memory_used=GI // 2),
            Resources(100, GI),
            INSUFFICIENT_MEMORY,
        ),
        (node("n", cpu=1000, cpu_used=900), Resources(200, MI), INSUFFICIENT_CPU),
        (node("n", storage=1 * GI), Resources(100, MI, 2 * GI), INSUFFICIENT_STORAGE),
        (node("n", gpu=0), Resources(100, MI, gpu=1), INSUFFICIENT_GPU),
        (node("n", gpu=2), Resources(100, MI, gpu=2), None),
        (node("n", bandwidth=10), Resources(100, MI, bandwidth_bps=20), INSUFFICIENT_BANDWIDTH),
        (node("n", bandwidth=0), Resources(100, MI), None),  # no demand, no check
    ],
)
def test_capacity(spec: NodeSpec, demand: Resources, expected: str | None) -> None:
    check(spec, req(resources=demand), expected)


WEB = {"app": "web"}
DB = {"app": "db"}


def term(labels: dict[str, str], key: str = "node") -> WorkloadAffinityTerm:
    return WorkloadAffinityTerm(LabelSelector(labels), key)  # type: ignore[arg-type]


def test_required_workload_affinity_by_topology() -> None:
    index = cluster(
        node("a1", zone="a", region="r1"),
        node("a2", zone="a", region="r1"),
        node("b1", zone="b", region="r1"),
        node("c1", zone="c", region="r2"),
        node("x1", zone="", region=""),
        workloads={"ns/db": DB},
        replicas=[("a1", "ns/db")],
    )
    for key, ok in [
        ("node", {"a1"}),
        ("zone", {"a1", "a2"}),
        ("region", {"a1", "a2", "b1"}),
    ]:
        r = req(workload_affinity=WorkloadAffinity(required=(term(DB, key),)))
        for n in ("a1", "a2", "b1", "c1", "x1"):
            expected = None if n in ok else WORKLOAD_AFFINITY_MISMATCH
            assert first_failure(r, index, n) == expected, (key, n)


def test_first_replica_of_self_affine_group_goes_anywhere() -> None:
    index = cluster(node("a1", zone="a"), node("b1", zone="b"), node("x", zone=""))
    own = req(
        workload_key="ns/web",
        workload_labels=WEB,
        workload_affinity=WorkloadAffinity(required=(term(WEB, "zone"),)),
    )
    assert first_failure(own, index, "a1") is None
    assert first_failure(own, index, "x") == WORKLOAD_AFFINITY_MISMATCH  # no zone at all
    other = dataclasses.replace(own, workload_labels=DB)  # does not match its own selector
    assert first_failure(other, index, "a1") == WORKLOAD_AFFINITY_MISMATCH


def test_required_anti_affinity_by_topology() -> None:
    index = cluster(
        node("a1", zone="a", region="r1"),
        node("a2", zone="a", region="r1"),
        node("b1", zone="b", region="r1"),
        node("c1", zone="c", region="r2"),
        node("x1", zone="", region=""),
        workloads={"ns/web": WEB},
        replicas=[("a1", "ns/web")],
    )
    for key, clash in [
        ("node", {"a1"}),
        ("zone", {"a1", "a2"}),
        ("region", {"a1", "a2", "b1"}),
    ]:
        r = req(workload_anti_affinity=WorkloadAffinity(required=(term(WEB, key),)))
        for n in ("a1", "a2", "b1", "c1", "x1"):
            expected = WORKLOAD_ANTI_AFFINITY_CONFLICT if n in clash else None
            assert first_failure(r, index, n) == expected, (key, n)


def test_anti_affinity_selector_expressions() -> None:
    index = cluster(
        node("a"),
        node("b"),
        node("c"),
        workloads={"ns/web": {"app": "web", "tier": "1"}, "ns/db": {"app": "db", "tier": "3"}},
        replicas=[("a", "ns/web"), ("b", "ns/db")],
    )
    selector = LabelSelector(match_expressions=(MatchExpression("tier", "Gt", ("2",)),))
    r = req(
        workload_anti_affinity=WorkloadAffinity(required=(WorkloadAffinityTerm(selector, "node"),))
    )
    assert [first_failure(r, index, n) for n in "abc"] == [
        None,
        WORKLOAD_ANTI_AFFINITY_CONFLICT,
        None,
    ]
    not_web = LabelSelector(match_expressions=(MatchExpression("app", "NotIn", ("web",)),))
    r = req(
        workload_anti_affinity=WorkloadAffinity(required=(WorkloadAffinityTerm(not_web, "node"),))
    )
    assert [first_failure(r, index, n) for n in "abc"] == [
        None,
        WORKLOAD_ANTI_AFFINITY_CONFLICT,
        None,
    ]


def test_spread_do_not_schedule() -> None:
    index = cluster(
        node("a1", zone="a"),
        node("a2", zone="a"),
        node("b1", zone="b"),
        node("c1", zone="c"),
        node("x1", zone=""),
        workloads={"ns/web": WEB},
        replicas=[("a1", "ns/web"), ("a2", "ns/web"), ("b1", "ns/web")],
    )
    # counts a=2, b=1, c=0; placing adds one: a -> 3-0 > 1, b -> 2-0 > 1, c -> 1 <= 1
    spread = SpreadConstraint(max_skew=1, topology_key="zone")
    r = req(workload_key="ns/web", workload_labels=WEB, spread=(spread,))
    got = {n: first_failure(r, index, n) for n in ("a1", "a2", "b1", "c1", "x1")}
    assert got == {
        "a1": SPREAD_SKEW_EXCEEDED,
        "a2": SPREAD_SKEW_EXCEEDED,
        "b1": SPREAD_SKEW_EXCEEDED,
        "c1": None,
        "x1": SPREAD_SKEW_EXCEEDED,  # no zone: not in any domain
    }
    loose = dataclasses.replace(r, spread=(SpreadConstraint(max_skew=2, topology_key="zone"),))
    assert first_failure(loose, index, "b1") is None
    anyway = SpreadConstraint(max_skew=1, topology_key="zone", when_unsatisfiable="ScheduleAnyway")
    assert first_failure(dataclasses.replace(r, spread=(anyway,)), index, "a1") is None


def test_spread_minimum_counts_only_eligible_domains() -> None:
    # zone c has no replicas but its only node is not Ready, so it is not eligible
    index = cluster(
        node("a1", zone="a"),
        node("b1", zone="b"),
        node("c1", zone="c", state="Offline"),
        workloads={"ns/web": WEB},
        replicas=[("a1", "ns/web")],
    )
    r = req(workload_key="ns/web", workload_labels=WEB, spread=(SpreadConstraint(1, "zone"),))
    assert first_failure(r, index, "b1") is None
    assert first_failure(r, index, "a1") == SPREAD_SKEW_EXCEEDED  # 1+1-0 > 1


def test_first_failing_filter_wins() -> None:
    spec = node("n", zone="b", memory=GI, labels={}, state="Ready")
    r = req(zones=frozenset({"a"}), node_selector={"disk": "ssd"}, resources=Resources(1, 2 * GI))
    assert first_failure(r, cluster(spec), "n") == ZONE_MISMATCH
    r = dataclasses.replace(r, zones=frozenset())
    assert first_failure(r, cluster(spec), "n") == SELECTOR_MISMATCH
    r = dataclasses.replace(r, node_selector={})
    assert first_failure(r, cluster(spec), "n") == INSUFFICIENT_MEMORY


def test_summary_counts_each_node_once_most_frequent_first() -> None:
    index = cluster(
        node("m1", memory=GI, labels={"disk": "ssd"}),
        node("m2", memory=GI, labels={"disk": "ssd"}),
        node("m3", memory=GI, labels={"disk": "ssd"}),
        node("s1", labels={"disk": "hdd"}),
        node("s2", labels={}),
    )
    r = req(resources=Resources(100, 2 * GI), node_selector={"disk": "ssd"})
    decision = schedule(r, index)
    assert decision.reason == (
        "0/5 nodes are available: 3 insufficient memory, 2 node selector mismatch"
    )
    assert decision.reasons == {INSUFFICIENT_MEMORY: 3, SELECTOR_MISMATCH: 2}
    assert decision.unplaced == 1


def test_summary_format() -> None:
    counts = {INSUFFICIENT_MEMORY: 3, SELECTOR_MISMATCH: 2, NOT_READY: 2}
    assert summarize(7, counts) == (
        "0/7 nodes are available: 3 insufficient memory, 2 node not ready, 2 node selector mismatch"
    )
    assert summarize(0, {}) == "0/0 nodes are available"


def test_reason_strings_are_stable() -> None:
    """Users and scripts read these strings; a rename is a visible change."""
    assert (NOT_READY, RUNTIME_MISSING, ZONE_MISMATCH, SELECTOR_MISMATCH) == (
        "node not ready",
        "runtime unavailable",
        "zone mismatch",
        "node selector mismatch",
    )
    assert (INSUFFICIENT_CPU, INSUFFICIENT_MEMORY, INSUFFICIENT_STORAGE) == (
        "insufficient cpu",
        "insufficient memory",
        "insufficient storage",
    )
    assert AVOIDED_NODE == "replica crash-looped here recently"
    assert len(set(REASONS)) == len(REASONS) == 17


def test_filtered_counts_for_the_first_replica() -> None:
    index = cluster(node("a", state="Suspect"), node("b", runtimes=("exec",)), node("c"))
    decision = schedule(req(), index)
    assert decision.node_ids == ("c",)
    assert decision.filtered == {NOT_READY: 1, RUNTIME_MISSING: 1}
    assert decision.total_nodes == 3 and decision.feasible_nodes == 1


def test_removed_nodes_are_not_counted() -> None:
    index = cluster(node("a"), node("b", memory=GI))
    index.remove("a")
    decision = schedule(req(resources=Resources(1, 2 * GI)), index)
    assert decision.reason == "0/1 nodes are available: 1 insufficient memory"


@pytest.mark.parametrize(
    ("op", "values"),
    [
        ("In", ()),
        ("NotIn", ()),
        ("Exists", ("x",)),
        ("DoesNotExist", ("x",)),
        ("Gt", ("a",)),
        ("Lt", ("1", "2")),
    ],
)
def test_invalid_expressions_are_rejected(op: str, values: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=op):
        MatchExpression("k", op, values)  # type: ignore[arg-type]
