"""The decision: filter, sample, score, pick, account, repeat — for a batch of replicas.

::

    prepare (once)      strings -> codes, tolerations -> taint masks, weights that apply
    static filters      one vectorized pass per filter over all nodes        -> S
    dynamic filters     capacity, workload (anti-)affinity, spread over S    -> feasible
    sample              bounded random subset of feasible (or all: full scan) -> C
    score (once)        static factors over C, dynamic factors over C
    per replica:        pick best (ties: smallest node id) among the nodes under the
                        per-node cap -> account -> update only what the pick can change
                        (the picked node; its domain's counts)

A batch never double-books: capacity, anti-affinity and spread counts are updated after each
pick, before the next one is chosen. Same index, request and seed give the same decision.

The per-node cap (:meth:`PlacementRequest.node_cap`: 1 for ``spread``, else
``replicas - minAvailable``) orders the picks rather than filtering: a pick goes to a
feasible node holding fewer of the workload's replicas than the cap, or, when every feasible
node is at or above it, to one holding the fewest. So ``spread`` fills every feasible node
once before any twice, and the cap never leaves a replica Pending.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from policies.scheduler.filters import (
    CAPACITY_FILTERS,
    DOMAIN_FILTERS,
    STATIC_FILTERS,
    passes,
    run_dynamic_filters,
    run_static_filters,
    summarize,
)
from policies.scheduler.index import FloatArray, IntArray, NodeIndex
from policies.scheduler.prepare import Accounting, Prepared, prepare
from policies.scheduler.request import (
    FACTORS,
    PlacementRequest,
    SampleSize,
    SchedulerConfig,
    Strategy,
)
from policies.scheduler.scoring import (
    DOMAIN_FACTORS,
    NODE_SOFTNESS,
    STATIC_FACTORS,
    ZONE_SOFTNESS,
    own_node_closeness,
    utilization,
    utilization_at,
)

DEFAULT_CONFIG = SchedulerConfig()
#: Up to this many equal best scores are broken by comparing node ids directly.
_FEW_TIES = 64


@dataclass(frozen=True)
class ScoredNode:
    """One candidate: total score 0..100 and each factor's 0..1 value."""

    node_id: str
    score: float
    factors: Mapping[str, float]


@dataclass(frozen=True)
class Pick:
    """Where one replica goes, and the best candidates it was chosen from (chosen first)."""

    node_id: str
    score: float
    factors: Mapping[str, float]
    candidates: tuple[ScoredNode, ...] = ()


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`schedule`.

    ``filtered`` counts the nodes each filter ruled out for the first replica; when some
    replicas fit nowhere, ``reasons`` holds the counts at that moment and ``reason`` the
    summary line. ``feasible_nodes``/``scored_nodes`` are for the first replica; with
    ``compare_full_scan`` the full scan's best first-replica score is in ``full_scan_best``.
    ``node_cap`` is the per-node cap of the workload's replicas that was in force (None:
    none could bind in this decision).
    """

    picks: tuple[Pick, ...]
    unplaced: int
    reason: str = ""
    reasons: Mapping[str, int] = field(default_factory=dict)
    filtered: Mapping[str, int] = field(default_factory=dict)
    total_nodes: int = 0
    feasible_nodes: int = 0
    scored_nodes: int = 0
    weights: Mapping[str, float] = field(default_factory=dict)
    strategy: Strategy = "binpack"
    seed: int = 0
    full_scan_best: float | None = None
    node_cap: int | None = None

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(p.node_id for p in self.picks)

    @property
    def score_gap(self) -> float | None:
        """How far the first pick is below the full scan's best (0 for a full scan)."""
        if self.full_scan_best is None or not self.picks:
            return None
        return max(0.0, self.full_scan_best - self.picks[0].score)


