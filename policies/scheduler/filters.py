"""Feasibility: small named filters, each a vectorized pass that returns a pass mask.

Every filter has a reason constant users read in ``0/5 nodes are available: ...``; a node is
counted once, under the first filter that rules it out, so the order below is part of the
interface. Static filters read node facts that cannot change during a decision and run once
over every node; dynamic filters (capacity, workload affinity, spread) depend on what the
decision has already placed and run over the statically feasible nodes only. Within each
group the cheapest come first, and a filter that does not apply returns ``None`` (no work).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

import numpy as np

from policies.scheduler.index import (
    BANDWIDTH,
    CPU,
    GPU,
    MEMORY,
    STORAGE,
    BoolArray,
    IntArray,
)
from policies.scheduler.prepare import (
    CAPACITY_ORDER,
    Accounting,
    Prepared,
    term_mask,
)

# Reason constants: stable strings users see and tests assert on. The first seven are the
# same strings as policies.placement so status messages do not change when it is replaced.
NOT_READY = "node not ready"
RUNTIME_MISSING = "runtime unavailable"
RUNTIME_CLASS_MISSING = "runtime class unavailable"
REGION_MISMATCH = "region mismatch"
ZONE_MISMATCH = "zone mismatch"
SELECTOR_MISMATCH = "node selector mismatch"
UNTOLERATED_TAINT = "untolerated taint"
NODE_AFFINITY_MISMATCH = "node affinity mismatch"
AVOIDED_NODE = "replica crash-looped here recently"
INSUFFICIENT_MEMORY = "insufficient memory"
INSUFFICIENT_CPU = "insufficient cpu"
INSUFFICIENT_STORAGE = "insufficient storage"
INSUFFICIENT_GPU = "insufficient gpu"
INSUFFICIENT_BANDWIDTH = "insufficient bandwidth"
WORKLOAD_AFFINITY_MISMATCH = "workload affinity mismatch"
WORKLOAD_ANTI_AFFINITY_CONFLICT = "workload anti-affinity conflict"
SPREAD_SKEW_EXCEEDED = "topology spread max skew exceeded"

StaticFilter = Callable[[Prepared], BoolArray | None]
DynamicFilter = Callable[[Accounting, IntArray | None], BoolArray | None]


# --- static filters: over every node slot -------------------------------------------------


def summarize(total: int, reasons: Mapping[str, int]) -> str:
    """``0/5 nodes are available: 3 insufficient memory, 2 node selector mismatch``.

    Same format as the baseline placer's (bench/naive_placer.py): most frequent reason
    first, then alphabetical, so the text is stable for equal counts.
    """
    items = sorted(((r, n) for r, n in reasons.items() if n), key=lambda i: (-i[1], i[0]))
    parts = ", ".join(f"{n} {reason}" for reason, n in items)
    return f"0/{total} nodes are available" + (f": {parts}" if parts else "")


def node_ready(prep: Prepared) -> BoolArray:
    """Only Ready nodes accept new replicas (Joining, Suspect, Draining, ... do not)."""
    ready: BoolArray = np.equal(prep.cols.state, prep.cols.ready_code)
    return ready


def runtime_available(prep: Prepared) -> BoolArray:
    return _has_bit(prep, prep.runtime_bit)


def runtime_class_available(prep: Prepared) -> BoolArray | None:
    return None if prep.class_bit is None else _has_bit(prep, prep.class_bit)


def _has_bit(prep: Prepared, bit: int) -> BoolArray:
    if bit < 0:  # nobody ever advertised it
        return np.zeros(prep.cols.n, dtype=np.bool_)
    has: BoolArray = np.not_equal(prep.cols.runtime & np.int64(1 << bit), 0)
    return has


def region_allowed(prep: Prepared) -> BoolArray | None:
    return None if prep.region_lut is None else prep.region_lut[prep.cols.region]


def zone_allowed(prep: Prepared) -> BoolArray | None:
    return None if prep.zone_lut is None else prep.zone_lut[prep.cols.zone]


def node_selector(prep: Prepared) -> BoolArray | None:
    if not prep.selector:
        return None
    cols = prep.cols
    ok = np.ones(cols.n, dtype=np.bool_)
    for key, code in prep.selector:
        column = cols.labels.get(key)
        if column is None or code == 0:
            return np.zeros(cols.n, dtype=np.bool_)
        ok &= column == code
    return ok


def taints_tolerated(prep: Prepared) -> BoolArray | None:
    """NoSchedule and NoExecute taints repel; PreferNoSchedule only costs score."""
    bad = prep.bad_taints
    if bad is None:
        return None
    taints = prep.cols.taints
    ok = np.ones(prep.cols.n, dtype=np.bool_)
    for w in np.flatnonzero(bad):
        ok &= (taints[w] & bad[w]) == 0
    return ok


def node_affinity(prep: Prepared) -> BoolArray | None:
    """Required node affinity: the node matches at least one term (terms are ORed)."""
    terms = prep.request.node_affinity.required
    if not terms:
        return None
    ok = np.zeros(prep.cols.n, dtype=np.bool_)
    for term in terms:
        ok |= term_mask(prep.cols, term.match_expressions, None)
    return ok


def not_avoided(prep: Prepared) -> BoolArray | None:
    """A replica moved away from a crash loop avoids the nodes it crashed on."""
    return prep.avoid


STATIC_FILTERS: tuple[tuple[str, StaticFilter], ...] = (
    (NOT_READY, node_ready),
    (RUNTIME_MISSING, runtime_available),
    (RUNTIME_CLASS_MISSING, runtime_class_available),
    (REGION_MISMATCH, region_allowed),
    (ZONE_MISMATCH, zone_allowed),
    (SELECTOR_MISMATCH, node_selector),
    (UNTOLERATED_TAINT, taints_tolerated),
    (NODE_AFFINITY_MISMATCH, node_affinity),
    (AVOIDED_NODE, not_avoided),
)


def run_static_filters(prep: Prepared) -> tuple[BoolArray, Counter[str]]:
    """Mask of nodes passing every static filter, and per-reason counts of the rest."""
    alive = prep.cols.present.copy()
    reasons: Counter[str] = Counter()
    for reason, check in STATIC_FILTERS:
        ok = check(prep)
        if ok is None:
            continue
        before = int(np.count_nonzero(alive))
        alive &= ok
        failed = before - int(np.count_nonzero(alive))
        if failed:
            reasons[reason] += failed
    return alive, reasons


# --- dynamic filters: over the statically feasible nodes (S-space) -----------------------


def _fits(dim: int) -> DynamicFilter:
    def fits(acc: Accounting, idx: IntArray | None) -> BoolArray | None:
        need = acc.prep.demand[dim]
        if need <= 0:
            return None
        used, cap = acc.used[dim], acc.capacity[dim]
        if idx is not None:
            used, cap = used[idx], cap[idx]
        result: BoolArray = used + need <= cap
        return result

    fits.__name__ = f"fits_{dim}"
    return fits


def workload_affinity(acc: Accounting, idx: IntArray | None) -> BoolArray | None:
    """The node's domain already runs a selected replica.

    As in Kubernetes, the first replica of a group whose selector matches itself may go
    anywhere with the topology key, or a self-affine workload could never start.
    """
    if not acc.affinity:
        return None
    ok = _ones(acc, idx)
    for term in acc.affinity:
        present = term.present(idx)
        if present is not None:
            ok &= present
        if not (term.total == 0 and term.self_match):
            ok &= term.at(idx) > 0
    return ok


def workload_anti_affinity(acc: Accounting, idx: IntArray | None) -> BoolArray | None:
    """The node's domain runs no selected replica (replicas placed by this batch included)."""
    if not acc.anti_affinity:
        return None
    ok = _ones(acc, idx)
    for term in acc.anti_affinity:
        clash = term.at(idx) > 0
        present = term.present(idx)
        if present is not None:
            clash &= present
        ok &= ~clash
    return ok


