"""``workload/<namespace>/<name>``: a workload's desired spec, its replicas and where they run."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)

from cloudless.contracts._base import Query, Signal, Update, WorkflowType
from cloudless.contracts.names import SA_NAMESPACE, SA_WORKLOAD, task_queue
from cloudless.model import (
    ApplyInput,
    ApplyResult,
    CapacityAvailable,
    ReplicaCrashed,
    ReplicaExited,
    ReplicaReadiness,
    ReplicasLost,
    ReplicasPreempted,
    ScaleInput,
    WaitInput,
    WorkloadState,
    WorkloadStatus,
    WorkloadWorkflowInput,
)
from cloudless.spec import Workload, parse_workload
from cloudless.vocabulary import AccessRole


def workflow_id(namespace: str, name: str) -> str:
    return f"workload/{namespace}/{name}"


def split_workflow_id(workflow_id: str) -> tuple[str, str] | None:
    """(namespace, name) of a ``workload/<namespace>/<name>`` id; None for another id."""
    kind, _, rest = workflow_id.partition("/")
    namespace, _, name = rest.partition("/")
    if kind != "workload" or not namespace or not name:
        return None
    return namespace, name


def key(namespace: str, name: str) -> str:
    """``<namespace>/<name>``: how the ledger and the scheduler name a workload."""
    return f"{namespace}/{name}"


def split_key(workload_key: str) -> tuple[str, str]:
    """(namespace, name) of a ``<namespace>/<name>`` key."""
    namespace, name = workload_key.split("/", 1)
    return namespace, name


#: Set the desired manifest; validated (and refused while deleting) before history.
APPLY: Update[ApplyInput, ApplyResult] = Update(
    "apply", ApplyInput, ApplyResult, sender=AccessRole.OPERATOR
)
SCALE: Update[ScaleInput, ApplyResult] = Update(
    "scale", ScaleInput, ApplyResult, sender=AccessRole.OPERATOR
)
#: Stop every replica and complete; returns the last generation.
DELETE: Update[None, int] = Update("delete", None, int, sender=AccessRole.OPERATOR)
#: Return once a generation is fully reconciled (or on timeout).
WAIT_SETTLED: Update[WaitInput, WorkloadStatus] = Update(
    "wait_settled", WaitInput, WorkloadStatus, sender=AccessRole.VIEWER
)
STATUS: Query[None, WorkloadStatus] = Query("status", None, WorkloadStatus)
#: A node went away (replace its replicas) or is draining (move them, surge first).
REPLICAS_LOST: Signal[ReplicasLost] = Signal("replicas_lost", ReplicasLost)
#: The ledger saw room appear: place pending replicas now.
CAPACITY_AVAILABLE: Signal[CapacityAvailable] = Signal("capacity_available", CapacityAvailable)
#: A higher-priority workload took some of its places; the ledger released them already.
REPLICAS_PREEMPTED: Signal[ReplicasPreempted] = Signal("replicas_preempted", ReplicasPreempted)
#: The agent gave up on a replica (failed, or completed under restartPolicy Never/OnFailure).
REPLICA_EXITED: Signal[ReplicaExited] = Signal("replica_exited", ReplicaExited)
#: A replica crashed on its node and its agent restarts it (sent for every crash).
REPLICA_CRASHED: Signal[ReplicaCrashed] = Signal("replica_crashed", ReplicaCrashed)
#: A replica's readiness changed (sent only on change).
REPLICA_READINESS: Signal[ReplicaReadiness] = Signal("replica_readiness", ReplicaReadiness)

WORKFLOW: WorkflowType[WorkloadWorkflowInput, WorkloadStatus] = WorkflowType(
    "WorkloadWorkflow",
    WorkloadWorkflowInput,
    WorkloadStatus,
    task_queue=task_queue,
    id_prefix="workload/",
    starter=AccessRole.OPERATOR,  # apply is update-with-start
    messages=(
        APPLY,
        SCALE,
        DELETE,
        WAIT_SETTLED,
        STATUS,
        REPLICAS_LOST,
        CAPACITY_AVAILABLE,
        REPLICAS_PREEMPTED,
        REPLICA_EXITED,
        REPLICA_CRASHED,
        REPLICA_READINESS,
    ),
)


def stand_in_manifest(namespace: str, name: str) -> Workload:
    """The manifest a teardown run carries in place of the one its ended run had (which
    may be what wedged it): it names the workload and asks for nothing; never shown."""
    return parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": 0, "runtime": "exec", "container": {"command": ["true"]}},
        }
    )


def live_workloads_query(cluster: str) -> str:
    """Visibility query for a cluster's running workload workflows (its task queue): a
    Temporal namespace several clusters share lists only this one's."""
    return WORKFLOW.visibility_query(
        "ExecutionStatus = 'Running'", f"TaskQueue = '{task_queue(cluster)}'"
    )