@dataclass(frozen=True)
class _Summary:
    """The parts of a decision known before the first pick."""

    filtered: dict[str, int]
    total_nodes: int
    feasible_nodes: int
    weights: dict[str, float]
    strategy: Strategy
    seed: int
    node_cap: int | None

    def decision(
        self,
        picks: tuple[Pick, ...],
        unplaced: int,
        failure: Counter[str],
        scored: int,
        full_best: float | None,
    ) -> Decision:
        return Decision(
            picks=picks,
            unplaced=unplaced,
            reason=summarize(self.total_nodes, failure) if unplaced else "",
            reasons=dict(failure),
            filtered=self.filtered,
            total_nodes=self.total_nodes,
            feasible_nodes=self.feasible_nodes,
            scored_nodes=scored,
            weights=self.weights,
            strategy=self.strategy,
            seed=self.seed,
            full_scan_best=full_best,
            node_cap=self.node_cap,
        )


def sample_bound(sample_size: SampleSize, feasible: int, config: SchedulerConfig) -> int | None:
    """How many feasible nodes to score; None means all of them (a full scan)."""
    if sample_size is None:
        return None
    if sample_size == "auto":
        bound = max(config.sample_min, math.ceil(feasible * config.sample_percent / 100))
    else:
        bound = sample_size
    return None if bound >= feasible else bound


def cap_limit(cap: int, counts: IntArray) -> int:
    """How many replicas a node may hold before it stops taking more in this pick.

    ``counts`` are the workload's replicas on each feasible node: the cap, unless every
    feasible node is at or above it; then one above the fewest (spread evenly from there).
    """
    if not len(counts):
        return cap
    return max(cap, int(counts.min()) + 1)


