"""``cluster/<name>``: the allocation ledger, the one writer of placements.

Every plan and node change of the cluster is an Update on it; it runs on its own task
queue (:func:`~cloudless.contracts.names.ledger_task_queue`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy

from cloudless.contracts._base import Query, Update, WorkflowType
from cloudless.contracts.names import ledger_task_queue
from cloudless.model import (
    ClusterSnapshot,
    ClusterWorkflowInput,
    CommitPlanInput,
    CommitPlanResult,
    CompactSnapshot,
    ConsumeTokenInput,
    LedgerBatch,
    LedgerBatchResult,
    LedgerNode,
    RegisterUserInput,
    RevokedCertificate,
    RevokeUserInput,
    RevokeUserResult,
    SchedulerSettings,
    UpsertNodeInput,
    UpsertNodeResult,
    UserRecord,
    WaitNodeInput,
)
from cloudless.vocabulary import AccessRole, NodeState


def workflow_id(cluster: str) -> str:
    return f"cluster/{cluster}"


#: Columnar on the wire; :meth:`LedgerHandle.snapshot` expands it to a ClusterSnapshot.
SNAPSHOT: Query[None, CompactSnapshot] = Query("snapshot", None, CompactSnapshot)
#: (version, Ready nodes, replicas allocated): cheap to poll, unlike the snapshot.
TOTALS: Query[None, tuple[int, int, int]] = Query("totals", None, tuple[int, int, int])
#: The ledger version alone: whether a scheduler's index is current.
VERSION: Query[None, int] = Query("version", None, int)
#: Workloads with replicas allocated on a node (by node id): who to tell when it is lost.
NODE_WORKLOADS: Query[str, list[str]] = Query("node_workloads", str, list[str])
SCHEDULER_SETTINGS: Query[None, SchedulerSettings] = Query(
    "scheduler_settings", None, SchedulerSettings
)
#: Workload key -> the owner token its reservations carry: what the reaper judges.
WORKLOAD_OWNERS: Query[None, dict[str, int]] = Query("workload_owners", None, dict[str, int])
#: Certificates of removed nodes, until they expire: what every gateway refuses.
REVOKED_CERTIFICATES: Query[None, list[RevokedCertificate]] = Query(
    "revoked_certificates", None, list[RevokedCertificate]
)
#: The node once it reaches one of the states, or its current entry on timeout.
WAIT_NODE: Update[WaitNodeInput, LedgerNode | None] = Update(
    "wait_node", WaitNodeInput, LedgerNode | None, sender=AccessRole.VIEWER
)
#: Replace the scheduler settings; returns the ledger version holding them.
SET_SCHEDULER_SETTINGS: Update[SchedulerSettings, int] = Update(
    "set_scheduler_settings", SchedulerSettings, int, sender=AccessRole.ADMIN
)
UPSERT_NODE: Update[UpsertNodeInput, UpsertNodeResult] = Update(
    "upsert_node", UpsertNodeInput, UpsertNodeResult
)
#: Validated before it enters history: a plan that would over-commit a node is refused.
COMMIT_PLAN: Update[CommitPlanInput, CommitPlanResult] = Update(
    "commit_plan", CommitPlanInput, CommitPlanResult
)
#: A coordinator's queued writes, applied in order, each with its own outcome.
APPLY_BATCH: Update[LedgerBatch, LedgerBatchResult] = Update(
    "apply_batch", LedgerBatch, LedgerBatchResult
)
#: People with certificates (``cloudlessctl user``): record one, revoke one, list them.
REGISTER_USER: Update[RegisterUserInput, UserRecord] = Update(
    "register_user", RegisterUserInput, UserRecord, sender=AccessRole.ADMIN
)
#: Every unexpired certificate of the user goes on the revocation list.
REVOKE_USER: Update[RevokeUserInput, RevokeUserResult] = Update(
    "revoke_user", RevokeUserInput, RevokeUserResult, sender=AccessRole.ADMIN
)
USERS: Query[None, list[UserRecord]] = Query(
    "users", None, list[UserRecord], sender=AccessRole.ADMIN
)
#: Record an enrollment token's single use; refused if it was used before.
CONSUME_TOKEN: Update[ConsumeTokenInput, None] = Update("consume_token", ConsumeTokenInput, None)

WORKFLOW: WorkflowType[ClusterWorkflowInput, None] = WorkflowType(
    "ClusterWorkflow",
    ClusterWorkflowInput,
    None,
    task_queue=ledger_task_queue,
    id_prefix="cluster/",
    messages=(
        SNAPSHOT,
        TOTALS,
        VERSION,
        NODE_WORKLOADS,
        SCHEDULER_SETTINGS,
        REVOKED_CERTIFICATES,
        WORKLOAD_OWNERS,
        WAIT_NODE,
        SET_SCHEDULER_SETTINGS,
        REGISTER_USER,
        REVOKE_USER,
        USERS,
        UPSERT_NODE,
        COMMIT_PLAN,
        APPLY_BATCH,
        CONSUME_TOKEN,
    ),
)


class LedgerHandle:
    """Typed calls on ``cluster/<name>``."""

    def __init__(self, client: Client, cluster: str) -> None:
        self.client = client
        self.cluster = cluster
        self.id = workflow_id(cluster)
        self.handle: WorkflowHandle[Any, None] = WORKFLOW.handle(client, self.id)

    async def start(self) -> None:
        """Start the ledger on its own queue unless it runs (idempotent)."""
        await WORKFLOW.start(
            self.client,
            ClusterWorkflowInput(cluster=self.cluster),
            id=self.id,
            cluster=self.cluster,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )

    async def snapshot(self, *, rpc_timeout: timedelta | None = None) -> ClusterSnapshot:
        return (await SNAPSHOT.query(self.handle, rpc_timeout=rpc_timeout)).expand()

    async def totals(self, *, rpc_timeout: timedelta | None = None) -> tuple[int, int, int]:
        return await TOTALS.query(self.handle, rpc_timeout=rpc_timeout)

    async def version(self, *, rpc_timeout: timedelta | None = None) -> int:
        return await VERSION.query(self.handle, rpc_timeout=rpc_timeout)

    async def node_workloads(
        self, node_id: str, *, rpc_timeout: timedelta | None = None
    ) -> list[str]:
        return await NODE_WORKLOADS.query(self.handle, node_id, rpc_timeout=rpc_timeout)

    async def workload_owners(self, *, rpc_timeout: timedelta | None = None) -> dict[str, int]:
        return await WORKLOAD_OWNERS.query(self.handle, rpc_timeout=rpc_timeout)

    async def revoked_certificates(
        self, *, rpc_timeout: timedelta | None = None
    ) -> list[RevokedCertificate]:
        return await REVOKED_CERTIFICATES.query(self.handle, rpc_timeout=rpc_timeout)

    async def scheduler_settings(
        self, *, rpc_timeout: timedelta | None = None
    ) -> SchedulerSettings:
        return await SCHEDULER_SETTINGS.query(self.handle, rpc_timeout=rpc_timeout)

    async def set_scheduler_settings(
        self, settings: SchedulerSettings, *, rpc_timeout: timedelta | None = None
    ) -> int:
        return await SET_SCHEDULER_SETTINGS.execute(self.handle, settings, rpc_timeout=rpc_timeout)

    async def register_user(
        self, inp: RegisterUserInput, *, rpc_timeout: timedelta | None = None
    ) -> UserRecord:
        return await REGISTER_USER.execute(self.handle, inp, rpc_timeout=rpc_timeout)

    async def revoke_user(
        self, inp: RevokeUserInput, *, rpc_timeout: timedelta | None = None
    ) -> RevokeUserResult:
        return await REVOKE_USER.execute(self.handle, inp, rpc_timeout=rpc_timeout)

    async def users(self, *, rpc_timeout: timedelta | None = None) -> list[UserRecord]:
        return await USERS.query(self.handle, rpc_timeout=rpc_timeout)

    async def wait_node(
        self,
        node_id: str,
        states: Sequence[NodeState] = (),
        timeout: float = 30.0,
        *,
        rpc_timeout: timedelta | None = None,
    ) -> LedgerNode | None:
        return await WAIT_NODE.execute(
            self.handle,
            WaitNodeInput(node_id=node_id, states=list(states), timeout_seconds=timeout),
            rpc_timeout=rpc_timeout,
        )

    async def upsert_node(self, inp: UpsertNodeInput) -> UpsertNodeResult:
        return await UPSERT_NODE.execute(self.handle, inp)

    async def commit_plan(self, plan: CommitPlanInput) -> CommitPlanResult:
        return await COMMIT_PLAN.execute(self.handle, plan)

    async def apply_batch(self, batch: LedgerBatch, *, id: str | None = None) -> LedgerBatchResult:
        return await APPLY_BATCH.execute(self.handle, batch, id=id)

    async def consume_token(self, inp: ConsumeTokenInput, *, id: str | None = None) -> None:
        await CONSUME_TOKEN.execute(self.handle, inp, id=id)


__all__ = [
    "APPLY_BATCH",
    "COMMIT_PLAN",
    "CONSUME_TOKEN",
    "NODE_WORKLOADS",
    "REVOKED_CERTIFICATES",
    "SCHEDULER_SETTINGS",
    "SET_SCHEDULER_SETTINGS",
    "SNAPSHOT",
    "TOTALS",
    "UPSERT_NODE",
    "VERSION",
    "WAIT_NODE",
    "WORKFLOW",
    "WORKLOAD_OWNERS",
    "LedgerHandle",
    "workflow_id",
]
