"""The operations ``cloudlessctl`` offers, as a library: apply, get, describe, scale, delete.

It talks to Temporal only (start/update/query workflows) and addresses workflows by
their registered names, so the shared kernel does not import the workflow code.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from cloudless.errors import CloudlessError, NotFoundError
from cloudless.model import (
    ApplyInput,
    ApplyResult,
    ClusterSnapshot,
    ExplainInput,
    ExplainResult,
    LedgerNode,
    NodeAdminInput,
    NodeState,
    NodeStatus,
    ScaleInput,
    SchedulerSettings,
    WaitInput,
    WaitNodeInput,
    WorkloadPhase,
    WorkloadStatus,
    WorkloadWorkflowInput,
)
from cloudless.naming import (
    SA_NAMESPACE,
    SA_WORKLOAD,
    cluster_workflow_id,
    node_workflow_id,
    task_queue,
    workload_workflow_id,
)
from cloudless.spec import Workload
from cloudless.workloads import check_supported, view_of

WORKLOAD_WORKFLOW = "WorkloadWorkflow"
#: How long a query or a quick update may take before we say no coordinator is answering.
T = TypeVar("T")
RPC_TIMEOUT_SECONDS = 15.0
RPC_TIMEOUT = timedelta(seconds=RPC_TIMEOUT_SECONDS)


@dataclass(frozen=True)
class ApplyOutcome:
    namespace: str
    name: str
    action: str  # "created" | "configured" | "unchanged"
    generation: int
    status: WorkloadStatus | None = None


@dataclass(frozen=True)
class NodeDetails:
    node: LedgerNode
    status: NodeStatus | None
    workloads: list[str]


def _update_error(err: WorkflowUpdateFailedError) -> CloudlessError:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return CloudlessError(cause.message)
    return CloudlessError(str(cause or err))


class CloudlessClient:
    def __init__(self, client: Client, cluster: str) -> None:
        self.temporal = client
        self.cluster = cluster

    def _workload(self, namespace: str, name: str) -> WorkflowHandle[object, WorkloadStatus]:
        return self.temporal.get_workflow_handle(
            workload_workflow_id(namespace, name), result_type=WorkloadStatus
        )

    def _unanswered(self, err: RPCError) -> Exception:
        """Turn a timed-out call into the likely cause: no worker polls the task queue."""
        if err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            return CloudlessError(
                f"no coordinator answered for cluster {self.cluster!r} (task queue "
                f"{task_queue(self.cluster)}); is `cloudless-coordinator` running?"
            )
        return err

    async def apply(
        self, workload: Workload, *, wait: bool = False, timeout: float = 120.0
    ) -> ApplyOutcome:
        """Create or update ``workload/<ns>/<name>`` atomically (update-with-start)."""
        manifest = workload.to_manifest()
        view = view_of(manifest)
        check_supported(view)
        start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            WORKLOAD_WORKFLOW,
            WorkloadWorkflowInput(cluster=self.cluster, manifest=manifest),
            id=workload_workflow_id(view.namespace, view.name),
            task_queue=task_queue(self.cluster),
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SA_NAMESPACE, view.namespace),
                    SearchAttributePair(SA_WORKLOAD, view.name),
                ]
            ),
            static_summary=f"workload {view.key}",
        )
        try:
            result: ApplyResult = await self.temporal.execute_update_with_start_workflow(
                "apply",
                ApplyInput(manifest=manifest),
                start_workflow_operation=start,
                result_type=ApplyResult,
                rpc_timeout=RPC_TIMEOUT,
            )
        except WorkflowUpdateFailedError as err:
            raise _update_error(err) from err
        if result.created:
            action = "created"
        elif result.changed:
            action = "configured"
        else:
            action = "unchanged"
        status = None
        if wait:
            # Probed replicas become ready only after the reconcile (once a probe passed and
            # a heartbeat said so): wait for that too, or `apply --wait` would always fail.
            status = await self.wait(
                view.namespace,
                view.name,
                result.generation,
                timeout,
                all_ready=view.readiness_gated,
            )
        return ApplyOutcome(view.namespace, view.name, action, result.generation, status)

    async def wait(
        self,
        namespace: str,
        name: str,
        generation: int,
        timeout: float = 120.0,
        *,
        all_ready: bool = False,
        avoid_node: str = "",
    ) -> WorkloadStatus:
        try:
            status: WorkloadStatus = await self._workload(namespace, name).execute_update(
                "wait_settled",
                WaitInput(
                    generation=generation,
                    timeout_seconds=timeout,
                    all_ready=all_ready,
                    avoid_node=avoid_node,
                ),
                result_type=WorkloadStatus,
                rpc_timeout=timedelta(seconds=timeout + RPC_TIMEOUT_SECONDS),
            )
        except WorkflowUpdateFailedError as err:
            raise _update_error(err) from err
        return status

    async def workload_status(self, namespace: str, name: str) -> WorkloadStatus:
        try:
            status: WorkloadStatus = await self._workload(namespace, name).query(
                "status", result_type=WorkloadStatus, rpc_timeout=RPC_TIMEOUT
            )
            return status
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise NotFoundError(
                    f"workload {namespace}/{name} not found; list them with "
                    "`cloudlessctl get workloads -A`"
                ) from err
            raise self._unanswered(err) from err

    async def list_workloads(self, namespace: str | None = None) -> list[WorkloadStatus]:
        prefix = "workload/" + (f"{namespace}/" if namespace else "")
        out = []
        query = f'WorkflowType = "{WORKLOAD_WORKFLOW}" AND ExecutionStatus = "Running"'
        async for wf in self.temporal.list_workflows(query):
            if not wf.id.startswith(prefix):
                continue
            _, ns, name = wf.id.split("/", 2)
            try:
                out.append(await self.workload_status(ns, name))
            except NotFoundError:
                continue  # finished between the listing and the query
        return sorted(out, key=lambda s: (s.namespace, s.name))

    async def scale(self, namespace: str, name: str, replicas: int) -> ApplyResult:
        await self.workload_status(namespace, name)  # a clear NotFound first
        try:
            result: ApplyResult = await self._workload(namespace, name).execute_update(
                "scale",
                ScaleInput(replicas=replicas),
                result_type=ApplyResult,
                rpc_timeout=RPC_TIMEOUT,
            )
            return result
        except WorkflowUpdateFailedError as err:
            raise _update_error(err) from err

    async def delete(
        self, namespace: str, name: str, *, wait: bool = True
    ) -> WorkloadStatus | None:
        current = await self.workload_status(namespace, name)
        if current.phase == WorkloadPhase.DELETED:
            raise NotFoundError(f"workload {namespace}/{name} was already deleted")
        handle = self._workload(namespace, name)
        try:
            await handle.execute_update("delete", result_type=int, rpc_timeout=RPC_TIMEOUT)
        except WorkflowUpdateFailedError as err:
            raise _update_error(err) from err
        return await handle.result() if wait else None

    async def _query_ledger(self, query: str, result_type: type[T]) -> T:
        """Query ``cluster/<name>``; a missing ledger is a NotFoundError saying why."""
        handle = self.temporal.get_workflow_handle(cluster_workflow_id(self.cluster))
        try:
            found: T = await handle.query(query, result_type=result_type, rpc_timeout=RPC_TIMEOUT)
            return found
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise NotFoundError(
                    f"cluster {self.cluster!r} has no ledger yet; is a coordinator running "
                    "for it? (`cloudlessctl dev up` starts one)"
                ) from err
            raise

    async def snapshot(self) -> ClusterSnapshot:
        return await self._query_ledger("snapshot", ClusterSnapshot)

    async def scheduler_settings(self) -> SchedulerSettings:
        """The cluster's scheduler settings, as the ledger keeps them."""
        return await self._query_ledger("scheduler_settings", SchedulerSettings)

    async def set_scheduler_settings(self, new: SchedulerSettings) -> int:
        """Replace the cluster's scheduler settings; returns the ledger version that holds
        them (every coordinator reloads its index, and with it the settings, within ~3 s)."""
        handle = self.temporal.get_workflow_handle(cluster_workflow_id(self.cluster))
        version: int = await handle.execute_update(
            "set_scheduler_settings", new, result_type=int, rpc_timeout=RPC_TIMEOUT
        )
        return version

    async def wait_node(
        self, node_id: str, states: Sequence[NodeState] = (), timeout: float = 30.0
    ) -> LedgerNode | None:
        """Await the ledger listing the node (in one of ``states``); None on timeout."""
        handle = self.temporal.get_workflow_handle(cluster_workflow_id(self.cluster))
        node: LedgerNode | None = await handle.execute_update(
            "wait_node",
            WaitNodeInput(node_id=node_id, states=list(states), timeout_seconds=timeout),
            result_type=cast(type, LedgerNode | None),
            rpc_timeout=timedelta(seconds=timeout + RPC_TIMEOUT_SECONDS),
        )
        return node

    async def explain(self, workload: Workload, top_k: int = 3) -> ExplainResult:
        """Dry-run placement of the workload's replicas on the current cluster (the
        coordinator decides on its node index; nothing is committed)."""
        view_of(workload.to_manifest())
        try:
            result: ExplainResult = await self.temporal.execute_workflow(
                "ExplainPlacementWorkflow",
                ExplainInput(cluster=self.cluster, manifest=workload.to_manifest(), top_k=top_k),
                id=f"explain/{workload.key}/{uuid.uuid4().hex[:8]}",
                task_queue=task_queue(self.cluster),
                result_type=ExplainResult,
                execution_timeout=timedelta(seconds=60),
                rpc_timeout=RPC_TIMEOUT,
            )
        except WorkflowFailureError as err:
            cause = err.cause.cause if isinstance(err.cause, ActivityError) else err.cause
            raise CloudlessError(f"explain failed: {getattr(cause, 'message', cause)}") from err
        return result

    async def list_nodes(self) -> list[LedgerNode]:
        return sorted((await self.snapshot()).nodes, key=lambda n: n.node_id)

    async def node_admin(
        self, node_id: str, action: str, reason: str = "", timeout: float = 3600.0
    ) -> NodeStatus:
        """Cordon, uncordon or drain a node; returns once done (a drain once it is empty)."""
        await self.describe_node(node_id)  # a clear NotFound first
        handle = self.temporal.get_workflow_handle(node_workflow_id(node_id))
        try:
            status: NodeStatus = await handle.execute_update(
                "admin",
                NodeAdminInput(action=action, reason=reason),
                result_type=NodeStatus,
                rpc_timeout=timedelta(seconds=timeout),
            )
        except WorkflowUpdateFailedError as err:
            raise _update_error(err) from err
        return status

    async def describe_node(self, node_id: str) -> NodeDetails:
        nodes = {n.node_id: n for n in (await self.snapshot()).nodes}
        if node_id not in nodes:
            raise NotFoundError(
                f"node {node_id!r} not found; list nodes with `cloudlessctl get nodes`"
            )
        status = await self.temporal.get_workflow_handle(node_workflow_id(node_id)).query(
            "describe", result_type=NodeStatus, rpc_timeout=RPC_TIMEOUT
        )
        workloads = []
        for w in await self.list_workloads():
            if any(r.node_id == node_id for r in w.replicas):
                workloads.append(f"{w.namespace}/{w.name}")
        return NodeDetails(node=nodes[node_id], status=status, workloads=workloads)


async def apply_all(
    client: CloudlessClient, workloads: Sequence[Workload], *, wait: bool, timeout: float
) -> list[ApplyOutcome]:
    return [await client.apply(w, wait=wait, timeout=timeout) for w in workloads]
