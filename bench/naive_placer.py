"""The plain-Python placement loop the columnar scheduler replaced: kept as the baseline
that `bench/scheduler_decision.py` measures against in the same run (never used by the product).

The pipeline mirrors the ones in Nomad and the Kubernetes scheduler framework:

    feasibility filters (cheapest first)  ->  score  ->  pick best  ->  account  ->  repeat

Each filter returns a human-readable reason constant when it rules a node out, so a
replica that fits nowhere reports e.g. ``0/5 nodes are available: 3 insufficient
memory, 2 node selector mismatch``. Resources placed earlier in the same decision are accounted for,
so a batch never double-books a node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Strategy = Literal["binpack", "spread"]

READY = "Ready"


@dataclass(frozen=True)
class Demand:
    """Resources one replica requests."""

    cpu_millis: int
    memory_bytes: int
    storage_bytes: int = 0


@dataclass(frozen=True)
class NodeView:
    """An immutable snapshot of one node as the scheduler sees it."""

    node_id: str
    zone: str
    labels: Mapping[str, str]
    cpu_capacity: int
    memory_capacity: int
    storage_capacity: int
    cpu_allocated: int = 0
    memory_allocated: int = 0
    storage_allocated: int = 0
    state: str = READY
    runtimes: frozenset[str] = frozenset({"docker", "exec"})


@dataclass(frozen=True)
class PlacementRequest:
    """What to place: ``count`` identical replicas of one workload."""

    count: int
    demand: Demand
    runtime: str = "docker"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    zones: frozenset[str] = frozenset()
    strategy: Strategy = "binpack"


@dataclass(frozen=True)
class PlacementDecision:
    """Node ids chosen (one per placed replica, in order) and why the rest fit nowhere."""

    node_ids: tuple[str, ...]
    unplaced: int
    reason: str = ""


# --- filters ---------------------------------------------------------------------------
# A filter looks at a node with its in-decision usage and returns None (feasible) or a
# reason constant. Reasons are stable strings users see and tests assert on.

NOT_READY = "node not ready"
RUNTIME_MISSING = "runtime unavailable"
ZONE_MISMATCH = "zone mismatch"
SELECTOR_MISMATCH = "node selector mismatch"
INSUFFICIENT_CPU = "insufficient cpu"
INSUFFICIENT_MEMORY = "insufficient memory"
INSUFFICIENT_STORAGE = "insufficient storage"


@dataclass
class _Usage:
    cpu: int
    memory: int
    storage: int


Filter = Callable[[NodeView, _Usage, PlacementRequest], str | None]


def _ready(node: NodeView, _u: _Usage, _r: PlacementRequest) -> str | None:
    return None if node.state == READY else NOT_READY


def _runtime(node: NodeView, _u: _Usage, req: PlacementRequest) -> str | None:
    return None if req.runtime in node.runtimes else RUNTIME_MISSING


def _zone(node: NodeView, _u: _Usage, req: PlacementRequest) -> str | None:
    return None if not req.zones or node.zone in req.zones else ZONE_MISMATCH


def _selector(node: NodeView, _u: _Usage, req: PlacementRequest) -> str | None:
    for key, value in req.node_selector.items():
        if node.labels.get(key) != value:
            return SELECTOR_MISMATCH
    return None


def _capacity(node: NodeView, used: _Usage, req: PlacementRequest) -> str | None:
    d = req.demand
    if used.memory + d.memory_bytes > node.memory_capacity:
        return INSUFFICIENT_MEMORY
    if used.cpu + d.cpu_millis > node.cpu_capacity:
        return INSUFFICIENT_CPU
    if used.storage + d.storage_bytes > node.storage_capacity:
        return INSUFFICIENT_STORAGE
    return None


#: Static filters first (their answer cannot change within a decision), capacity last.
STATIC_FILTERS: tuple[Filter, ...] = (_ready, _runtime, _zone, _selector)
CAPACITY_FILTER: Filter = _capacity


# --- scoring ---------------------------------------------------------------------------


def _utilization_after(node: NodeView, used: _Usage, d: Demand) -> float:
    """Mean fraction of cpu and memory in use if the replica lands here (0..1)."""
    cpu = (used.cpu + d.cpu_millis) / node.cpu_capacity if node.cpu_capacity else 1.0
    mem = (used.memory + d.memory_bytes) / node.memory_capacity if node.memory_capacity else 1.0
    return (cpu + mem) / 2.0


def score(node: NodeView, used: _Usage, req: PlacementRequest) -> float:
    """0..100; bin-pack prefers the fullest node that fits (best fit), spread the emptiest."""
    util = _utilization_after(node, used, req.demand)
    fitness = util if req.strategy == "binpack" else 1.0 - util
    return round(100.0 * fitness, 6)


# --- decision --------------------------------------------------------------------------


def summarize(total: int, reasons: Counter[str]) -> str:
    """Format ``0/5 nodes are available: 3 insufficient memory, 2 node selector mismatch``."""
    parts = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items(), key=_by_count))
    return f"0/{total} nodes are available" + (f": {parts}" if parts else "")


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return (-item[1], item[0])


def place(request: PlacementRequest, nodes: Sequence[NodeView]) -> PlacementDecision:
    """Place ``request.count`` replicas on ``nodes``; deterministic for equal inputs.

    Ties are broken by node id so that the same snapshot always yields the same plan,
    which keeps retries and tests reproducible.
    """
    if request.count <= 0:
        return PlacementDecision(node_ids=(), unplaced=0)
    static_reasons: Counter[str] = Counter()
    candidates: list[NodeView] = []
    for node in nodes:
        empty = _Usage(node.cpu_allocated, node.memory_allocated, node.storage_allocated)
        reason = next((r for f in STATIC_FILTERS if (r := f(node, empty, request))), None)
        if reason is None:
            candidates.append(node)
        else:
            static_reasons[reason] += 1
    usage = {
        n.node_id: _Usage(n.cpu_allocated, n.memory_allocated, n.storage_allocated)
        for n in candidates
    }
    chosen: list[str] = []
    last_capacity_reasons: Counter[str] = Counter()
    for _ in range(request.count):
        best: NodeView | None = None
        best_score = -1.0
        capacity_reasons: Counter[str] = Counter()
        for node in candidates:
            used = usage[node.node_id]
            reason = CAPACITY_FILTER(node, used, request)
            if reason is not None:
                capacity_reasons[reason] += 1
                continue
            s = score(node, used, request)
            if s > best_score or (s == best_score and best and node.node_id < best.node_id):
                best, best_score = node, s
        if best is None:
            last_capacity_reasons = capacity_reasons
            break
        used = usage[best.node_id]
        used.cpu += request.demand.cpu_millis
        used.memory += request.demand.memory_bytes
        used.storage += request.demand.storage_bytes
        chosen.append(best.node_id)
    unplaced = request.count - len(chosen)
    reason = ""
    if unplaced:
        reason = summarize(len(nodes), static_reasons + last_capacity_reasons)
    return PlacementDecision(node_ids=tuple(chosen), unplaced=unplaced, reason=reason)
