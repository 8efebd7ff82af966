"""The coordinator's scheduler soft state: a long-lived node index mirroring the ledger.

Per DESIGN §2 the scheduler's node index is soft state: it lives in the coordinator's
memory, is built from the ``cluster/<name>`` snapshot on first use and kept current from
what this process itself writes to the ledger (node records via ``publish_node``,
committed plans via ``place_replicas``/``commit_plan``). The ledger stays the judge: a plan
decided on a stale index is rejected by the commit validator, and the index re-syncs from
a fresh snapshot. Changes made by other coordinators are noticed the same way, and when a
decision finds no room (the pending registration is refused if the ledger moved on).

Ledger versions keep the mirror exact: every ledger write bumps the version and returns it,
so a change is applied once, changes already contained in a loaded snapshot are skipped,
and a gap (a version this process never saw) marks the index as behind.

It holds no activity: :class:`SchedulerState` is owned by ``LedgerActivities``
(:mod:`activities.ledger`). The translation of manifests and ledger records into the
scheduler's inputs is :mod:`activities.scheduler_inputs`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from activities.scheduler_inputs import node_spec, resources, scheduler_config
from cloudless.model import (
    Allocation,
    ClusterSnapshot,
    CommitPlanInput,
    CommitPlanResult,
    LedgerWorkload,
    SchedulerSettings,
    UpsertNodeResult,
)
from policies import scheduler as sched

#: A gap in the versions this process has seen is tolerated this long (a concurrent write
#: of this process may still be reporting back) before the index counts as behind.
GAP_GRACE_SECONDS = 1.0
#: How often a deciding coordinator asks the ledger for its version (one cheap query, in
#: the background), so writes it did not make itself (another coordinator's plans, a
#: scheduler settings change) reach its index within about this long plus the grace.
VERSION_POLL_SECONDS = 2.0


@dataclass
class Tentative:
    """A plan decided on the index and reserved in it while its commit is in flight."""

    plan_id: str
    allocations: list[Allocation]
    releases: list[Allocation]
    workloads: Mapping[str, LedgerWorkload]


class SchedulerState:
    """The long-lived :class:`~policies.scheduler.NodeIndex` of one coordinator process.

    Decisions run synchronously on the live index and reserve their picks in it at once
    (:meth:`reserve`), so concurrent decisions in this process never pick the same room;
    a commit either confirms the reservation (:meth:`committed`) or undoes it
    (:meth:`cancel`).
    """

    def __init__(self, fetch: Callable[[], Awaitable[ClusterSnapshot]]) -> None:
        self._fetch = fetch
        self.index: sched.NodeIndex | None = None
        self.workloads: dict[str, LedgerWorkload] = {}
        self.addresses: dict[str, str] = {}  # node id -> agent address, for RunReplica
        self.version = -1  # every ledger version <= this is reflected in the index
        self.loaded_at = -1  # version of the last snapshot loaded
        self._seen: set[int] = set()  # versions above ``version`` already applied
        self._gap_since: float | None = None
        self._stale = True
        self._lock = asyncio.Lock()
        self._inflight: dict[str, Tentative] = {}
        self.resyncs = 0
        self.settings = SchedulerSettings()
        self.config = sched.SchedulerConfig()
        self._latest = -1  # the newest ledger version a poll reported
        self._ahead_since: float | None = None
        self._polled_at = -VERSION_POLL_SECONDS
        self._poll: asyncio.Task[None] | None = None
        self.poll_version: Callable[[], Awaitable[int]] | None = None

    # --- loading -----------------------------------------------------------------------

    def mark_stale(self) -> None:
        self._stale = True

    @property
    def behind(self) -> bool:
        """Whether the index must be reloaded before the next decision."""
        if self._stale or self.index is None:
            return True
        now = time.monotonic()
        since = self._ahead_since
        if since is not None and self.version < self._latest and now - since > GAP_GRACE_SECONDS:
            return True
        return self._gap_since is not None and now - self._gap_since > GAP_GRACE_SECONDS

    def _maybe_poll(self) -> None:
        """Start a background version check if the last one is old enough."""
        if self.poll_version is None or (self._poll is not None and not self._poll.done()):
            return
        now = time.monotonic()
        if now - self._polled_at < VERSION_POLL_SECONDS:
            return
        self._polled_at = now
        self._poll = asyncio.create_task(self._check_version(self.poll_version))

    async def _check_version(self, poll: Callable[[], Awaitable[int]]) -> None:
        try:
            latest = await poll()
        except Exception:  # a busy ledger: the next decision polls again
            return
        self.note_version(latest)

    def note_version(self, latest: int) -> None:
        """The ledger is at ``latest``: if the index is behind that and this process's own
        writes in flight do not catch it up within the grace, the index is reloaded."""
        if latest > self._latest:
            self._latest = latest
        if self.version < self._latest:
            if self._ahead_since is None:
                self._ahead_since = time.monotonic()
        else:
            self._ahead_since = None

    async def current(self) -> sched.NodeIndex:
        """The index, reloaded from the ledger first if it is stale or behind."""
        self._maybe_poll()
        if self.behind:
            async with self._lock:
                if self.behind:
                    self.load(await self._fetch())
        assert self.index is not None
        return self.index

    async def resync(self) -> sched.NodeIndex:
        self.mark_stale()
        return await self.current()

    def load(self, snap: ClusterSnapshot) -> None:
        """Rebuild from a snapshot; plans still in flight are reserved again on top."""
        index = sched.NodeIndex(initial_capacity=max(64, len(snap.nodes)))
        for key, meta in snap.workloads.items():
            index.register_workload(key, meta.labels)
        for n in snap.nodes:
            index.upsert(node_spec(n))  # with the ledger's allocated totals
            for key, count in n.workloads.items():  # and its replica counts
                if key not in snap.workloads:
                    index.register_workload(key, {})
                index.allocate(n.node_id, sched.Resources(), workload_key=key, replicas=count)
        self.index = index
        self.workloads = dict(snap.workloads)
        self.addresses = {n.node_id: n.address for n in snap.nodes}
        self.version = self.loaded_at = snap.version
        self.settings = snap.scheduler
        self.config = scheduler_config(snap.scheduler)
        self._seen.clear()
        self._gap_since = None
        self._ahead_since = None
        self._latest = max(self._latest, snap.version)
        self._stale = False
        self.resyncs += 1
        for t in self._inflight.values():
            self._reserve_into(t)

    # --- version bookkeeping -------------------------------------------------------------

    def _saw(self, version: int) -> bool:
        """Record ``version`` as applied; False if the index already reflects it."""
        if version <= self.version or version in self._seen:
            return False
        self._seen.add(version)
        while self.version + 1 in self._seen:
            self.version += 1
            self._seen.discard(self.version)
        self._gap_since = (self._gap_since or time.monotonic()) if self._seen else None
        if self.version >= self._latest:
            self._ahead_since = None
        return True

    # --- node records ----------------------------------------------------------------------

    def node_changed(self, result: UpsertNodeResult) -> None:
        """Apply a node record this process wrote to the ledger."""
        if self.index is None or not self._saw(result.version):
            return
        n = result.node
        self.addresses[n.node_id] = n.address
        spec = node_spec(n)
        if n.node_id in self.index:
            self.index.update_node(
                n.node_id,
                state=spec.state,
                capacity=spec.capacity,
                zone=spec.zone,
                region=spec.region,
                labels=spec.labels,
                runtimes=spec.runtimes,
                runtime_classes=spec.runtime_classes,
                taints=spec.taints,
                uptime_ratio=spec.uptime_ratio,
                churn=spec.churn,
                cost_per_core_hour=spec.cost_per_core_hour,
                latency_ms=spec.latency_ms,
            )
        else:
            self.index.upsert(spec)

    # --- plans -----------------------------------------------------------------------------

    def reserve(self, plan: CommitPlanInput) -> Tentative:
        """Apply a plan to the index before committing it (undone by :meth:`cancel`)."""
        t = Tentative(plan.plan_id, list(plan.allocations), list(plan.releases), plan.workloads)
        self._inflight[plan.plan_id] = t
        self._reserve_into(t)
        return t

    def _reserve_into(self, t: Tentative) -> None:
        if self.index is None:
            return
        for key, meta in t.workloads.items():
            if self.index.workload_labels(key) != meta.labels:
                self.index.register_workload(key, meta.labels)
        try:
            self._apply(t.releases, sign=-1)
            self._apply(t.allocations, sign=+1)
        except (KeyError, ValueError):
            self.mark_stale()

    def cancel(self, t: Tentative) -> None:
        """The commit failed: take the reservation back out of the index."""
        self._inflight.pop(t.plan_id, None)
        if self.index is None:
            return
        try:
            self._apply(t.allocations, sign=-1)
            self._apply(t.releases, sign=+1)
        except (KeyError, ValueError):
            self.mark_stale()

    def committed(self, t: Tentative, result: CommitPlanResult) -> None:
        """The commit succeeded: the reservation stands (or is dropped if the loaded
        snapshot already contained it)."""
        self._inflight.pop(t.plan_id, None)
        if not result.applied:
            # A retry answered from the ledger's cache: what it holds may differ from
            # this reservation. Rare; reload rather than guess.
            self.cancel(t)
            self.mark_stale()
            return
        if not self._saw(result.version):
            self.cancel(t)  # the snapshot loaded meanwhile holds it already
            return
        self.workloads.update(t.workloads)
        if result.taken_over:
            self.mark_stale()  # an older owner's reservations went, which the index holds

    def wrote(self, version: int, *, changed_nodes: bool) -> None:
        """This process made a ledger write other than a plan or a node record (a claim, a
        reap, a node removal) at ``version``. If it released reservations, which the index
        cannot replay, the index reloads before the next decision; otherwise the version
        is only accounted for, so no gap makes the index reload for nothing."""
        if changed_nodes:
            self.mark_stale()
        elif self.index is not None:
            self._saw(version)

    def plan_committed(self, plan: CommitPlanInput, result: CommitPlanResult) -> None:
        """Apply a plan committed without a reservation (releases from ``commit_plan``)."""
        if self.index is None or not result.applied or not self._saw(result.version):
            return
        if result.taken_over:
            self.mark_stale()
            return
        try:
            self._apply(plan.releases, sign=-1)
            self._apply(plan.allocations, sign=+1)
        except (KeyError, ValueError):
            self.mark_stale()

    def _apply(self, allocations: list[Allocation], sign: int) -> None:
        index = self.index
        assert index is not None
        for a in allocations:
            if a.node_id not in index:
                continue
            res = resources(a.resources)
            if sign > 0:
                index.allocate(a.node_id, res, workload_key=a.workload)
            else:
                index.release(a.node_id, res, workload_key=a.workload)