def topology_spread(acc: Accounting, idx: IntArray | None) -> BoolArray | None:
    """``DoNotSchedule`` constraints: placing here keeps the domain within ``max_skew``.

    Nodes without the topology key (no zone or region) are not in any domain and fail.
    """
    if not acc.spread_hard:
        return None
    ok = _ones(acc, idx)
    for spread in acc.spread_hard:
        term = spread.term
        ok &= term.at(idx) + term.self_match - term.minimum() <= spread.max_skew
        present = term.present(idx)
        if present is not None:
            ok &= present
    return ok


def _ones(acc: Accounting, idx: IntArray | None) -> BoolArray:
    return np.ones(len(acc.slots) if idx is None else len(idx), dtype=np.bool_)


_CAPACITY_REASONS = {
    MEMORY: INSUFFICIENT_MEMORY,
    CPU: INSUFFICIENT_CPU,
    STORAGE: INSUFFICIENT_STORAGE,
    GPU: INSUFFICIENT_GPU,
    BANDWIDTH: INSUFFICIENT_BANDWIDTH,
}
CAPACITY_FILTERS: tuple[tuple[str, DynamicFilter], ...] = tuple(
    (_CAPACITY_REASONS[d], _fits(d)) for d in CAPACITY_ORDER
)
DOMAIN_FILTERS: tuple[tuple[str, DynamicFilter], ...] = (
    (WORKLOAD_AFFINITY_MISMATCH, workload_affinity),
    (WORKLOAD_ANTI_AFFINITY_CONFLICT, workload_anti_affinity),
    (SPREAD_SKEW_EXCEEDED, topology_spread),
)
DYNAMIC_FILTERS: tuple[tuple[str, DynamicFilter], ...] = CAPACITY_FILTERS + DOMAIN_FILTERS

#: Every reason, in the order filters run.
REASONS: tuple[str, ...] = tuple(r for r, _ in STATIC_FILTERS + DYNAMIC_FILTERS)


def run_dynamic_filters(
    acc: Accounting, idx: IntArray | None = None
) -> tuple[BoolArray, Counter[str]]:
    """Mask over ``idx`` (None: all statically feasible nodes) and first-failure counts."""
    alive = _ones(acc, idx)
    reasons: Counter[str] = Counter()
    for reason, check in DYNAMIC_FILTERS:
        ok = check(acc, idx)
        if ok is None:
            continue
        before = int(np.count_nonzero(alive))
        alive &= ok
        failed = before - int(np.count_nonzero(alive))
        if failed:
            reasons[reason] += failed
    return alive, reasons


def passes(
    acc: Accounting, idx: IntArray | None, group: tuple[tuple[str, DynamicFilter], ...]
) -> BoolArray:
    """AND of one filter group without counting reasons (the per-pick fast path)."""
    ok = _ones(acc, idx)
    for _, check in group:
        mask = check(acc, idx)
        if mask is not None:
            ok &= mask
    return ok