class WorkloadHandle:
    """Typed calls on ``workload/<namespace>/<name>``."""

    def __init__(self, client: Client, namespace: str, name: str) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.key = key(namespace, name)
        self.id = workflow_id(namespace, name)
        self.handle: WorkflowHandle[Any, WorkloadStatus] = WORKFLOW.handle(client, self.id)

    @classmethod
    def of(cls, client: Client, workload_key: str) -> WorkloadHandle:
        """The handle of a ``<namespace>/<name>`` key."""
        return cls(client, *split_key(workload_key))

    async def apply(
        self,
        inp: ApplyInput,
        *,
        cluster: str | None = None,
        rpc_timeout: timedelta | None = None,
    ) -> ApplyResult:
        """Set the manifest. With ``cluster``, atomically create the workflow first if it
        does not run (update-with-start), tagged with its namespace and name."""
        if cluster is None:
            return await APPLY.execute(self.handle, inp, rpc_timeout=rpc_timeout)
        start = WORKFLOW.with_start(
            WorkloadWorkflowInput(cluster=cluster, manifest=inp.manifest),
            id=self.id,
            cluster=cluster,
            search_attributes=self._search_attributes(),
            static_summary=f"workload {self.key}",
        )
        return await APPLY.execute_with_start(
            self.client, inp, start=start, rpc_timeout=rpc_timeout
        )

    def _search_attributes(self) -> TypedSearchAttributes:
        return TypedSearchAttributes(
            [
                SearchAttributePair(SA_NAMESPACE, self.namespace),
                SearchAttributePair(SA_WORKLOAD, self.name),
            ]
        )

    async def tear_down(
        self, cluster: str, reason: str, *, rpc_timeout: timedelta | None = None
    ) -> WorkflowHandle[Any, WorkloadStatus]:
        """Start a run that only removes what an ended run of the workload left (its
        replicas on the agents, its allocations in the ledger), then completes Deleted.

        For a run that cannot make progress: terminate it first. A run started meanwhile
        (an apply racing the delete) is terminated too, so the workload is gone after.
        """
        stand_in = stand_in_manifest(self.namespace, self.name)
        return await WORKFLOW.start(
            self.client,
            WorkloadWorkflowInput(
                cluster=cluster,
                state=WorkloadState(manifest=stand_in, deleting=True, orphans=True, message=reason),
            ),
            id=self.id,
            cluster=cluster,
            id_conflict_policy=WorkflowIDConflictPolicy.TERMINATE_EXISTING,
            search_attributes=self._search_attributes(),
            static_summary=f"teardown of workload {self.key}",
            rpc_timeout=rpc_timeout,
        )

    async def scale(self, inp: ScaleInput, *, rpc_timeout: timedelta | None = None) -> ApplyResult:
        return await SCALE.execute(self.handle, inp, rpc_timeout=rpc_timeout)

    async def delete(self, *, rpc_timeout: timedelta | None = None) -> int:
        return await DELETE.execute(self.handle, rpc_timeout=rpc_timeout)

    async def wait_settled(
        self, inp: WaitInput, *, rpc_timeout: timedelta | None = None
    ) -> WorkloadStatus:
        return await WAIT_SETTLED.execute(self.handle, inp, rpc_timeout=rpc_timeout)

    async def status(self, *, rpc_timeout: timedelta | None = None) -> WorkloadStatus:
        return await STATUS.query(self.handle, rpc_timeout=rpc_timeout)

    async def result(self) -> WorkloadStatus:
        """The final status, once the workflow completed (after a delete)."""
        return await self.handle.result()

    async def replicas_lost(self, sig: ReplicasLost) -> None:
        await REPLICAS_LOST.send(self.handle, sig)

    async def capacity_available(self, sig: CapacityAvailable) -> None:
        await CAPACITY_AVAILABLE.send(self.handle, sig)

    async def replicas_preempted(self, sig: ReplicasPreempted) -> None:
        await REPLICAS_PREEMPTED.send(self.handle, sig)

    async def replica_exited(self, sig: ReplicaExited) -> None:
        await REPLICA_EXITED.send(self.handle, sig)

    async def replica_crashed(self, sig: ReplicaCrashed) -> None:
        await REPLICA_CRASHED.send(self.handle, sig)

    async def replica_readiness(self, sig: ReplicaReadiness) -> None:
        await REPLICA_READINESS.send(self.handle, sig)


__all__ = [
    "APPLY",
    "CAPACITY_AVAILABLE",
    "DELETE",
    "REPLICAS_LOST",
    "REPLICAS_PREEMPTED",
    "REPLICA_CRASHED",
    "REPLICA_EXITED",
    "REPLICA_READINESS",
    "SCALE",
    "STATUS",
    "WAIT_SETTLED",
    "WORKFLOW",
    "WorkloadHandle",
    "key",
    "live_workloads_query",
    "split_key",
    "split_workflow_id",
    "stand_in_manifest",
    "workflow_id",
]
