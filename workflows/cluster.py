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
        Resources,
        SchedulerSettings,
        UpsertNodeInput,
        UpsertNodeResult,
        WaitNodeInput,
        decode_ledger,
        encode_ledger,
    )

#: Plans remembered (with where their replicas went) so a retried commit returns the
#: original outcome; retries arrive within seconds, long before this many newer plans
#: commit. Bounded by allocations too, so big batches cannot bloat the carried state.
RECENT_PLANS = 256
RECENT_PLAN_ALLOCATIONS = 5_000
#: Keep used token ids this long past their expiry (covers verifier clock leeway).
TOKEN_GRACE = timedelta(minutes=5)
#: Continue-as-new well before Temporal's hard limits: every update adds ~5 events, and a
#: short history keeps a replay (after a worker restart or a timed-out task) cheap.
MAX_HISTORY_EVENTS = 2_000


class PlanRejected(ApplicationError):
    """Raised by the validator; the message names each node and dimension at fault."""


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
    capacity = dataclasses.replace(
        rec.capacity, gpu=advert.gpu, bandwidth_bps=advert.bandwidth_bps
    )
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

    def export(self) -> dict[str, Any]:
        """Compact carried state: nodes and workloads as columns, plans as replica -> node."""
        return {
            "version": self.version,
            "columns": encode_ledger(list(self.nodes.values()), self.workloads),
            "plans": [(pid, p.export()) for pid, p in self.plans.items()],
            "pending": {k: r.nonzero() for k, r in self.pending.items()},
            "scheduler": _dump(self.scheduler),
        }

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
        delta: dict[str, Resources] = {}
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
        for key, meta in plan.workloads.items():
            known = self.workloads.get(key)
            self.workloads[key] = meta.model_copy(
                update={"replicas": known.replicas if known else 0}
            )
        for a in plan.releases:
            self._apply(a, sign=-1)
        for a in plan.allocations:
            self._apply(a, sign=+1)
            self.pending.pop(a.workload, None)
        self.version += 1
        self.plans[plan.plan_id] = _CachedPlan(self.version, list(plan.allocations))
        self._plan_allocations += len(plan.allocations)
        while len(self.plans) > RECENT_PLANS or (
            self._plan_allocations > RECENT_PLAN_ALLOCATIONS and len(self.plans) > 1
        ):
            _, old = self.plans.popitem(last=False)
            self._plan_allocations -= len(old.allocations)
        woken = self._wake({a.node_id for a in plan.releases}) if plan.releases else []
        return CommitPlanResult(
            version=self.version, applied=True, allocations=plan.allocations, woken=woken
        )

    def _apply(self, a: Allocation, sign: int) -> None:
        node = self.nodes.get(a.node_id)
        if node is None:
            return
        allocated = node.allocated + a.resources if sign > 0 else node.allocated - a.resources
        # A release never drives totals negative, even if a caller releases twice.
        node.allocated = allocated.clamped()
        have = node.workloads.get(a.workload, 0)
        if sign < 0 and have == 0:
            return  # released twice: the counts already went
        node.replicas = max(0, node.replicas + sign)
        if have + sign > 0:
            node.workloads[a.workload] = have + sign
        else:
            node.workloads.pop(a.workload, None)
        meta = self.workloads.get(a.workload)
        if meta is None:
            if sign < 0:
                return
            meta = self.workloads[a.workload] = LedgerWorkload(resources=a.resources)
        meta.replicas = max(0, meta.replicas + sign)
        if meta.replicas == 0:
            del self.workloads[a.workload]

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
        return {
            **self._ledger.export(),
            "tokens": self._tokens,
            "token_nodes": self._token_nodes,
        }

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

    @workflow.query(name=ledger.SCHEDULER_SETTINGS.name)
    def scheduler_settings(self) -> SchedulerSettings:
        return self._ledger.scheduler

    @workflow.update(name=ledger.SET_SCHEDULER_SETTINGS.name)
    def set_scheduler_settings(self, settings: SchedulerSettings) -> int:
        """Replace the scheduler settings (validated by their model before they get here)."""
        return self._ledger.set_scheduler(settings)

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