class _Scorer:
    """Scores of one candidate set ``cand`` (indices into S) kept current between picks.

    ``tier`` is the per-node limit of a sampled candidate set, fixed when the sample was
    drawn from the nodes under it; the sample is used up once none of its nodes is under
    it (then the caller draws again). Without it (a full scan) the limit follows the batch.
    """

    def __init__(
        self,
        prep: Prepared,
        acc: Accounting,
        cand: IntArray,
        index: NodeIndex,
        tier: int | None = None,
    ) -> None:
        self.prep = prep
        self.acc = acc
        self.cand = cand
        self.tier = tier
        slots = acc.slots[cand]
        self.index = index
        self.slots = slots
        w = prep.weights
        self.factors: dict[str, FloatArray] = {}
        static = np.zeros(len(cand), dtype=np.float64)
        for name, factor in STATIC_FACTORS:
            if w[name] > 0:
                values = factor(prep, acc, slots)
                self.factors[name] = values
                static += w[name] * values
        self.static = static
        self.cap_ok = passes(acc, cand, CAPACITY_FILTERS)
        self.domain_ok = np.ones(len(cand), dtype=np.bool_)
        self.util = utilization(acc, cand)
        self.factors["utilization"] = self.util
        self.dynamic = np.zeros(len(cand), dtype=np.float64)
        # The per-node limit in force and the fewest replicas on a feasible candidate.
        self.limit: int | None = None
        self.fewest: int | None = None
        # When the workload's own counts are the only ones a pick moves (_placed_own): the
        # minimums the spreading factor was computed against, its node term, the
        # candidates of each zone, and the score without it.
        self.own_only = acc.own_only
        self.mins: tuple[int, int] = (0, 0)
        self.node_term: FloatArray | None = None
        self.zone_members: dict[int, IntArray] = {}
        self.base: FloatArray | None = None
        if acc.domain_dependent:
            self._refresh_domain()
        self.score = self._combine()
        self.masked = self._mask()

    def _mask(self) -> FloatArray:
        """Scores of the nodes this pick may take, ``-inf`` elsewhere (sets ``limit``)."""
        ok = self.cap_ok & self.domain_ok
        acc = self.acc
        self.limit = None
        if acc.node_cap is not None and acc.own_node is not None:
            counts = acc.own_node.at(self.cand)
            if self.tier is not None:
                self.limit = self.tier
            else:
                feasible = counts[ok]
                self.fewest = int(feasible.min()) if len(feasible) else None
                self.limit = cap_limit(acc.node_cap, feasible)
            ok &= counts < self.limit
        masked: FloatArray = np.where(ok, self.score, -np.inf)
        return masked

    def _refresh_domain(self) -> None:
        acc, w = self.acc, self.prep.weights
        if not self.own_only:  # (no domain filter applies otherwise: domain_ok stays all True)
            self.domain_ok = passes(acc, self.cand, DOMAIN_FILTERS)
        dynamic = np.zeros(len(self.cand), dtype=np.float64)
        for name, factor in DOMAIN_FACTORS:
            if w[name] > 0:
                values = factor(acc, self.cand)
                self.factors[name] = values
                dynamic += w[name] * values
        self.dynamic = dynamic
        if self.own_only and w["replica_spread"] > 0:
            assert acc.own_node is not None and acc.own_zone is not None
            self.mins = (acc.own_node.minimum(), acc.own_zone.minimum())
            self.node_term = None  # computed when a pick first needs it
        if acc.zone_spread is not None:
            self.util = utilization(acc, self.cand)
            self.factors["utilization"] = self.util

    def _combine(self) -> FloatArray:
        result: FloatArray = (
            self.static + self.prep.weights["utilization"] * self.util + self.dynamic
        ) * self.prep.scale
        return result

    def best(self) -> int | None:
        """Index into ``cand`` of the best feasible node; ties go to the smallest node id."""
        if not len(self.masked):
            return None
        top = self.masked.max()
        if top == -np.inf:
            return None
        ties = np.flatnonzero(self.masked == top)
        if len(ties) == 1:
            return int(ties[0])
        if len(ties) <= _FEW_TIES:
            return min((int(c) for c in ties), key=self._node_id)
        # Many equal nodes (a fresh homogeneous cluster): the index's cached id ranks.
        return int(ties[np.argmin(self.index.id_rank()[self.slots[ties]])])

    def _node_id(self, c: int) -> str:
        return self.prep.cols.node_ids[int(self.slots[c])] or ""

    def placed(self, c: int) -> None:
        """Refresh after the accounting placed a replica on ``cand[c]``."""
        one = self.cand[c : c + 1]
        acc, j = self.acc, int(self.cand[c])
        demand = acc.prep.demand
        self.cap_ok[c] = all(
            acc.used[d].item(j) + demand.item(d) <= acc.capacity[d].item(j)
            for d in acc.prep.demanded
        )
        if self.own_only:
            self._placed_own(c)
            return
        if self.acc.domain_dependent:
            if self.acc.zone_spread is None:
                self.util[c] = utilization(self.acc, one)[0]
            self._refresh_domain()
            self.score = self._combine()
            self.masked = self._mask()
            return
        self.util[c] = utilization_at(self.acc, j)
        w = self.prep.weights["utilization"]
        self.score[c] = (self.static[c] + w * self.util[c] + self.dynamic[c]) * self.prep.scale
        self.masked[c] = self.score[c] if self.cap_ok[c] else -np.inf

    def _placed_own(self, c: int) -> None:
        """:meth:`placed` when the workload's own replicas are the only counts a pick moves.

        No filter reads them, so a pick changes only the picked node (its room, its
        utilization, its replica count) and the zone term of the default spreading, which
        is the same for every candidate in the picked node's zone. Everything is refreshed
        only when a minimum moves (the fewest replicas per node or per zone, or on a
        feasible candidate, which sets the cap's limit); otherwise a pick costs a few
        vector operations over the candidates of one zone. Scores come out identical to a
        full refresh: the same terms are added in the same order.
        """
        acc, cand, prep = self.acc, self.cand, self.prep
        own_node, base = acc.own_node, self.base
        assert own_node is not None
        if base is None:
            base = self.base = self.static + prep.weights["utilization"] * self.util
        j = int(cand[c])
        count = int(own_node.counts[own_node.dom[j]])
        util = utilization_at(acc, j)
        self.util[c] = util
        base[c] = self.static.item(c) + prep.weights["utilization"] * util
        w = prep.weights["replica_spread"]
        if w > 0:
            own_zone = acc.own_zone
            assert own_zone is not None
            mins = (own_node.minimum(), own_zone.minimum())
            if mins != self.mins:
                self._refresh_domain()
                self.score = self._combine()
                self.masked = self._mask()
                return
            node_term = self.node_term
            if node_term is None:  # the others' terms are as they were at the last refresh
                node_term = self.node_term = own_node_closeness(acc, cand)
            node_term[c] = NODE_SOFTNESS / (NODE_SOFTNESS + max(count - mins[0], 0))
            zone = int(own_zone.dom[j])
            zone_term = ZONE_SOFTNESS / (
                ZONE_SOFTNESS + max(int(own_zone.counts[zone]) - mins[1], 0)
            )
            members = self.zone_members.get(zone)
            if members is None:
                members = np.flatnonzero(own_zone.dom[cand] == zone)
                self.zone_members[zone] = members
            values = (node_term[members] + zone_term) / 2.0
            self.factors["replica_spread"][members] = values
            # (self.dynamic is only read again after a full refresh has recomputed it)
            score = (base[members] + w * values) * prep.scale
            self.score[members] = score
            # The others in the zone keep their feasibility and standing against the cap.
            was = self.masked[members]
            self.masked[members] = np.where(was == -np.inf, was, score)
        else:
            self.score[c] = (base.item(c) + self.dynamic.item(c)) * prep.scale
        if self.limit is not None and self.tier is None and count - 1 == self.fewest:
            self.masked = self._mask()  # the picked node held the fewest: the limit may move
            return
        ok = bool(self.cap_ok[c] and self.domain_ok[c])
        if self.limit is not None:
            ok = ok and count < self.limit
        self.masked[c] = self.score[c] if ok else -np.inf

    def describe(self, c: int) -> ScoredNode:
        slot = int(self.acc.slots[self.cand[c]])
        node_id = self.prep.cols.node_ids[slot]
        assert node_id is not None
        weights, values = self.prep.weights, self.factors
        factors = {
            name: values[name].item(c) for name in FACTORS if weights[name] > 0 and name in values
        }
        return ScoredNode(node_id=node_id, score=self.score.item(c), factors=factors)

    def top(self, chosen: int, k: int) -> tuple[ScoredNode, ...]:
        """The chosen node then the next best feasible ones, ``k`` in all."""
        if k <= 0:
            return ()
        others: list[int] = []
        if k > 1:
            feasible = np.flatnonzero(self.masked > -np.inf)
            if len(feasible) > k:
                part = np.argpartition(-self.masked[feasible], k)[:k]
                feasible = feasible[part]
            ordered = sorted(
                (int(c) for c in feasible if c != chosen),
                key=lambda c: (-self.masked[c], self._node_id(c)),
            )
            others = ordered[: k - 1]
        return tuple(self.describe(c) for c in [chosen, *others])


