"""Per-request precomputation (the PreFilter/PreScore step) and in-decision accounting.

Everything a request needs from the index's vocabularies is resolved here once: strings
become codes, sets become lookup tables, tolerations become taint bitmasks. Filters and
scorers then only index arrays. :class:`Accounting` holds what a batch changes as it places
replicas (room on each node, replica counts per topology domain) over the statically
feasible nodes only, so each pick updates a few entries instead of rebuilding the world.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from policies.scheduler.index import (
    BANDWIDTH,
    CPU,
    GPU,
    MEMORY,
    STORAGE,
    BoolArray,
    Columns,
    IntArray,
    Interner,
    NodeIndex,
)
from policies.scheduler.request import (
    FACTORS,
    LabelSelector,
    MatchExpression,
    PlacementRequest,
    SchedulerConfig,
    TopologyKey,
)

#: Resource dimensions in the order capacity reasons are checked (memory first, as before).
CAPACITY_ORDER: tuple[int, ...] = (MEMORY, CPU, STORAGE, GPU, BANDWIDTH)
UintArray = npt.NDArray[np.uint64]


@dataclass
class Prepared:
    """A request compiled against one column view; built by :func:`prepare`."""

    cols: Columns
    request: PlacementRequest
    demand: IntArray
    demanded: tuple[int, ...]
    runtime_bit: int
    class_bit: int | None
    zone_lut: BoolArray | None
    region_lut: BoolArray | None
    selector: tuple[tuple[str, int], ...]
    bad_taints: UintArray | None
    prefer_taints: UintArray | None
    weights: dict[str, float]
    scale: float
    #: False on the nodes the request avoids (None: it avoids none).
    avoid: BoolArray | None = None


def prepare(request: PlacementRequest, index: NodeIndex, config: SchedulerConfig) -> Prepared:
    cols = index.columns()
    demand = np.asarray(request.resources.as_tuple(), dtype=np.int64)
    demanded = tuple(d for d in CAPACITY_ORDER if demand[d] > 0)
    runtime_bit = cols.runtimes.lookup(f"rt:{request.runtime}") - 1
    class_bit = None
    if request.runtime_class is not None:
        class_bit = cols.runtimes.lookup(f"rc:{request.runtime_class}") - 1
    zone_lut = _lut(cols.zones, request.zones) if request.zones else None
    region_lut = _lut(cols.regions, request.regions) if request.regions else None
    selector = tuple((k, cols.values.lookup(v)) for k, v in sorted(request.node_selector.items()))
    bad, prefer = _taint_masks(request, cols)
    weights = _effective_weights(request, config, prefer is not None)
    total_weight = sum(weights.values())
    return Prepared(
        cols=cols,
        request=request,
        demand=demand,
        demanded=demanded,
        runtime_bit=runtime_bit,
        class_bit=class_bit,
        zone_lut=zone_lut,
        region_lut=region_lut,
        selector=selector,
        bad_taints=bad,
        prefer_taints=prefer,
        weights=weights,
        scale=100.0 / total_weight if total_weight > 0 else 0.0,
        avoid=_avoid_mask(request, index, cols.n),
    )


def _avoid_mask(request: PlacementRequest, index: NodeIndex, n: int) -> BoolArray | None:
    if not request.avoid_nodes:
        return None
    ok = np.ones(n, dtype=np.bool_)
    for node_id in request.avoid_nodes:
        if node_id in index:
            ok[index.slot(node_id)] = False
    return ok


def _lut(interner: Interner, names: frozenset[str]) -> BoolArray:
    lut = np.zeros(len(interner), dtype=np.bool_)
    for name in names:
        code = interner.lookup(name)
        if code:
            lut[code] = True
    return lut


def _taint_masks(
    request: PlacementRequest, cols: Columns
) -> tuple[UintArray | None, UintArray | None]:
    """Bitmasks of the taints this request does not tolerate: hard ones and preferred ones."""
    words = cols.taints.shape[0]
    bad = np.zeros(words, dtype=np.uint64)
    prefer = np.zeros(words, dtype=np.uint64)
    # The vocabulary is shared with snapshots and may hold taints newer than these columns.
    for bit, taint in enumerate(cols.taint_vocab[: words * 64]):
        if request.tolerates(taint):
            continue
        target = prefer if taint.effect == "PreferNoSchedule" else bad
        target[bit // 64] |= np.uint64(1 << (bit % 64))
    return (bad if bad.any() else None, prefer if prefer.any() else None)


def _effective_weights(
    request: PlacementRequest, config: SchedulerConfig, prefer_taints: bool
) -> dict[str, float]:
    """The request's (or cluster's) weights with factors that do not apply set to 0."""
    weights = (request.weights or config.weights).as_dict()
    applies = {
        "locality": not request.locality.is_empty(),
        "node_affinity": bool(request.node_affinity.preferred),
        "workload_affinity": bool(
            request.workload_affinity.preferred or request.workload_anti_affinity.preferred
        ),
        "topology_spread": any(c.when_unsatisfiable == "ScheduleAnyway" for c in request.spread),
        "taint_toleration": prefer_taints,
        # Kubernetes' default constraints: only for a workload without constraints of its own.
        "replica_spread": request.multi_replica and not request.spread,
    }
    return {f: (weights[f] if applies.get(f, True) else 0.0) for f in FACTORS}


def expression_mask(
    values: Interner, column: npt.NDArray[np.int32] | None, n: int, expr: MatchExpression
) -> BoolArray:
    """Evaluate one label expression over a label column (or its gather at some nodes)."""
    if column is None:  # nobody carries the key: every node has it absent
        column = np.zeros(n, dtype=np.int32)
    op = expr.operator
    if op in ("In", "NotIn"):
        lut = np.zeros(len(values), dtype=np.bool_)
        for v in expr.values:
            code = values.lookup(v)
            if code:
                lut[code] = True
        hit: BoolArray = lut[column]
        return hit if op == "In" else ~hit
    if op in ("Exists", "DoesNotExist"):
        present: BoolArray = np.not_equal(column, 0)
        return present if op == "Exists" else ~present
    numbers = values.numeric()[column]
    bound = float(int(expr.values[0]))
    return numbers > bound if op == "Gt" else numbers < bound


def term_mask(
    cols: Columns, exprs: tuple[MatchExpression, ...], slots: IntArray | None
) -> BoolArray:
    """AND of expressions, over all nodes (``slots=None``) or gathered at ``slots``."""
    n = cols.n if slots is None else len(slots)
    mask = np.ones(n, dtype=np.bool_)
    for expr in exprs:
        column = cols.labels.get(expr.key)
        if column is not None and slots is not None:
            column = column[slots]
        mask &= expression_mask(cols.values, column, n, expr)
    return mask


# --- in-decision accounting -------------------------------------------------------------


class DomainTerm:
    """Replicas matching one selector, counted per topology domain of the feasible nodes.

    ``dom[j]`` is the domain code of feasible node ``j`` (for the ``node`` key, ``j``
    itself); ``counts`` is indexed by domain code. Placing a replica that matches
    (``self_match``) bumps its domain, which is all a batch needs to keep affinity and
    spread exact between picks. The minimum over eligible domains is cached and kept
    between picks: it can only move when the last domain at it is bumped.
    """

    __slots__ = (
        "_at_min",
        "_min",
        "counts",
        "dom",
        "eligible",
        "has_domain",
        "key",
        "self_match",
        "total",
    )

    def __init__(
        self,
        key: TopologyKey,
        dom: IntArray,
        counts: IntArray,
        has_domain: BoolArray | None,
        self_match: bool,
        total: int,
    ) -> None:
        self.key = key
        self.dom = dom
        self.counts = counts
        self.has_domain = has_domain
        self.self_match = 1 if self_match else 0
        self.total = total
        self.eligible: BoolArray
        if key == "node":  # one domain per feasible node
            self.eligible = np.ones(len(counts), dtype=np.bool_)
        else:
            self.eligible = np.zeros(len(counts), dtype=np.bool_)
            self.eligible[dom if has_domain is None else dom[has_domain]] = True
        self._min: int | None = None
        self._at_min = 0

    def at(self, idx: IntArray | None) -> IntArray:
        """Matching replicas in the domain of each feasible node ``idx`` (None: all)."""
        found: IntArray = self.counts[self.dom if idx is None else self.dom[idx]]
        return found

    def present(self, idx: IntArray | None) -> BoolArray | None:
        """Whether each node ``idx`` belongs to a domain at all; None when all do."""
        if self.has_domain is None:
            return None
        return self.has_domain if idx is None else self.has_domain[idx]

    def minimum(self) -> int:
        """Fewest matching replicas over the eligible domains (those with a feasible node)."""
        if self._min is None:
            eligible = self.counts[self.eligible]
            if not len(eligible):
                return 0
            low = int(eligible.min())
            self._min, self._at_min = low, int(np.count_nonzero(eligible == low))
        return self._min

    def add(self, j: int) -> None:
        if self.self_match and (self.has_domain is None or self.has_domain[j]):
            d = self.dom[j]
            before = self.counts[d]
            self.counts[d] = before + 1
            self.total += 1
            if before == self._min and self.eligible[d]:
                self._at_min -= 1
                if not self._at_min:
                    self._min = None  # the last domain at the minimum moved up


@dataclass
class WeightedTerm:
    term: DomainTerm
    weight: int


@dataclass
class SpreadTerm:
    term: DomainTerm
    max_skew: int


class Accounting:
    """The state a batch changes, over the statically feasible nodes ``slots`` (S-space).

    Row ``d`` of ``used``/``capacity`` is resource ``d`` gathered at ``slots``; only the
    dimensions the request demands plus cpu and memory (for utilization) are kept.
    """

    def __init__(self, prep: Prepared, index: NodeIndex, slots: IntArray) -> None:
        cols = prep.cols
        req = prep.request
        self.prep = prep
        self.slots = slots
        dims = sorted({*prep.demanded, CPU, MEMORY})
        self.used: dict[int, IntArray] = {d: cols.allocated[d][slots] for d in dims}
        self.capacity: dict[int, IntArray] = {d: cols.capacity[d][slots] for d in dims}
        self.cost_min = self.cost_max = 0.0
        builder = _TermBuilder(prep, index, slots)
        own = req.workload_labels
        self.affinity = [
            builder.term(t.selector, t.topology_key, own) for t in req.workload_affinity.required
        ]
        self.anti_affinity = [
            builder.term(t.selector, t.topology_key, own)
            for t in req.workload_anti_affinity.required
        ]
        self.preferred = [
            WeightedTerm(builder.term(p.term.selector, p.term.topology_key, own), p.weight)
            for p in req.workload_affinity.preferred
        ]
        self.preferred_anti = [
            WeightedTerm(builder.term(p.term.selector, p.term.topology_key, own), p.weight)
            for p in req.workload_anti_affinity.preferred
        ]
        self.spread_hard: list[SpreadTerm] = []
        self.spread_soft: list[SpreadTerm] = []
        for c in req.spread:
            target = (
                self.spread_hard if c.when_unsatisfiable == "DoNotSchedule" else self.spread_soft
            )
            target.append(SpreadTerm(builder.term(c.selector, c.topology_key, own), c.max_skew))
        self.zone_spread: DomainTerm | None = None
        if req.strategy == "zone-spread":
            self.zone_spread = builder.term(None, "zone", own, zoneless_is_domain=True)
        # This workload's own replicas per node (the per-node cap and the default spreading)
        # and per zone (the default spreading).
        self.node_cap = req.node_cap()
        spreads = prep.weights["replica_spread"] > 0
        self.own_node: DomainTerm | None = None
        self.own_zone: DomainTerm | None = None
        if self.node_cap is not None or spreads:
            self.own_node = builder.term(None, "node", own)
            held = self.own_node.counts
            if self.node_cap is not None and (
                (int(held.max()) if len(held) else 0) + req.count <= self.node_cap
            ):
                self.node_cap = None  # no node can reach the cap in this decision
                if not spreads:
                    self.own_node = None
        if spreads:
            self.own_zone = builder.term(None, "zone", own, zoneless_is_domain=True)
        self.terms: list[DomainTerm] = [
            *self.affinity,
            *self.anti_affinity,
            *(w.term for w in self.preferred),
            *(w.term for w in self.preferred_anti),
            *(s.term for s in self.spread_hard),
            *(s.term for s in self.spread_soft),
            *([self.zone_spread] if self.zone_spread is not None else []),
            *(t for t in (self.own_node, self.own_zone) if t is not None),
        ]

    def set_cost_range(self, feasible: IntArray) -> None:
        """Fix the cost normalization to the nodes feasible for the first replica.

        Fixed for the whole batch (and for any sample of it) so scores stay comparable.
        """
        cost = self.prep.cols.cost[self.slots[feasible]]
        if len(cost):
            self.cost_min, self.cost_max = float(cost.min()), float(cost.max())

    @property
    def own_only(self) -> bool:
        """Whether the workload's own counts (the cap, the default spreading) are the only
        domain terms: no filter then depends on what a pick places."""
        own = [t for t in (self.own_node, self.own_zone) if t is not None]
        return bool(own) and len(self.terms) == len(own)

    @property
    def domain_dependent(self) -> bool:
        """Whether a pick can change other nodes' feasibility or score."""
        return bool(self.terms)

    def place(self, j: int) -> None:
        for d, row in self.used.items():
            row[j] += self.prep.demand[d]
        for term in self.terms:
            term.add(j)


