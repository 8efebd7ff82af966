"""Activities that read and write the ``cluster/<name>`` ledger and node entities.

Workflows cannot query or update other workflows, so these activities do it with the
Temporal client on their behalf. Placement runs here too: it needs the ledger snapshot,
which is too large to pass through workflow history at scale.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError

from cloudless.model import (
    Allocation,
    ClusterSnapshot,
    CommitPlanInput,
    CommitPlanResult,
    ConsumeTokenInput,
    EnrollSignal,
    LedgerNode,
    NodeRecord,
    NodeWorkflowInput,
    Placement,
    PlacementRequest,
    PlacementResult,
    UpsertNodeInput,
)
from cloudless.naming import cluster_workflow_id, node_workflow_id, task_queue
from policies import placement

#: How many fresh snapshots a placement tries before giving up on contention.
MAX_PLAN_ATTEMPTS = 8


def node_view(node: LedgerNode) -> placement.NodeView:
    return placement.NodeView(
        node_id=node.node_id,
        zone=node.zone,
        labels=node.labels,
        cpu_capacity=node.capacity.cpu_millis,
        memory_capacity=node.capacity.memory_bytes,
        storage_capacity=node.capacity.storage_bytes,
        cpu_allocated=node.allocated.cpu_millis,
        memory_allocated=node.allocated.memory_bytes,
        storage_allocated=node.allocated.storage_bytes,
        state=node.state.value,
        runtimes=frozenset(node.runtimes),
    )


def _cause_type(err: WorkflowUpdateFailedError) -> str | None:
    cause = err.cause
    return cause.type if isinstance(cause, ApplicationError) else None


class LedgerActivities:
    """Bound to one Temporal client and cluster by the coordinator worker."""

    def __init__(self, client: Client, cluster: str) -> None:
        self._client = client
        self._cluster = cluster

    async def snapshot(self, cluster: str) -> ClusterSnapshot:
        from workflows.cluster import ClusterWorkflow

        handle = self._client.get_workflow_handle_for(
            ClusterWorkflow.run, cluster_workflow_id(cluster)
        )
        return await handle.query(ClusterWorkflow.snapshot)

    async def commit(
        self, cluster: str, plan: CommitPlanInput, attempt: int = 0
    ) -> CommitPlanResult:
        from workflows.cluster import ClusterWorkflow

        handle = self._client.get_workflow_handle_for(
            ClusterWorkflow.run, cluster_workflow_id(cluster)
        )
        # The ledger deduplicates by plan_id; the update id only has to be unique per try.
        return await handle.execute_update(
            ClusterWorkflow.commit_plan, plan, id=f"{plan.plan_id}/{attempt}"
        )

    @activity.defn(name="place_replicas")
    async def place_replicas(self, req: PlacementRequest) -> PlacementResult:
        """Decide on a snapshot, commit through the ledger, retry on a conflicting plan."""
        want = placement.PlacementRequest(
            count=len(req.replica_ids),
            demand=placement.Demand(
                cpu_millis=req.resources.cpu_millis,
                memory_bytes=req.resources.memory_bytes,
                storage_bytes=req.resources.storage_bytes,
            ),
            runtime=req.runtime,
            node_selector=req.node_selector,
            zones=frozenset(req.zones),
            strategy="spread" if req.strategy == "spread" else "binpack",
        )
        last_error = ""
        for attempt in range(MAX_PLAN_ATTEMPTS):
            snap = await self.snapshot(req.cluster)
            decision = placement.place(want, [node_view(n) for n in snap.nodes])
            allocations = [
                Allocation(
                    replica_id=rid, workload=req.workload, node_id=nid, resources=req.resources
                )
                for rid, nid in zip(req.replica_ids, decision.node_ids, strict=False)
            ]
            if allocations:
                try:
                    committed = await self.commit(
                        req.cluster,
                        CommitPlanInput(plan_id=req.plan_id, allocations=allocations),
                        attempt=activity.info().attempt * 100 + attempt,
                    )
                except WorkflowUpdateFailedError as err:
                    if _cause_type(err) != "PlanRejected":
                        raise
                    last_error = str(err.cause)
                    activity.logger.info("plan %s conflicted, retrying: %s", req.plan_id, err.cause)
                    continue
                allocations = committed.allocations
            addresses = {n.node_id: n.address for n in snap.nodes}
            placed = {a.replica_id for a in allocations}
            return PlacementResult(
                placements=[
                    Placement(
                        replica_id=a.replica_id,
                        node_id=a.node_id,
                        address=addresses.get(a.node_id, ""),
                    )
                    for a in allocations
                ],
                unplaced=[r for r in req.replica_ids if r not in placed],
                reason=decision.reason,
            )
        raise ApplicationError(
            f"placement kept conflicting with concurrent plans: {last_error}", type="PlanConflict"
        )

    @activity.defn(name="commit_plan")
    async def commit_plan(self, plan: CommitPlanInput) -> CommitPlanResult:
        return await self.commit(self._cluster, plan, attempt=activity.info().attempt)

    @activity.defn(name="publish_node")
    async def publish_node(self, inp: UpsertNodeInput) -> None:
        from workflows.cluster import ClusterWorkflow

        handle = self._client.get_workflow_handle_for(
            ClusterWorkflow.run, cluster_workflow_id(self._cluster)
        )
        await handle.execute_update(ClusterWorkflow.upsert_node, inp)

    @activity.defn(name="consume_enrollment_token")
    async def consume_enrollment_token(self, inp: ConsumeTokenInput) -> None:
        from workflows.cluster import ClusterWorkflow

        handle = self._client.get_workflow_handle_for(
            ClusterWorkflow.run, cluster_workflow_id(self._cluster)
        )
        try:
            await handle.execute_update(
                ClusterWorkflow.consume_token, inp, id=f"token-{inp.jti}-{inp.node_id}"
            )
        except WorkflowUpdateFailedError as err:
            kind = _cause_type(err)
            if kind in ("TokenReused", "NodeAlreadyEnrolled"):
                raise ApplicationError(
                    str(err.cause.message if isinstance(err.cause, ApplicationError) else err),
                    type=kind,
                    non_retryable=True,
                ) from err
            raise

    @activity.defn(name="register_node")
    async def register_node(self, record: NodeRecord) -> None:
        """Start ``node/<id>`` or, for a node enrolling again, signal the running one."""
        from workflows.node import NodeWorkflow

        await self._client.start_workflow(
            NodeWorkflow.run,
            NodeWorkflowInput(cluster=self._cluster),
            id=node_workflow_id(record.node_id),
            task_queue=task_queue(self._cluster),
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal="enroll",
            start_signal_args=[EnrollSignal(record=record)],
        )