def schedule(
    request: PlacementRequest,
    index: NodeIndex,
    *,
    config: SchedulerConfig = DEFAULT_CONFIG,
    rng_seed: int = 0,
    top_k: int | None = None,
    compare_full_scan: bool = False,
) -> Decision:
    """Place ``request.count`` replicas on ``index``; pure apart from reading the index.

    ``rng_seed`` drives the sample only; ``top_k`` (default ``config.top_k``) candidates are
    kept per pick for explanation; ``compare_full_scan`` also scores every feasible node for
    the first replica so the sample's quality gap can be reported.
    """
    k = config.top_k if top_k is None else top_k
    prep = prepare(request, index, config)
    static_ok, static_reasons = run_static_filters(prep)
    slots = np.flatnonzero(static_ok)
    acc = Accounting(prep, index, slots)
    feasible_mask, dynamic_reasons = run_dynamic_filters(acc)
    feasible = np.flatnonzero(feasible_mask)
    acc.set_cost_range(feasible)
    filtered = static_reasons + dynamic_reasons
    summary = _Summary(
        filtered=dict(filtered),
        total_nodes=len(index),
        feasible_nodes=len(feasible),
        weights={f: w for f, w in prep.weights.items() if w > 0},
        strategy=request.strategy,
        seed=rng_seed,
        node_cap=acc.node_cap,
    )
    if request.count == 0:
        return summary.decision((), 0, Counter(), 0, None)
    bound = sample_bound(request.sample_size, len(feasible), config)
    rng = np.random.default_rng(rng_seed)
    full_best = None
    if compare_full_scan and len(feasible):
        full = _Scorer(prep, acc, feasible, index)
        best_full = full.best()
        full_best = None if best_full is None else float(full.score[best_full])

    def candidates(pool: IntArray) -> IntArray:
        if bound is None or len(pool) <= bound:
            return pool
        return np.sort(rng.choice(pool, size=bound, replace=False))

    def sampled(feasible_now: IntArray) -> _Scorer:
        """A scorer over a sample of the feasible nodes under the per-node limit."""
        tier = None
        if acc.node_cap is not None and acc.own_node is not None:
            counts = acc.own_node.at(feasible_now)
            tier = cap_limit(acc.node_cap, counts)
            feasible_now = feasible_now[counts < tier]
        return _Scorer(prep, acc, candidates(feasible_now), index, tier)

    # With workload terms a pick can make more nodes feasible (a self-affine group's first
    # replica, a spread minimum rising), so an unsampled scan keeps every node with room.
    moving = acc.domain_dependent and not acc.own_only  # a filter reads what picks place
    pool = np.flatnonzero(passes(acc, None, CAPACITY_FILTERS)) if moving else feasible
    if bound is None or bound >= len(pool):
        scorer = _Scorer(prep, acc, pool, index)
    else:
        scorer = sampled(feasible)
    scored = int(np.count_nonzero(scorer.cap_ok & scorer.domain_ok))
    picks: list[Pick] = []
    failure: Counter[str] = Counter()
    for _ in range(request.count):
        c = scorer.best()
        if c is None and bound is not None:
            mask, _ = run_dynamic_filters(acc)
            pool = np.flatnonzero(mask)
            if len(pool):
                scorer = sampled(pool)
                c = scorer.best()
        if c is None:
            _, failure = run_dynamic_filters(acc)
            failure = static_reasons + failure
            break
        chosen = scorer.describe(c)
        picks.append(Pick(chosen.node_id, chosen.score, chosen.factors, scorer.top(c, k)))
        if len(picks) < request.count:  # nothing to refresh after the last pick
            acc.place(int(scorer.cand[c]))
            scorer.placed(c)
    return summary.decision(tuple(picks), request.count - len(picks), failure, scored, full_best)


def full_scan_best(
    request: PlacementRequest, index: NodeIndex, *, config: SchedulerConfig = DEFAULT_CONFIG
) -> float | None:
    """The best first-replica score over every feasible node (None when nothing fits)."""
    return schedule(
        _with_count(request, 1), index, config=config, top_k=0, compare_full_scan=True
    ).full_scan_best


def first_failure(
    request: PlacementRequest,
    index: NodeIndex,
    node_id: str,
    *,
    config: SchedulerConfig = DEFAULT_CONFIG,
) -> str | None:
    """Why ``node_id`` cannot take the next replica (its first failing filter), or None."""
    prep = prepare(request, index, config)
    slot = index.slot(node_id)
    for reason, check in STATIC_FILTERS:
        ok = check(prep)
        if ok is not None and not ok[slot]:
            return reason
    static_ok, _ = run_static_filters(prep)
    slots = np.flatnonzero(static_ok)
    acc = Accounting(prep, index, slots)
    j = np.searchsorted(slots, slot)
    _, reasons = run_dynamic_filters(acc, np.asarray([j], dtype=np.int64))
    return next(iter(reasons), None)


def _with_count(request: PlacementRequest, count: int) -> PlacementRequest:
    return dataclasses.replace(request, count=count)