class _TermBuilder:
    """Turns (selector, topology key) into a :class:`DomainTerm` from the index's counts."""

    def __init__(self, prep: Prepared, index: NodeIndex, slots: IntArray) -> None:
        self.prep = prep
        self.index = index
        self.slots = slots
        self._node_space: IntArray | None = None
        self._dom: dict[str, tuple[IntArray, BoolArray]] = {}

    def term(
        self,
        selector: LabelSelector | None,
        key: TopologyKey,
        own_labels: Mapping[str, str],
        *,
        zoneless_is_domain: bool = False,
    ) -> DomainTerm:
        req = self.prep.request
        if selector is None:
            pos, cnt = self.index.replica_slots([req.workload_key] if req.workload_key else [])
            self_match = True
        else:
            pos, cnt = self.index.selector_slots(selector)
            self_match = selector.matches(own_labels)
        total = int(cnt.sum())
        cols = self.prep.cols
        if key == "node":
            if len(pos) * 16 < len(self.slots):
                # Replicas on few of the nodes: place them into S directly (``slots`` is
                # sorted) instead of counting over every slot and gathering.
                counts = np.zeros(len(self.slots), dtype=np.int64)
                at = np.searchsorted(self.slots, pos)
                inside = at < len(self.slots)
                inside[inside] = self.slots[at[inside]] == pos[inside]
                np.add.at(counts, at[inside], np.asarray(cnt, dtype=np.int64)[inside])
            else:
                per_slot = np.bincount(pos, weights=cnt, minlength=cols.n).astype(np.int64)
                counts = per_slot[self.slots]
            return DomainTerm(key, self._node_dom(), counts, None, self_match, total)
        column, interner = (cols.zone, cols.zones) if key == "zone" else (cols.region, cols.regions)
        counts = np.bincount(column[pos], weights=cnt, minlength=len(interner)).astype(np.int64)
        dom, has = self._domains(key, column, zoneless_is_domain)
        return DomainTerm(key, dom, counts, has, self_match, total)

    def _domains(
        self, key: TopologyKey, column: npt.NDArray[np.int32], zoneless_is_domain: bool
    ) -> tuple[IntArray, BoolArray | None]:
        """Domain codes of the feasible nodes (shared by every term of the key; read-only)."""
        found = self._dom.get(key)
        if found is None:
            dom = column[self.slots].astype(np.int64)
            found = self._dom[key] = (dom, dom != 0)
        return found[0], None if zoneless_is_domain else found[1]

    def _node_dom(self) -> IntArray:
        if self._node_space is None:
            self._node_space = np.arange(len(self.slots), dtype=np.int64)
        return self._node_space
