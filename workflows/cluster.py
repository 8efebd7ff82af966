"""``cluster/<name>``: the allocation ledger, the one writer of placements.

Schedulers propose plans; this workflow commits them through Temporal Updates whose
validators reject any plan that would over-commit a node (optimistic concurrency, as
Nomad's plan applier does). Validation happens before anything enters history, so a
rejected plan costs no events and the proposer retries on a fresh snapshot.

State is compact: one aggregate per node and one entry per placed workload, never a list of
every replica, plus the recent plans (for idempotent retries), the pending workloads waiting
for room and the enrollment token ids already used. The bookkeeping is the plain class
:class:`Ledger`, so it can be tested (and property-tested) without a Temporal server; the
workflow only wires it to Updates and queries.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from cloudless import nodefacts
    from cloudless.contracts import ledger
    from cloudless.model import (
        RESOURCE_FIELDS,
        RESOURCE_NAMES,
        Allocation,
        AwaitCapacityInput,
        ClaimWorkloadInput,
        ClaimWorkloadResult,
        ClusterWorkflowInput,
        CommitPlanInput,
        CommitPlanResult,
        CompactSnapshot,
        ConsumeTokenInput,
        LedgerBatch,
        LedgerBatchResult,
        LedgerNode,
        LedgerOp,
        LedgerOpResult,
        LedgerWorkload,
        NodeState,
        NodeTaint,
        ReapWorkloadInput,
        ReapWorkloadResult,
        RegisterUserInput,
        RemoveNodeInput,
        RemoveNodeResult,
        Resources,
        RevokedCertificate,
        RevokeUserInput,
        RevokeUserResult,
        SchedulerSettings,
        UpsertNodeInput,
        UpsertNodeResult,
        UserRecord,
        WaitNodeInput,
        decode_ledger,
        encode_ledger,
    )
    from cloudless.pki import is_dns_label
    from cloudless.vocabulary import AccessRole

#: Plans remembered (with where their replicas went) so a retried commit returns the
#: original outcome; retries arrive within seconds, long before this many newer plans
#: commit. Bounded by allocations too, so big batches cannot bloat the carried state.
RECENT_PLANS = 256
RECENT_PLAN_ALLOCATIONS = 5_000
#: Users the ledger keeps (each a few hundred bytes of carried state).
MAX_USERS = 1000
#: Keep used token ids this long past their expiry (covers verifier clock leeway).
TOKEN_GRACE = timedelta(minutes=5)
#: How long a revoked certificate whose expiry is unknown stays on the revocation list
#: (node certificates are valid for 30 days).
REVOKED_DEFAULT_KEEP = timedelta(days=31)
#: Continue-as-new well before Temporal's hard limits: every update adds ~5 events, and a
#: short history keeps a replay (after a worker restart or a timed-out task) cheap.
MAX_HISTORY_EVENTS = 2_000


class PlanRejected(ApplicationError):
    """Raised by the validator; the message names each node and dimension at fault."""


class StaleOwner(ApplicationError):
    """Raised by the validator for a plan allocating for a workload on behalf of a run that
    is over (a newer run of the workload has claimed it)."""


def _least(a: Resources, b: Resources) -> Resources:
    return Resources.of([min(x, y) for x, y in zip(a.as_tuple(), b.as_tuple(), strict=True)])


def _dump(model: Any) -> dict[str, Any]:
    out: dict[str, Any] = model.model_dump(mode="json", exclude_defaults=True)
    return out


class _CachedPlan:
    """A committed plan as remembered for retries: its version and allocations, carried
    grouped by (workload, resources) so each allocation costs only its replica and node."""

    __slots__ = ("allocations", "version")

    def __init__(self, version: int, allocations: list[Allocation]) -> None:
        self.version = version
        self.allocations = allocations

    def export(self) -> dict[str, Any]:
        groups: dict[str, dict[str, Any]] = {}
        for a in self.allocations:
            res = a.resources.nonzero()
            key = f"{a.workload}|{sorted(res.items())}"
            group = groups.setdefault(key, {"w": a.workload, "r": res, "a": []})
            group["a"].append([a.replica_id, a.node_id])
        return {"v": self.version, "g": list(groups.values())}

    @classmethod
    def load(cls, data: dict[str, Any]) -> _CachedPlan:
        allocations = [
            Allocation(
                replica_id=rid,
                node_id=nid,
                workload=g["w"],
                resources=Resources(**g["r"]),
            )
            for g in data["g"]
            for rid, nid in g["a"]
        ]
        return cls(int(data["v"]), allocations)


def ledger_node(inp: UpsertNodeInput, current: LedgerNode | None) -> LedgerNode:
    """The ledger's entry for a node record: advertised facts parsed from its labels,
    allocations already on it kept."""
    rec = inp.record
    advert = nodefacts.parse(rec.labels)
    capacity = dataclasses.replace(rec.capacity, gpu=advert.gpu, bandwidth_bps=advert.bandwidth_bps)
    return LedgerNode(
        node_id=rec.node_id,
        zone=rec.zone,
        labels=dict(rec.labels),
        capacity=capacity,
        address=rec.address,
        runtimes=list(rec.runtimes),
        state=inp.state,
        allocated=current.allocated if current else Resources(),
        replicas=current.replicas if current else 0,
        workloads=dict(current.workloads) if current else {},
        region=advert.region,
        runtime_classes=list(advert.runtime_classes),
        taints=[NodeTaint(key=t.key, value=t.value, effect=t.effect) for t in advert.taints],
        cost_per_core_hour=advert.cost_per_core_hour,
        latency_ms=advert.latency_ms,
        uptime_ratio=min(1.0, max(0.0, inp.uptime_ratio)),
        churn=max(0, inp.churn),
    )


class Ledger:
    """Per-node allocation aggregates and the rules for changing them. No Temporal calls.

    Invariant (what the validator protects): for every node, ``allocated`` equals the sum
    of the committed allocations minus releases, and a plan that would take any dimension
    of a node beyond its capacity, or allocate on a node that is not Ready, is refused
    whole. Releases are always accepted (they only free room).
    """

    def __init__(self, carried: dict[str, Any] | None = None) -> None:
        carried = carried or {}
        self.version: int = int(carried.get("version", 0))
        self.nodes: dict[str, LedgerNode] = {}
        self.workloads: dict[str, LedgerWorkload] = {}
        if "columns" in carried:
            nodes, self.workloads = decode_ledger(carried["columns"])
            self.nodes = {n.node_id: n for n in nodes}
        else:  # state carried by an earlier version of this workflow
            self.nodes = {
                n["node_id"]: LedgerNode.model_validate(n) for n in carried.get("nodes", [])
            }
        self.plans: OrderedDict[str, _CachedPlan] = OrderedDict(
            (pid, _CachedPlan.load(p)) for pid, p in carried.get("plans", [])
        )
        self._plan_allocations = sum(len(p.allocations) for p in self.plans.values())
        self.pending: dict[str, Resources] = {
            k: Resources(**r) for k, r in carried.get("pending", {}).items()
        }
        self.scheduler = SchedulerSettings.model_validate(carried.get("scheduler") or {})
        #: workload -> node -> what its replicas there reserve, exactly: what releasing a
        #: whole workload (a reap, a claim, a takeover) or a whole node gives back. Carried
        #: as the pairs that differ from count x the workload's per-replica resources.
        self.held: dict[str, dict[str, Resources]] = self._load_held(carried)
        #: Serial -> revoked certificate of a removed node, kept until it expires.
        self.revoked: dict[str, RevokedCertificate] = {
            r["serial"]: RevokedCertificate.model_validate(r) for r in carried.get("revoked", [])
        }

    def _load_held(self, carried: dict[str, Any]) -> dict[str, dict[str, Resources]]:
        exact = {(k, n): Resources(**r) for k, n, r in carried.get("held", [])}
        per_replica = {k: meta.resources.as_tuple() for k, meta in self.workloads.items()}
        none = (0, 0, 0, 0, 0)
        held: dict[str, dict[str, Resources]] = {}
        for node in self.nodes.values():
            nid = node.node_id
            for key, count in node.workloads.items():
                amount = exact.get((key, nid))
                if amount is None:
                    c, m, s, g, b = per_replica.get(key, none)
                    amount = Resources(c * count, m * count, s * count, g * count, b * count)
                held.setdefault(key, {})[nid] = amount
        if "held" not in carried:
            # Carried by a ledger that kept no per-workload amounts: each node's total is
            # what its workloads' counts reserve, so that the two always agree.
            for node in self.nodes.values():
                total = Resources()
                for key in node.workloads:
                    total = total + held[key][node.node_id]
                node.allocated = total
        return held

    def export(self) -> dict[str, Any]:
        """Compact carried state: nodes and workloads as columns, plans as replica -> node,
        per-workload amounts only where they differ from count x per-replica resources."""
        return {
            "version": self.version,
            "columns": encode_ledger(list(self.nodes.values()), self.workloads),
            "plans": [(pid, p.export()) for pid, p in self.plans.items()],
            "pending": {k: r.nonzero() for k, r in self.pending.items()},
            "scheduler": _dump(self.scheduler),
            "held": self._held_exceptions(),
            "revoked": [r.model_dump(mode="json") for r in self.revoked.values()],
        }

    def _held_exceptions(self) -> list[list[Any]]:
        out: list[list[Any]] = []
        none = (0, 0, 0, 0, 0)
        for key, per_node in self.held.items():
            meta = self.workloads.get(key)
            c, m, s, g, b = meta.resources.as_tuple() if meta is not None else none
            for node_id, amount in per_node.items():
                node = self.nodes.get(node_id)
                n = node.workloads.get(key, 0) if node is not None else 0
                if amount.as_tuple() != (c * n, m * n, s * n, g * n, b * n):
                    out.append([key, node_id, amount.nonzero()])
        return out

    def snapshot(self, cluster: str) -> CompactSnapshot:
        """The columnar snapshot (``.expand()`` or validate as ClusterSnapshot to read it)."""
        return CompactSnapshot(
            cluster=cluster,
            version=self.version,
            columns=encode_ledger(list(self.nodes.values()), self.workloads),
            scheduler=self.scheduler,
        )

    def set_scheduler(self, settings: SchedulerSettings) -> int:
        """Replace the cluster's scheduler settings; a new version, so every coordinator's
        index (which carries them) is reloaded."""
        self.scheduler = settings
        self.version += 1
        return self.version

    # ------------------------------------------------------------------ nodes

    def upsert_node(self, inp: UpsertNodeInput) -> UpsertNodeResult:
        node = ledger_node(inp, self.nodes.get(inp.record.node_id))
        self.nodes[node.node_id] = node
        self.version += 1
        return UpsertNodeResult(version=self.version, node=node, woken=self._wake({node.node_id}))

    # ------------------------------------------------------------------ plans

    def validate(self, plan: CommitPlanInput) -> None:
        """Raise :class:`PlanRejected` unless the plan keeps every node within capacity."""
        if plan.plan_id in self.plans:
            return  # a retry of a committed plan: accepted, the handler answers from cache
        owners = self._owner_check(plan)
        stale = sorted({a.workload for a in plan.allocations} & set(owners["stale"]))
        if stale:
            raise StaleOwner(
                f"plan refused: {', '.join(stale)} now belongs to a newer run of the "
                "workload; this run is over",
                type="StaleOwner",
                non_retryable=True,
            )
        delta: dict[str, Resources] = {}
        for key in owners["takeover"]:
            for node_id, amount in self.held.get(key, {}).items():
                delta[node_id] = delta.get(node_id, Resources()) - amount
        for a in plan.releases:
            delta[a.node_id] = delta.get(a.node_id, Resources()) - a.resources
        problems: list[str] = []
        for a in plan.allocations:
            node = self.nodes.get(a.node_id)
            if node is None:
                problems.append(f"node {a.node_id!r} is not registered")
                continue
            if node.state != NodeState.READY:
                problems.append(f"node {a.node_id!r} is {node.state.value}, not Ready")
                continue
            delta[a.node_id] = delta.get(a.node_id, Resources()) + a.resources
        for node_id, d in delta.items():
            node = self.nodes.get(node_id)
            if node is None:
                continue
            after = node.allocated + d
            # Only dimensions the plan adds to: a node already over capacity (its agent
            # reported less) must still accept releases.
            over = [
                name
                for f, name in zip(RESOURCE_FIELDS, RESOURCE_NAMES, strict=True)
                if getattr(d, f) > 0 and getattr(after, f) > getattr(node.capacity, f)
            ]
            if over:
                problems.append(f"node {node_id!r} would be over-committed on {', '.join(over)}")
        if problems:
            raise PlanRejected(
                "plan rejected: " + "; ".join(problems), type="PlanRejected", non_retryable=True
            )

    def commit(self, plan: CommitPlanInput) -> CommitPlanResult:
        cached = self.plans.get(plan.plan_id)
        if cached is not None:
            return CommitPlanResult(
                version=cached.version, applied=False, allocations=cached.allocations
            )
        owners = self._owner_check(plan)
        freed_nodes: set[str] = set()
        for key in owners["takeover"]:
            freed_nodes |= set(self._release_workload(key))
        stale = set(owners["stale"])
        for key, meta in plan.workloads.items():
            if key in stale:
                continue
            known = self.workloads.get(key)
            self.workloads[key] = meta.model_copy(
                update={
                    "replicas": known.replicas if known else 0,
                    "owner": known.owner if known else 0,
                }
            )
        for a in plan.releases:
            if a.workload not in stale:  # what a stale run held went at the takeover
                self._apply(a, sign=-1)
                freed_nodes.add(a.node_id)
        for a in plan.allocations:
            self._apply(a, sign=+1)
            self.pending.pop(a.workload, None)
        for key, owner in plan.owners.items():
            entry = self.workloads.get(key)
            if entry is not None and owner > entry.owner:
                entry.owner = owner
        self.version += 1
        self.plans[plan.plan_id] = _CachedPlan(self.version, list(plan.allocations))
        self._plan_allocations += len(plan.allocations)
        while len(self.plans) > RECENT_PLANS or (
            self._plan_allocations > RECENT_PLAN_ALLOCATIONS and len(self.plans) > 1
        ):
            _, old = self.plans.popitem(last=False)
            self._plan_allocations -= len(old.allocations)
        woken = self._wake(freed_nodes) if freed_nodes else []
        return CommitPlanResult(
            version=self.version,
            applied=True,
            allocations=plan.allocations,
            woken=woken,
            taken_over=owners["takeover"],
        )

    def _owner_check(self, plan: CommitPlanInput) -> dict[str, list[str]]:
        """The plan's workloads whose owner is older than the ledger's (``stale``: their
        run is over) and those whose owner is newer (``takeover``: what the older owner
        still holds is released first). Owner 0 on either side is never compared."""
        out: dict[str, list[str]] = {"stale": [], "takeover": []}
        for key, owner in plan.owners.items():
            meta = self.workloads.get(key)
            if owner <= 0 or meta is None:
                continue
            if owner < meta.owner:
                out["stale"].append(key)
            elif owner > meta.owner:
                out["takeover"].append(key)
        return out

    def _apply(self, a: Allocation, sign: int) -> None:
        """Add or take away one replica's reservation. A release takes away at most what
        the workload holds on the node (all of it with its last replica there), so the
        node's total always equals the sum of its workloads' amounts, and a double release
        changes nothing."""
        node = self.nodes.get(a.node_id)
        if node is None:
            return
        key, have = a.workload, node.workloads.get(a.workload, 0)
        if sign > 0:
            per_node = self.held.setdefault(key, {})
            per_node[node.node_id] = per_node.get(node.node_id, Resources()) + a.resources
            node.allocated = node.allocated + a.resources
            node.replicas += 1
            node.workloads[key] = have + 1
            meta = self.workloads.get(key)
            if meta is None:
                meta = self.workloads[key] = LedgerWorkload(resources=a.resources)
            meta.replicas += 1
            return
        if have == 0:
            return  # released twice (or never held here): nothing to give back
        per_node = self.held[key]
        held = per_node[node.node_id]
        freed = held if have == 1 else _least(a.resources, held)
        node.allocated = (node.allocated - freed).clamped()
        node.replicas = max(0, node.replicas - 1)
        if have == 1:
            del node.workloads[key]
            del per_node[node.node_id]
            if not per_node:
                del self.held[key]
        else:
            node.workloads[key] = have - 1
            per_node[node.node_id] = held - freed
        meta = self.workloads.get(key)
        if meta is not None:
            meta.replicas = max(0, meta.replicas - 1)
            if meta.replicas == 0:
                del self.workloads[key]

    def _release_workload(self, key: str) -> dict[str, int]:
        """Release everything held for a workload and forget it; node -> replicas freed."""
        released: dict[str, int] = {}
        for node_id, amount in self.held.pop(key, {}).items():
            node = self.nodes.get(node_id)
            if node is None:
                continue
            count = node.workloads.pop(key, 0)
            node.allocated = (node.allocated - amount).clamped()
            node.replicas = max(0, node.replicas - count)
            released[node_id] = count
        self.workloads.pop(key, None)
        self.pending.pop(key, None)
        return released

    # ------------------------------------------------------------------ owners and reaping

    def claim(self, inp: ClaimWorkloadInput) -> ClaimWorkloadResult:
        """A workload workflow's first run claims the workload; returns its owner token.

        Whatever the ledger still holds for the workload belongs to runs that are over,
        so it is released now (and pending workloads are woken by the room)."""
        freed = self._release_workload(inp.workload)
        self.version += 1
        return ClaimWorkloadResult(
            owner=self.version, released=freed, woken=self._wake(set(freed)) if freed else []
        )

    def reap(self, inp: ReapWorkloadInput) -> ReapWorkloadResult:
        """Release a workload's reservations if ``inp.owner`` still holds them."""
        meta = self.workloads.get(inp.workload)
        if meta is None or meta.owner != inp.owner:
            return ReapWorkloadResult(workload=inp.workload, reaped=False)
        held = dict(self.held.get(inp.workload, {}))
        freed = Resources()
        for amount in held.values():
            freed = freed + amount
        released = self._release_workload(inp.workload)
        self.version += 1
        return ReapWorkloadResult(
            workload=inp.workload,
            reaped=True,
            replicas=released,
            freed=freed,
            woken=self._wake(set(released)) if released else [],
        )

    def remove_node(self, inp: RemoveNodeInput, now: datetime) -> RemoveNodeResult:
        """Forget a node for good: its reservations go, its certificates are revoked."""
        self.revoked = {s: r for s, r in self.revoked.items() if r.not_after > now}
        revoked = False
        # The record's certificate and the node's other unexpired ones (renewals').
        certificates = {
            **inp.more_certificates,
            inp.certificate_serial: inp.certificate_not_after,
        }
        for serial, not_after in certificates.items():
            if serial and (not_after is None or not_after > now):
                self.revoked[serial] = RevokedCertificate(
                    serial=serial,
                    node_id=inp.node_id,
                    not_after=not_after or now + REVOKED_DEFAULT_KEEP,
                    revoked_at=now,
                )
                revoked = True
        node = self.nodes.pop(inp.node_id, None)
        released: dict[str, int] = {}
        if node is not None:
            for key, count in node.workloads.items():
                released[key] = count
                per_node = self.held.get(key, {})
                per_node.pop(inp.node_id, None)
                if not per_node:
                    self.held.pop(key, None)
                meta = self.workloads.get(key)
                if meta is not None:
                    meta.replicas = max(0, meta.replicas - count)
                    if meta.replicas == 0:
                        del self.workloads[key]
        self.version += 1
        return RemoveNodeResult(removed=node is not None, released=released, revoked=revoked)

    # ------------------------------------------------------------------ pending workloads

    def await_capacity(self, inp: AwaitCapacityInput) -> bool:
        """Register a pending workload unless the ledger moved since its decision."""
        if inp.version != self.version:
            return False
        self.pending[inp.workload] = inp.resources
        return True

    def _wake(self, node_ids: set[str]) -> list[str]:
        """Pending workloads one replica of which now fits on one of these Ready nodes."""
        if not self.pending:
            return []
        free = [
            n.capacity - n.allocated
            for nid in node_ids
            if (n := self.nodes.get(nid)) is not None and n.state == NodeState.READY
        ]
        woken = [k for k, need in self.pending.items() if any(need.fits_within(f) for f in free)]
        for key in woken:
            del self.pending[key]
        return woken


