"""Preemption planning: which lower-priority replicas to evict so that one replica fits.

Pure: the caller supplies the running replicas with their priorities (the ledger knows
them); the plan only names victims, and evicting them is the control plane's job.

Rules, as in the Kubernetes default preemption:

- only replicas of strictly lower priority than the request are ever victims;
- a candidate node must pass every filter except capacity (evicting replicas does not make
  a zone, selector, taint or anti-affinity mismatch go away here);
- on each node start from "evict every lower-priority replica", then spare (reprieve) them
  one by one, highest priority first, while the request still fits. The result is minimal:
  no remaining victim can be spared;
- among nodes, prefer one under the workload's per-node cap
  (:meth:`~policies.scheduler.request.PlacementRequest.node_cap`), or else holding the
  fewest of its replicas, as a placement without preemption would; then the lowest
  highest-victim priority, then fewest victims, then the lowest sum of victim priorities,
  then the node id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cloudless.vocabulary import Resources
from policies.scheduler.decide import DEFAULT_CONFIG
from policies.scheduler.filters import (
    CAPACITY_FILTERS,
    DOMAIN_FILTERS,
    passes,
    run_static_filters,
)
from policies.scheduler.index import NodeIndex
from policies.scheduler.prepare import Accounting, prepare
from policies.scheduler.request import PlacementRequest, SchedulerConfig


@dataclass(frozen=True)
class RunningReplica:
    """A replica the index already accounts for, with the priority of its workload."""

    replica_id: str
    node_id: str
    priority: int
    resources: Resources
    workload_key: str = ""


@dataclass(frozen=True)
class PreemptionPlan:
    """Evict ``victims`` (all on ``node_id``) and one replica of the request fits there."""

    node_id: str
    victims: tuple[RunningReplica, ...]

    @property
    def max_victim_priority(self) -> int:
        return max(v.priority for v in self.victims)


def plan_preemption(
    request: PlacementRequest,
    index: NodeIndex,
    running: Iterable[RunningReplica],
    *,
    config: SchedulerConfig = DEFAULT_CONFIG,
) -> PreemptionPlan | None:
    """The best minimal eviction plan for one replica, or None.

    None when the replica already fits somewhere without evicting (schedule it instead) or
    when no node can make room from lower-priority replicas alone.
    """
    prep = prepare(request, index, config)
    static_ok, _ = run_static_filters(prep)
    slots = np.flatnonzero(static_ok)
    acc = Accounting(prep, index, slots)
    domain_ok = passes(acc, None, DOMAIN_FILTERS)
    capacity_ok = passes(acc, None, CAPACITY_FILTERS)
    if np.any(domain_ok & capacity_ok):
        return None
    blocked = {int(s) for s in slots[domain_ok & ~capacity_ok]}
    by_node: dict[int, list[RunningReplica]] = {}
    for replica in running:
        if replica.priority >= request.priority or replica.node_id not in index:
            continue
        slot = index.slot(replica.node_id)
        if slot in blocked:
            by_node.setdefault(slot, []).append(replica)
    cols = prep.cols
    need = request.resources.as_tuple()
    cap, own = acc.node_cap, acc.own_node

    def over_cap(slot: int) -> int:
        """0 under the cap, else how far at or above it (fewer is better)."""
        if cap is None or own is None:
            return 0
        held = int(own.counts[own.dom[int(np.searchsorted(slots, slot))]])
        return max(0, held - cap + 1)

    best: tuple[tuple[int, int, int, int, str], PreemptionPlan] | None = None
    for slot, candidates in by_node.items():
        free = [
            int(c) - int(a)
            for c, a in zip(cols.capacity[:, slot], cols.allocated[:, slot], strict=True)
        ]
        victims = _minimal_victims(free, need, candidates, cols.capacity[:, slot])
        if victims is None:
            continue
        node_id = cols.node_ids[slot]
        assert node_id is not None
        key = (
            over_cap(slot),
            max(v.priority for v in victims),
            len(victims),
            sum(v.priority for v in victims),
            node_id,
        )
        if best is None or key < best[0]:
            best = (key, PreemptionPlan(node_id=node_id, victims=victims))
    return None if best is None else best[1]


def _minimal_victims(
    free: list[int],
    need: tuple[int, ...],
    candidates: list[RunningReplica],
    capacity: Iterable[np.int64],
) -> tuple[RunningReplica, ...] | None:
    room = list(free)
    for v in candidates:
        room = [r + x for r, x in zip(room, v.resources.as_tuple(), strict=True)]
    if any(r < n for r, n in zip(room, need, strict=True)):
        return None  # even evicting every lower-priority replica is not enough
    caps = [max(1, int(c)) for c in capacity]

    def share(v: RunningReplica) -> float:
        return max(x / c for x, c in zip(v.resources.as_tuple(), caps, strict=True))

    # Spare the most important first; among equals spare the smallest, so the fewest and
    # biggest replicas go.
    order = sorted(candidates, key=lambda v: (-v.priority, share(v), v.replica_id))
    victims: list[RunningReplica] = []
    for v in order:
        after = [r - x for r, x in zip(room, v.resources.as_tuple(), strict=True)]
        if all(a >= n for a, n in zip(after, need, strict=True)):
            room = after  # spared: it stays and still leaves enough room
        else:
            victims.append(v)
    victims.sort(key=lambda v: (v.priority, v.replica_id))
    return tuple(victims)
