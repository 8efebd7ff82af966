"""Score factors: each maps feasible nodes to 0..1 (1 = best), vectorized.

The total is ``100 * sum(w_f * f) / sum(w_f)`` over the factors that apply (see
:class:`~policies.scheduler.request.Weights`), so it is always within 0..100 and the
per-factor values explain it. Factors are absolute wherever possible (reliability,
network, utilization, affinity, spread) and ``cost`` is normalized over every node feasible
for the batch's first replica, never over a sample: a sampled decision's score is therefore directly
comparable with the full scan's, which is how the sampling gap is measured.

Static factors depend only on node facts and are computed once per candidate set; the
dynamic ones (utilization, workload affinity, topology spread) change as a batch places.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from policies.scheduler.index import CPU, MEMORY, FloatArray, IntArray
from policies.scheduler.prepare import Accounting, Prepared, term_mask

#: Recent churn events that halve a node's reliability.
CHURN_HALF = 3.0
#: Latency (ms) at which the network factor is 0.5.
LATENCY_REF_MS = 50.0
#: Default replica spreading: how soft each step above the fewest replicas is, per node and
#: per zone (Kubernetes' default constraints use maxSkew 3 on hostname and 5 on zone).
NODE_SOFTNESS = 3.0
ZONE_SOFTNESS = 5.0
#: In zone-spread, the share of the utilization factor given to "fewer replicas in my zone";
#: above 0.5 so one replica less in a zone outweighs any difference in node fullness.
ZONE_SHARE = 0.75

StaticFactor = Callable[[Prepared, Accounting, IntArray], FloatArray]
DynamicFactor = Callable[[Accounting, IntArray | None], FloatArray]


def locality(prep: Prepared, _acc: Accounting, slots: IntArray) -> FloatArray:
    """1 in a preferred zone or with every preferred label, 0.5 in a preferred region, else 0.

    Preferred regions include the regions of the preferred zones, so "near zone eu-1a"
    still favours the rest of eu-1 over another continent.
    """
    cols = prep.cols
    loc = prep.request.locality
    zone_lut = np.zeros(len(cols.zones), dtype=np.float64)
    region_lut = np.zeros(len(cols.regions), dtype=np.float64)
    zone_lut[[c for z in loc.zones if (c := cols.zones.lookup(z))]] = 1.0
    region_lut[[c for r in loc.regions if (c := cols.regions.lookup(r))]] = 0.5
    if loc.zones:
        near = np.unique(cols.region[(zone_lut[cols.zone] > 0) & cols.present])
        region_lut[near[near != 0]] = 0.5
    score: FloatArray = np.maximum(zone_lut[cols.zone[slots]], region_lut[cols.region[slots]])
    if loc.labels:
        match = np.ones(len(slots), dtype=np.bool_)
        for key, value in loc.labels.items():
            column = cols.labels.get(key)
            code = cols.values.lookup(value)
            if column is None or code == 0:
                match[:] = False
                break
            match &= column[slots] == code
        score[match] = 1.0
    return score


def reliability(prep: Prepared, _acc: Accounting, slots: IntArray) -> FloatArray:
    """Recorded uptime ratio, halved for every :data:`CHURN_HALF` recent churn events."""
    cols = prep.cols
    result: FloatArray = cols.uptime[slots] * (CHURN_HALF / (CHURN_HALF + cols.churn[slots]))
    return result


def cost(prep: Prepared, acc: Accounting, slots: IntArray) -> FloatArray:
    """Cheaper per core-hour is better: 1 at the cheapest feasible node, 0 at the dearest."""
    spread = acc.cost_max - acc.cost_min
    if spread <= 0:
        return np.ones(len(slots), dtype=np.float64)
    result: FloatArray = (acc.cost_max - prep.cols.cost[slots]) / spread
    return result


def network(prep: Prepared, _acc: Accounting, slots: IntArray) -> FloatArray:
    """Lower measured latency is better: 1 at 0 ms, 0.5 at :data:`LATENCY_REF_MS`."""
    result: FloatArray = LATENCY_REF_MS / (LATENCY_REF_MS + prep.cols.latency[slots])
    return result


def node_affinity(prep: Prepared, _acc: Accounting, slots: IntArray) -> FloatArray:
    """Share of the preferred node-affinity weight whose terms the node matches."""
    preferred = prep.request.node_affinity.preferred
    total = float(sum(p.weight for p in preferred))
    score = np.zeros(len(slots), dtype=np.float64)
    for p in preferred:
        score += p.weight * term_mask(prep.cols, p.term.match_expressions, slots)
    result: FloatArray = score / total
    return result


def taint_toleration(prep: Prepared, _acc: Accounting, slots: IntArray) -> FloatArray:
    """1 without untolerated PreferNoSchedule taints, 1/(1+k) with k of them."""
    prefer = prep.prefer_taints
    count = np.zeros(len(slots), dtype=np.float64)
    if prefer is not None:
        for w in np.flatnonzero(prefer):
            count += np.bitwise_count(prep.cols.taints[w][slots] & prefer[w])
    result: FloatArray = 1.0 / (1.0 + count)
    return result


STATIC_FACTORS: tuple[tuple[str, StaticFactor], ...] = (
    ("locality", locality),
    ("reliability", reliability),
    ("cost", cost),
    ("network", network),
    ("node_affinity", node_affinity),
    ("taint_toleration", taint_toleration),
)


def fullness_after(acc: Accounting, idx: IntArray | None) -> FloatArray:
    """Mean of cpu and memory in use if the replica lands here, 0..1."""
    demand = acc.prep.demand
    total = np.zeros(len(acc.slots) if idx is None else len(idx), dtype=np.float64)
    for d in (CPU, MEMORY):
        used, cap = acc.used[d], acc.capacity[d]
        if idx is not None:
            used, cap = used[idx], cap[idx]
        total += (used + demand[d]) / np.maximum(cap, 1)
    result: FloatArray = np.clip(total / 2.0, 0.0, 1.0)
    return result


def utilization(acc: Accounting, idx: IntArray | None) -> FloatArray:
    """By strategy: binpack prefers fuller nodes (best fit), spread emptier ones (worst fit),
    zone-spread zones with fewer replicas of this workload first, then emptier nodes."""
    fullness = fullness_after(acc, idx)
    strategy = acc.prep.request.strategy
    if strategy == "binpack":
        return fullness
    if strategy == "spread" or acc.zone_spread is None:
        result: FloatArray = 1.0 - fullness
        return result
    zone_term = _closeness_to_min(acc.zone_spread.at(idx), acc.zone_spread.minimum())
    result = ZONE_SHARE * zone_term + (1.0 - ZONE_SHARE) * (1.0 - fullness)
    return result


def utilization_at(acc: Accounting, j: int) -> float:
    """:func:`utilization` of one feasible node ``j`` in plain floats (a pick's refresh).

    Same operations in the same order as the vectorized form, so the same value; for
    zone-spread, whose value depends on the zone's count, it defers to the vector form.
    """
    if acc.zone_spread is not None and acc.prep.request.strategy == "zone-spread":
        return float(utilization(acc, np.asarray([j], dtype=np.int64)).item(0))
    demand = acc.prep.demand
    total = 0.0
    for d in (CPU, MEMORY):
        total += (acc.used[d].item(j) + demand.item(d)) / max(acc.capacity[d].item(j), 1)
    fullness = min(max(total / 2.0, 0.0), 1.0)
    return fullness if acc.prep.request.strategy == "binpack" else 1.0 - fullness


def _closeness_to_min(counts: IntArray, minimum: int) -> FloatArray:
    """1 for a domain at the minimum count, 1/2 one above, 1/3 two above, ..."""
    result: FloatArray = 1.0 / (1.0 + np.maximum(counts - minimum, 0))
    return result


def workload_affinity(acc: Accounting, idx: IntArray | None) -> FloatArray:
    """Preferred (anti-)affinity: share of the preference weight the node satisfies.

    A preferred affinity term counts when the node's domain runs a selected replica, a
    preferred anti-affinity term when it runs none.
    """
    n = len(acc.slots) if idx is None else len(idx)
    score = np.zeros(n, dtype=np.float64)
    total = 0.0
    for wt, anti in [(w, False) for w in acc.preferred] + [(w, True) for w in acc.preferred_anti]:
        term = wt.term
        hit = term.at(idx) > 0
        present = term.present(idx)
        if present is not None:
            hit &= present
        score += wt.weight * (~hit if anti else hit)
        total += wt.weight
    if total > 0:
        score /= total
    return score


def topology_spread(acc: Accounting, idx: IntArray | None) -> FloatArray:
    """``ScheduleAnyway`` constraints: mean closeness of the node's domain to the minimum."""
    n = len(acc.slots) if idx is None else len(idx)
    score = np.zeros(n, dtype=np.float64)
    for spread in acc.spread_soft:
        term = spread.term
        part = _closeness_to_min(term.at(idx), term.minimum())
        present = term.present(idx)
        if present is not None:
            part = np.where(present, part, 0.0)
        score += part
    if acc.spread_soft:
        score /= len(acc.spread_soft)
    return score


def own_node_closeness(acc: Accounting, idx: IntArray | None) -> FloatArray:
    """The node term of :func:`replica_spread`."""
    node = acc.own_node
    assert node is not None
    result: FloatArray = NODE_SOFTNESS / (
        NODE_SOFTNESS + np.maximum(node.at(idx) - node.minimum(), 0)
    )
    return result


def replica_spread(acc: Accounting, idx: IntArray | None) -> FloatArray:
    """Default spreading of a workload's own replicas: mean of a node and a zone term.

    Each term is ``s / (s + count - min)``: 1 where the node (zone) holds the fewest of this
    workload's replicas, then gently lower per replica above that (``s`` =
    :data:`NODE_SOFTNESS`, :data:`ZONE_SOFTNESS`), so it shapes bin-packing rather than
    overriding it. Zoneless nodes form one domain of their own.
    """
    zone = acc.own_zone
    assert zone is not None
    zone_term = ZONE_SOFTNESS / (ZONE_SOFTNESS + np.maximum(zone.at(idx) - zone.minimum(), 0))
    result: FloatArray = (own_node_closeness(acc, idx) + zone_term) / 2.0
    return result


#: Factors that change when a batch places a replica in the same topology domain.
DOMAIN_FACTORS: tuple[tuple[str, DynamicFactor], ...] = (
    ("workload_affinity", workload_affinity),
    ("topology_spread", topology_spread),
    ("replica_spread", replica_spread),
)
