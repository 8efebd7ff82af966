"""``secret/<namespace>/<name>``: one secret's durable state, ciphertext only."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from cloudless.contracts._base import Query, Update, WorkflowType
from cloudless.contracts.names import task_queue
from cloudless.secrets.model import (
    CreateSecretInput,
    DeleteSecretInput,
    ReserveUsesInput,
    RevokeInput,
    RewrapInput,
    RewrapResult,
    SecretRecord,
    SecretView,
    SecretWorkflowInput,
    UpdateSecretInput,
)


def workflow_id(namespace: str, name: str) -> str:
    return f"secret/{namespace}/{name}"


def split_workflow_id(secret_workflow_id: str) -> tuple[str, str]:
    """(namespace, name) of a ``secret/<namespace>/<name>`` workflow id."""
    _, namespace, name = secret_workflow_id.split("/", 2)
    return namespace, name


#: Record, revocations (None once deleted or expired).
#: Coordinators only: secrets are read through the SecretsService, which audits every read.
VIEW: Query[None, SecretView | None] = Query("view", None, SecretView | None, sender=None)
#: The first version; refused if the secret exists.
CREATE: Update[CreateSecretInput, SecretRecord] = Update("create", CreateSecretInput, SecretRecord)
#: A new version, if the caller read the current one (optimistic concurrency).
UPDATE: Update[UpdateSecretInput, SecretRecord] = Update("update", UpdateSecretInput, SecretRecord)
#: Completes the workflow; creating the name again starts a new run.
DELETE: Update[DeleteSecretInput, bool] = Update("delete", DeleteSecretInput, bool)
#: Grant up to ``want`` more uses of a use-limited token; 0 once exhausted.
RESERVE_USES: Update[ReserveUsesInput, int] = Update("reserve_uses", ReserveUsesInput, int)
#: Revoke an access token; True if it was not revoked before.
REVOKE: Update[RevokeInput, bool] = Update("revoke", RevokeInput, bool)
#: Swap in a data key rewrapped under a newer master-key version (if still current).
REWRAP: Update[RewrapInput, RewrapResult] = Update("rewrap", RewrapInput, RewrapResult)

WORKFLOW: WorkflowType[SecretWorkflowInput, None] = WorkflowType(
    "SecretWorkflow",
    SecretWorkflowInput,
    None,
    task_queue=task_queue,
    id_prefix="secret/",
    messages=(VIEW, CREATE, UPDATE, DELETE, RESERVE_USES, REVOKE, REWRAP),
)


def live_secrets_query(cluster: str, *conditions: str) -> str:
    """Visibility query for a cluster's live secret workflows, with extra conditions."""
    return WORKFLOW.visibility_query(
        "ExecutionStatus = 'Running'", f"TaskQueue = '{task_queue(cluster)}'", *conditions
    )


class SecretHandle:
    """Typed calls on ``secret/<namespace>/<name>``."""

    def __init__(self, client: Client, namespace: str, name: str) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.id = workflow_id(namespace, name)
        self.handle: WorkflowHandle[Any, None] = WORKFLOW.handle(client, self.id)

    async def view(self, *, rpc_timeout: timedelta | None = None) -> SecretView | None:
        return await VIEW.query(self.handle, rpc_timeout=rpc_timeout)

    async def create(
        self, inp: CreateSecretInput, *, cluster: str, rpc_timeout: timedelta | None = None
    ) -> SecretRecord:
        """Start the secret's workflow (a new run if an earlier one was deleted) and
        create it there, atomically (update-with-start)."""
        start = WORKFLOW.with_start(
            SecretWorkflowInput(),
            id=self.id,
            cluster=cluster,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            static_summary=f"secret {self.namespace}/{self.name}",
        )
        return await CREATE.execute_with_start(
            self.client, inp, start=start, rpc_timeout=rpc_timeout
        )

    async def update(
        self, inp: UpdateSecretInput, *, rpc_timeout: timedelta | None = None
    ) -> SecretRecord:
        return await UPDATE.execute(self.handle, inp, rpc_timeout=rpc_timeout)

    async def delete(self, inp: DeleteSecretInput, *, rpc_timeout: timedelta | None = None) -> bool:
        return await DELETE.execute(self.handle, inp, rpc_timeout=rpc_timeout)

    async def reserve_uses(
        self, inp: ReserveUsesInput, *, rpc_timeout: timedelta | None = None
    ) -> int:
        return await RESERVE_USES.execute(self.handle, inp, rpc_timeout=rpc_timeout)

    async def revoke(self, inp: RevokeInput, *, rpc_timeout: timedelta | None = None) -> bool:
        return await REVOKE.execute(self.handle, inp, rpc_timeout=rpc_timeout)

    async def rewrap(
        self, inp: RewrapInput, *, rpc_timeout: timedelta | None = None
    ) -> RewrapResult:
        return await REWRAP.execute(self.handle, inp, rpc_timeout=rpc_timeout)


__all__ = [
    "CREATE",
    "DELETE",
    "RESERVE_USES",
    "REVOKE",
    "REWRAP",
    "UPDATE",
    "VIEW",
    "WORKFLOW",
    "SecretHandle",
    "live_secrets_query",
    "split_workflow_id",
    "workflow_id",
]
