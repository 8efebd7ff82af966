"""``cluster/<name>``: the allocation ledger, the one writer of placements.

Schedulers propose plans; this workflow commits them through Temporal Updates whose
validators reject any plan that would over-commit a node (optimistic concurrency, as
Nomad's plan applier does). Validation happens before anything enters history, so a
rejected plan costs no events and the proposer retries on a fresh snapshot.

State is compact: one aggregate per node, never a list of every replica, plus the recent
plan ids (for idempotent retries) and the enrollment token ids already used.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from cloudless.model import (
        Allocation,
        ClusterSnapshot,
        ClusterWorkflowInput,
        CommitPlanInput,
        CommitPlanResult,
        ConsumeTokenInput,
        LedgerNode,
        NodeState,
        Resources,
        UpsertNodeInput,
        WaitNodeInput,
    )

#: Plans remembered (with their allocations) so a retried commit returns the original
#: outcome; retries arrive within seconds, long before this many newer plans commit.
RECENT_PLANS = 256
#: Keep used token ids this long past their expiry (covers verifier clock leeway).
TOKEN_GRACE = timedelta(minutes=5)
#: Continue-as-new well before Temporal's hard history limits.
MAX_HISTORY_EVENTS = 10_000


class PlanRejected(ApplicationError):
    """Raised by the validator; the message names each node and dimension at fault."""


@workflow.defn(name="ClusterWorkflow")
class ClusterWorkflow:
    @workflow.init
    def __init__(self, inp: ClusterWorkflowInput) -> None:
        self._cluster = inp.cluster
        carried = inp.carried or {}
        self._version: int = int(carried.get("version", 0))
        self._nodes: dict[str, LedgerNode] = {
            n["node_id"]: LedgerNode.model_validate(n) for n in carried.get("nodes", [])
        }
        self._plans: OrderedDict[str, CommitPlanResult] = OrderedDict(
            (pid, CommitPlanResult.model_validate(r)) for pid, r in carried.get("plans", [])
        )
        self._tokens: dict[str, str] = dict(carried.get("tokens", {}))

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
            ClusterWorkflowInput(cluster=self._cluster, carried=self._export())
        )

    def _export(self) -> dict[str, object]:
        return {
            "version": self._version,
            "nodes": [n.model_dump(mode="json") for n in self._nodes.values()],
            "plans": [(pid, r.model_dump(mode="json")) for pid, r in self._plans.items()],
            "tokens": self._tokens,
        }

    # ------------------------------------------------------------------ queries

    @workflow.query
    def snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(
            cluster=self._cluster, version=self._version, nodes=list(self._nodes.values())
        )

    @workflow.update
    async def wait_node(self, inp: WaitNodeInput) -> LedgerNode | None:
        """The node once it reaches one of the states, or its current entry on timeout.

        Lets clients await enrollment instead of polling the snapshot.
        """

        def reached() -> bool:
            node = self._nodes.get(inp.node_id)
            return node is not None and (not inp.states or node.state in inp.states)

        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(reached, timeout=timedelta(seconds=inp.timeout_seconds))
        return self._nodes.get(inp.node_id)

    @workflow.query
    def node_workloads(self, node_id: str) -> list[str]:
        """Workloads with replicas allocated on the node: who to tell when it is lost."""
        node = self._nodes.get(node_id)
        return sorted(node.workloads) if node else []

    # ------------------------------------------------------------------ nodes

    @workflow.update
    def upsert_node(self, inp: UpsertNodeInput) -> int:
        """Record a node's facts and state; allocations already on it are kept."""
        rec = inp.record
        current = self._nodes.get(rec.node_id)
        node = LedgerNode(
            node_id=rec.node_id,
            zone=rec.zone,
            labels=dict(rec.labels),
            capacity=rec.capacity,
            address=rec.address,
            runtimes=list(rec.runtimes),
            state=inp.state,
            allocated=current.allocated if current else Resources(),
            replicas=current.replicas if current else 0,
            workloads=dict(current.workloads) if current else {},
        )
        self._nodes[rec.node_id] = node
        self._version += 1
        return self._version

    # ------------------------------------------------------------------ plans

    @workflow.update
    def commit_plan(self, plan: CommitPlanInput) -> CommitPlanResult:
        if plan.plan_id in self._plans:
            cached = self._plans[plan.plan_id]
            return CommitPlanResult(
                version=cached.version, applied=False, allocations=cached.allocations
            )
        for a in plan.releases:
            self._apply(a, sign=-1)
        for a in plan.allocations:
            self._apply(a, sign=+1)
        self._version += 1
        result = CommitPlanResult(version=self._version, applied=True, allocations=plan.allocations)
        self._plans[plan.plan_id] = result
        while len(self._plans) > RECENT_PLANS:
            self._plans.popitem(last=False)
        return result

    @commit_plan.validator
    def _validate_plan(self, plan: CommitPlanInput) -> None:
        if plan.plan_id in self._plans:
            return  # a retry of a committed plan: accepted, the handler answers from cache
        delta: dict[str, Resources] = {}
        for a in plan.releases:
            delta[a.node_id] = delta.get(a.node_id, Resources()) - a.resources
        problems: list[str] = []
        for a in plan.allocations:
            node = self._nodes.get(a.node_id)
            if node is None:
                problems.append(f"node {a.node_id!r} is not registered")
                continue
            if node.state != NodeState.READY:
                problems.append(f"node {a.node_id!r} is {node.state.value}, not Ready")
                continue
            delta[a.node_id] = delta.get(a.node_id, Resources()) + a.resources
        for node_id, d in delta.items():
            node = self._nodes.get(node_id)
            if node is None:
                continue
            after = node.allocated + d
            over = after.over(node.capacity)
            if over:
                problems.append(f"node {node_id!r} would be over-committed on {', '.join(over)}")
        if problems:
            raise PlanRejected(
                "plan rejected: " + "; ".join(problems), type="PlanRejected", non_retryable=True
            )

    def _apply(self, a: Allocation, sign: int) -> None:
        node = self._nodes.get(a.node_id)
        if node is None:
            return
        allocated = node.allocated + a.resources if sign > 0 else node.allocated - a.resources
        # A release never drives totals negative, even if a caller releases twice.
        node.allocated = Resources(
            cpu_millis=max(0, allocated.cpu_millis),
            memory_bytes=max(0, allocated.memory_bytes),
            storage_bytes=max(0, allocated.storage_bytes),
        )
        node.replicas = max(0, node.replicas + sign)
        count = node.workloads.get(a.workload, 0) + sign
        if count > 0:
            node.workloads[a.workload] = count
        else:
            node.workloads.pop(a.workload, None)

    # ------------------------------------------------------------------ enrollment tokens

    @workflow.update
    def consume_token(self, inp: ConsumeTokenInput) -> None:
        now = workflow.now()
        self._tokens = {
            jti: exp
            for jti, exp in self._tokens.items()
            if datetime.fromisoformat(exp) + TOKEN_GRACE > now
        }
        self._tokens[inp.jti] = inp.expires_at.isoformat()

    @consume_token.validator
    def _validate_token(self, inp: ConsumeTokenInput) -> None:
        if inp.node_id in self._nodes and not inp.bound_to_node:
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