# Not sandboxed: the ledger is the hottest workflow (every node event and plan of the
# cluster), its bookkeeping is the plain, deterministic `Ledger` class (no clock but
# workflow.now(), no randomness, no I/O), and the sandbox's per-activation overhead made its
# tasks, replays and continue-as-new exports many times slower under load.
@workflow.defn(name=ledger.WORKFLOW.name, sandboxed=False)
class ClusterWorkflow:
    @workflow.init
    def __init__(self, inp: ClusterWorkflowInput) -> None:
        self._cluster = inp.cluster
        carried = inp.carried or {}
        self._ledger = Ledger(carried)
        self._tokens: dict[str, str] = dict(carried.get("tokens", {}))
        #: Which node consumed each token, so a retried batch op is a no-op (a single-op
        #: Update gets that from its Update id).
        self._token_nodes: dict[str, str] = dict(carried.get("token_nodes", {}))
        #: People with certificates, by name (``cloudlessctl user``); bounded by MAX_USERS.
        self._users: dict[str, UserRecord] = {
            u["name"]: UserRecord.model_validate(u) for u in carried.get("users", [])
        }

    @workflow.run
    async def run(self, inp: ClusterWorkflowInput) -> None:
        await workflow.wait_condition(
            lambda: (
                workflow.info().is_continue_as_new_suggested()
                or workflow.info().get_current_history_length() > MAX_HISTORY_EVENTS
            )
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            ClusterWorkflowInput(cluster=self._cluster, carried=self._export()),
            task_queue=ledger.WORKFLOW.task_queue(self._cluster),
        )

    def _export(self) -> dict[str, object]:
        carried: dict[str, object] = {
            **self._ledger.export(),
            "tokens": self._tokens,
            "token_nodes": self._token_nodes,
        }
        if self._users:  # absent when empty: exports of earlier releases stay as they were
            carried["users"] = [u.model_dump(mode="json") for u in self._users.values()]
        return carried

    # ------------------------------------------------------------------ queries

    @workflow.query(name=ledger.SNAPSHOT.name)
    def snapshot(self) -> CompactSnapshot:
        """Columnar on the wire; clients asking for a ClusterSnapshot get it expanded."""
        return self._ledger.snapshot(self._cluster)

    @workflow.query(name=ledger.TOTALS.name)
    def totals(self) -> tuple[int, int, int]:
        """(version, Ready nodes, replicas allocated): cheap to poll, unlike the snapshot,
        which at 5,000 nodes is a megabyte to encode."""
        nodes = self._ledger.nodes.values()
        ready = sum(1 for n in nodes if n.state == NodeState.READY)
        return self._ledger.version, ready, sum(n.replicas for n in nodes)

    @workflow.query(name=ledger.VERSION.name)
    def version(self) -> int:
        """The ledger version alone: lets a scheduler check whether its index is current."""
        return self._ledger.version

    @workflow.update(name=ledger.WAIT_NODE.name)
    async def wait_node(self, inp: WaitNodeInput) -> LedgerNode | None:
        """The node once it reaches one of the states, or its current entry on timeout.

        Lets clients await enrollment instead of polling the snapshot.
        """
        nodes = self._ledger.nodes

        def reached() -> bool:
            node = nodes.get(inp.node_id)
            return node is not None and (not inp.states or node.state in inp.states)

        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(reached, timeout=timedelta(seconds=inp.timeout_seconds))
        return nodes.get(inp.node_id)

    @workflow.query(name=ledger.NODE_WORKLOADS.name)
    def node_workloads(self, node_id: str) -> list[str]:
        """Workloads with replicas allocated on the node: who to tell when it is lost."""
        node = self._ledger.nodes.get(node_id)
        return sorted(node.workloads) if node else []

    @workflow.query(name=ledger.WORKLOAD_OWNERS.name)
    def workload_owners(self) -> dict[str, int]:
        """Every workload the ledger holds reservations for, with their owner token."""
        return {key: meta.owner for key, meta in self._ledger.workloads.items()}

    @workflow.query(name=ledger.REVOKED_CERTIFICATES.name)
    def revoked_certificates(self) -> list[RevokedCertificate]:
        """Certificates of removed nodes that have not expired yet: what gateways refuse."""
        now = workflow.now()
        return [r for r in self._ledger.revoked.values() if r.not_after > now]

    @workflow.query(name=ledger.SCHEDULER_SETTINGS.name)
    def scheduler_settings(self) -> SchedulerSettings:
        return self._ledger.scheduler

    @workflow.update(name=ledger.SET_SCHEDULER_SETTINGS.name)
    def set_scheduler_settings(self, settings: SchedulerSettings) -> int:
        """Replace the scheduler settings (validated by their model before they get here)."""
        return self._ledger.set_scheduler(settings)

    # ------------------------------------------------------------------ users

    @workflow.update(name=ledger.REGISTER_USER.name)
    def register_user(self, inp: RegisterUserInput) -> UserRecord:
        """Record a user's certificate: a new user, a revoked user's name given again,
        or one more certificate of an active user with the same role (a renewal)."""
        now = workflow.now()
        current = self._users.get(inp.name)
        if current is None or current.revoked_at is not None:
            current = self._users[inp.name] = UserRecord(
                name=inp.name, role=inp.role, created_at=now
            )
        current.certificates = {s: t for s, t in current.certificates.items() if t > now}
        current.certificates[inp.serial] = inp.not_after
        return current

    @register_user.validator
    def _validate_user(self, inp: RegisterUserInput) -> None:
        if not is_dns_label(inp.name):
            raise ApplicationError(
                f"user name {inp.name!r} is not a DNS-1123 label (lowercase letters, digits "
                "and '-', at most 63 characters)",
                type="InvalidArgument",
                non_retryable=True,
            )
        if inp.role not in set(AccessRole):
            raise ApplicationError(
                f"role {inp.role!r} is not one of viewer, operator, admin",
                type="InvalidArgument",
                non_retryable=True,
            )
        current = self._users.get(inp.name)
        if current is not None and current.revoked_at is None and current.role != inp.role:
            raise ApplicationError(
                f"user {inp.name} exists with role {current.role}; revoke it first "
                f"(`cloudlessctl user revoke {inp.name}`) to give the name another role",
                type="AlreadyExists",
                non_retryable=True,
            )
        if current is None and len(self._users) >= MAX_USERS:
            raise ApplicationError(
                f"the cluster has {len(self._users)} users, the most it keeps; revoke "
                "unused ones first",
                type="ResourceExhausted",
                non_retryable=True,
            )

    @workflow.update(name=ledger.REVOKE_USER.name)
    def revoke_user(self, inp: RevokeUserInput) -> RevokeUserResult:
        """Put every unexpired certificate of the user on the revocation list, which
        every gateway and front refuses within one refresh (seconds)."""
        user = self._users.get(inp.name)
        if user is None:
            return RevokeUserResult(found=False)
        now = workflow.now()
        user.revoked_at = user.revoked_at or now
        live = {s: t for s, t in user.certificates.items() if t > now}
        for serial, not_after in live.items():
            self._ledger.revoked[serial] = RevokedCertificate(
                serial=serial, not_after=not_after, revoked_at=now, user=inp.name
            )
        user.certificates = {}
        return RevokeUserResult(found=True, certificates=len(live))

    @workflow.query(name=ledger.USERS.name)
    def users(self) -> list[UserRecord]:
        return sorted(self._users.values(), key=lambda u: u.name)

    # ------------------------------------------------------------------ nodes

    @workflow.update(name=ledger.UPSERT_NODE.name)
    def upsert_node(self, inp: UpsertNodeInput) -> UpsertNodeResult:
        """Record a node's facts and state; allocations already on it are kept."""
        return self._ledger.upsert_node(inp)

    # ------------------------------------------------------------------ plans

    @workflow.update(name=ledger.COMMIT_PLAN.name)
    def commit_plan(self, plan: CommitPlanInput) -> CommitPlanResult:
        return self._ledger.commit(plan)

    @commit_plan.validator
    def _validate_plan(self, plan: CommitPlanInput) -> None:
        self._ledger.validate(plan)

    @workflow.update(name=ledger.APPLY_BATCH.name)
    def apply_batch(self, batch: LedgerBatch) -> LedgerBatchResult:
        """Apply a coordinator's queued writes in order, each with its own outcome.

        A plan the commit validator would reject is refused here alone (its result says
        why); the others still apply. Retried batches are safe: plans are deduplicated by
        plan id, node upserts are idempotent, a stale pending registration is refused.
        (Enrollment tokens keep their own Update, whose id makes a retry a no-op.)
        """
        if any(op.consume_token is not None for op in batch.ops):
            self._prune_tokens()
        return LedgerBatchResult(
            results=[self._apply_op(op) for op in batch.ops], version=self._ledger.version
        )

    def _apply_op(self, op: LedgerOp) -> LedgerOpResult:
        try:
            if op.upsert is not None:
                return LedgerOpResult(upsert=self._ledger.upsert_node(op.upsert))
            if op.commit is not None:
                self._ledger.validate(op.commit)
                result = self._ledger.commit(op.commit)
                if result.applied:  # exactly the plan's: the writer has them, don't echo
                    result = result.model_copy(update={"allocations": []})
                return LedgerOpResult(commit=result)
            if op.await_capacity is not None:
                return LedgerOpResult(registered=self._ledger.await_capacity(op.await_capacity))
            if op.consume_token is not None:
                inp = op.consume_token
                if self._token_nodes.get(inp.jti) != inp.node_id:  # else: a retry, done
                    self._check_token(inp)
                    self._record_token(inp, prune=False)
                return LedgerOpResult(consumed=True)
            if op.claim is not None:
                return LedgerOpResult(claimed=self._ledger.claim(op.claim))
            if op.reap is not None:
                return LedgerOpResult(reaped=self._ledger.reap(op.reap))
            if op.remove_node is not None:
                removed = self._ledger.remove_node(op.remove_node, workflow.now())
                return LedgerOpResult(removed=removed)
        except ApplicationError as err:
            return LedgerOpResult(error_type=err.type or "ApplicationError", error=err.message)
        return LedgerOpResult(error_type="InvalidOp", error="empty ledger op")

    # ------------------------------------------------------------------ enrollment tokens

    @workflow.update(name=ledger.CONSUME_TOKEN.name)
    def consume_token(self, inp: ConsumeTokenInput) -> None:
        self._record_token(inp)

    def _prune_tokens(self) -> None:
        now = workflow.now()
        self._tokens = {
            jti: exp
            for jti, exp in self._tokens.items()
            if datetime.fromisoformat(exp) + TOKEN_GRACE > now
        }
        self._token_nodes = {j: n for j, n in self._token_nodes.items() if j in self._tokens}

    def _record_token(self, inp: ConsumeTokenInput, prune: bool = True) -> None:
        if prune:  # once per batch in apply_batch: it walks every token
            self._prune_tokens()
        self._tokens[inp.jti] = inp.expires_at.isoformat()
        self._token_nodes[inp.jti] = inp.node_id

    @consume_token.validator
    def _validate_token(self, inp: ConsumeTokenInput) -> None:
        self._check_token(inp)

    def _check_token(self, inp: ConsumeTokenInput) -> None:
        if inp.node_id in self._ledger.nodes and not inp.bound_to_node:
            # Otherwise any unbound token could take over an enrolled node's name.
            raise ApplicationError(
                f"node {inp.node_id!r} is already enrolled; re-enrolling it needs a token bound "
                f"to it: `cloudlessctl token create --node {inp.node_id}`",
                type="NodeAlreadyEnrolled",
                non_retryable=True,
            )
        if inp.jti in self._tokens:
            raise ApplicationError(
                f"enrollment token {inp.jti[:8]}… was already used; tokens are single-use, "
                "mint a new one with `cloudlessctl token create`",
                type="TokenReused",
                non_retryable=True,
            )
