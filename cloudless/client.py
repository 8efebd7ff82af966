"""The operations ``cloudlessctl`` offers, as a library: apply, get, describe, scale, delete.

It talks to Temporal only, through the typed entity handles of :mod:`cloudless.contracts`,
so the shared kernel does not import the workflow code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from cloudless.contracts import (
    AuditHandle,
    LedgerHandle,
    NodeHandle,
    WorkloadHandle,
    certs,
    explain,
    gone,
    names,
    reaper,
)
from cloudless.contracts.limits import MAX_MESSAGE_CHARS, check_manifest, clip
from cloudless.contracts.stuck import TaskFailure, retrying_activities, workflow_task_failure
from cloudless.contracts.workload import live_workloads_query, split_workflow_id
from cloudless.errors import CloudlessError, NotFoundError
from cloudless.model import (
    ApplyInput,
    ApplyResult,
    AuditEntries,
    AuditFilter,
    CARotationInput,
    CARotationReport,
    CertRotationInput,
    CertRotationReport,
    ClusterSnapshot,
    ExplainInput,
    ExplainResult,
    LedgerNode,
    NodeAdminInput,
    NodeStatus,
    ReaperInput,
    ReapReport,
    RegisterUserInput,
    RevokeUserInput,
    RevokeUserResult,
    ScaleInput,
    SchedulerSettings,
    UserRecord,
    WaitInput,
    WorkloadStatus,
)
from cloudless.spec import Workload, check_limits
from cloudless.users import IssuedUser
from cloudless.vocabulary import AdminAction, NodeState, WorkloadPhase
from cloudless.workloads import check_supported, view_of

T = TypeVar("T")
#: How long a query or a quick update may take before we say no coordinator is answering.
RPC_TIMEOUT_SECONDS = 15.0
RPC_TIMEOUT = timedelta(seconds=RPC_TIMEOUT_SECONDS)
#: Workloads ``list_workloads`` asks at once (one slow answer does not hold up the rest).
LIST_CONCURRENCY = 16
#: How long ``delete`` waits for a workload to tear itself down before it checks whether
#: its workflow can still make progress (if not, it is terminated and torn down for it).
DELETE_TIMEOUT_SECONDS = 120.0
#: Why a terminated stuck run ended (plaintext in history: no workload data in it).
TERMINATE_REASON = "cloudlessctl delete: the workflow could not make progress"


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


def unknown_status(namespace: str, name: str, phase: WorkloadPhase, message: str) -> WorkloadStatus:
    """The status of a workload whose workflow did not answer: nothing of its state is
    known (generation 0), only ``phase`` (Stuck or Unknown) and why."""
    return WorkloadStatus(
        namespace=namespace,
        name=name,
        generation=0,
        spec_hash="",
        desired=0,
        ready=0,
        phase=phase,
        message=message,
    )


def _way_out(namespace: str, name: str) -> str:
    return (
        f"`cloudlessctl delete workload {name} -n {namespace}` terminates its workflow, "
        "stops its replicas and frees what it holds"
    )


def _update_error(err: WorkflowUpdateFailedError) -> CloudlessError:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return CloudlessError(cause.message)
    return CloudlessError(str(cause or err))


class CloudlessClient:
    def __init__(self, client: Client, cluster: str) -> None:
        self.temporal = client
        self.cluster = cluster
        self.ledger = LedgerHandle(client, cluster)

    def workload(self, namespace: str, name: str) -> WorkloadHandle:
        return WorkloadHandle(self.temporal, namespace, name)

    def node(self, node_id: str) -> NodeHandle:
        return NodeHandle(self.temporal, node_id)

    def _unanswered(self, err: RPCError) -> Exception:
        """Turn a timed-out call into the likely cause: no worker polls the task queue."""
        if err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            return CloudlessError(
                f"no coordinator answered for cluster {self.cluster!r} (task queue "
                f"{names.task_queue(self.cluster)}); is `cloudless-coordinator` running?"
            )
        return err

    async def apply(
        self, workload: Workload, *, wait: bool = False, timeout: float = 120.0
    ) -> ApplyOutcome:
        """Create or update ``workload/<ns>/<name>`` atomically (update-with-start).

        Refused before anything is sent (:class:`~cloudless.spec.ManifestError`) if the
        workload exceeds a manifest limit or asks for a setting its runtime does not enforce.
        """
        view = view_of(workload)
        check_limits(workload, f"workload {view.key}")
        check_supported(view)
        check_manifest(workload, view.key, self.temporal.data_converter.payload_converter)
        try:
            result = await self.workload(view.namespace, view.name).apply(
                ApplyInput(manifest=workload), cluster=self.cluster, rpc_timeout=RPC_TIMEOUT
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
            return await self.workload(namespace, name).wait_settled(
                WaitInput(
                    generation=generation,
                    timeout_seconds=timeout,
                    all_ready=all_ready,
                    avoid_node=avoid_node,
                ),
                rpc_timeout=timedelta(seconds=timeout + RPC_TIMEOUT_SECONDS),
            )
        except WorkflowUpdateFailedError as err:
            raise _update_error(err) from err

    def _not_found(self, namespace: str, name: str, why: str = "") -> NotFoundError:
        return NotFoundError(
            f"workload {namespace}/{name} not found{why}; list them with "
            "`cloudlessctl get workloads -A`"
        )

    async def task_failure(self, namespace: str, name: str) -> TaskFailure | None:
        """Whether the workload's workflow task is failing (it cannot make progress)."""
        try:
            return await workflow_task_failure(
                self.temporal, self.workload(namespace, name).id, rpc_timeout=RPC_TIMEOUT
            )
        except RPCError as err:
            if gone(err):
                raise self._not_found(namespace, name) from err
            raise self._unanswered(err) from err

    async def workload_status(self, namespace: str, name: str) -> WorkloadStatus:
        """The workload's status. A workload whose workflow task fails (it answers nothing)
        is Stuck, with the failure and the way out as its message; one that does not
        answer in time raises (no coordinator is running, most likely). An activity it has
        been retrying for a while is added to its message."""
        handle = self.workload(namespace, name)
        try:
            description = await handle.handle.describe(rpc_timeout=RPC_TIMEOUT)
        except RPCError as err:
            if gone(err):
                raise self._not_found(namespace, name) from err
            raise self._unanswered(err) from err
        closed = description.status
        if closed not in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED):
            # Terminated, failed, timed out: its last answer would be stale.
            state = closed.name.lower().replace("_", " ") if closed else "closed"
            raise self._not_found(namespace, name, f" (its workflow was {state})")
        if closed == WorkflowExecutionStatus.RUNNING:
            failing = await self.task_failure(namespace, name)
            if failing is not None:
                return self._stuck(namespace, name, failing)
        try:
            status = await handle.status(rpc_timeout=RPC_TIMEOUT)
        except RPCError as err:
            if gone(err):
                raise self._not_found(namespace, name) from err
            failing = await self.task_failure(namespace, name)  # it may have just begun
            if failing is not None:
                return self._stuck(namespace, name, failing)
            raise self._unanswered(err) from err
        retrying = await retrying_activities(self.temporal, description)
        if retrying:
            said = f"{status.message}; {retrying}" if status.message else retrying
            status = status.model_copy(update={"message": clip(said, MAX_MESSAGE_CHARS)})
        return status

    def _stuck(self, namespace: str, name: str, failing: TaskFailure) -> WorkloadStatus:
        message = failing.message(way_out=_way_out(namespace, name))
        return unknown_status(namespace, name, WorkloadPhase.STUCK, message)

    async def list_workloads(self, namespace: str | None = None) -> list[WorkloadStatus]:
        """Every running workload's status (of ``namespace``, or all). A workload that
        cannot answer is listed as Stuck or Unknown with why; it never fails the list."""
        keys = []
        async for wf in self.temporal.list_workflows(live_workloads_query(self.cluster)):
            found = split_workflow_id(wf.id)
            if found is not None and not (namespace and found[0] != namespace):
                keys.append(found)
        limit = asyncio.Semaphore(LIST_CONCURRENCY)

        async def one(ns: str, name: str) -> WorkloadStatus | None:
            async with limit:
                try:
                    return await self.workload_status(ns, name)
                except NotFoundError:
                    return None  # finished between the listing and the query
                except (CloudlessError, RPCError) as err:
                    why = err.message if isinstance(err, RPCError) else str(err)
                    return unknown_status(
                        ns, name, WorkloadPhase.UNKNOWN, f"its workflow did not answer: {why}"
                    )

        found_statuses = await asyncio.gather(*(one(ns, name) for ns, name in keys))
        out = [s for s in found_statuses if s is not None]
        return sorted(out, key=lambda s: (s.namespace, s.name))

    async def scale(self, namespace: str, name: str, replicas: int) -> ApplyResult:
        await self.workload_status(namespace, name)  # a clear NotFound first
        try:
            return await self.workload(namespace, name).scale(
                ScaleInput(replicas=replicas), rpc_timeout=RPC_TIMEOUT
            )
        except WorkflowUpdateFailedError as err:
            raise _update_error(err) from err

    async def delete(
        self,
        namespace: str,
        name: str,
        *,
        wait: bool = True,
        timeout: float = DELETE_TIMEOUT_SECONDS,
    ) -> WorkloadStatus | None:
        """Stop every replica and release what the workload holds; the final status.

        The workload's workflow tears itself down. One that cannot (its workflow task
        fails: see :meth:`workload_status`), or that has not finished within ``timeout``
        seconds and turns out unable to, is terminated and a teardown run takes over: it
        finds the workload's allocations in the ledger and its replicas on the agents,
        stops and releases them.
        """
        current = await self.workload_status(namespace, name)
        if current.phase == WorkloadPhase.DELETED:
            raise NotFoundError(f"workload {namespace}/{name} was already deleted")
        if current.phase == WorkloadPhase.STUCK and current.generation == 0:
            return await self._tear_down(namespace, name, current.message, wait, timeout)
        handle = self.workload(namespace, name)
        try:
            await handle.delete(rpc_timeout=RPC_TIMEOUT)
        except WorkflowUpdateFailedError as err:
            raise _update_error(err) from err
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
            failing = await self.task_failure(namespace, name)
            if failing is None:
                if isinstance(err, RPCError):
                    raise self._unanswered(err) from err
                raise CloudlessError(
                    f"no coordinator took the delete of workload {namespace}/{name}; is "
                    "`cloudless-coordinator` running?"
                ) from err
            return await self._tear_down(namespace, name, failing.message(), wait, timeout)
        if not wait:
            return None
        try:
            return await asyncio.wait_for(handle.result(), timeout)
        except TimeoutError:
            failing = await self.task_failure(namespace, name)
            if failing is None:
                status = await self.workload_status(namespace, name)
                raise CloudlessError(
                    f"workload {namespace}/{name} is still being deleted after {timeout:g}s "
                    f"({len(status.replicas)} replica(s) left: {status.message or 'stopping'}); "
                    "it continues: run the delete again to wait for it"
                ) from None
            return await self._tear_down(namespace, name, failing.message(), wait, timeout)

    async def _tear_down(
        self, namespace: str, name: str, reason: str, wait: bool, timeout: float
    ) -> WorkloadStatus | None:
        """Terminate the workload's stuck run and start one that removes what it left."""
        handle = self.workload(namespace, name)
        try:
            await handle.handle.terminate(reason=TERMINATE_REASON, rpc_timeout=RPC_TIMEOUT)
        except RPCError as err:
            if not gone(err):
                raise
        run = await handle.tear_down(self.cluster, f"deleted while stuck: {reason}")
        if not wait:
            return None
        try:
            return await asyncio.wait_for(run.result(), timeout)
        except TimeoutError:
            raise CloudlessError(
                f"workload {namespace}/{name}: its stuck workflow was terminated; the "
                f"teardown of what it left has not finished after {timeout:g}s and "
                "continues (see `cloudlessctl describe workload`)"
            ) from None

    async def _from_ledger(self, call: Awaitable[T]) -> T:
        """Await a ledger query; a missing ledger is a NotFoundError saying why."""
        try:
            return await call
        except RPCError as err:
            if gone(err):
                raise NotFoundError(
                    f"cluster {self.cluster!r} has no ledger yet; is a coordinator running "
                    "for it? (`cloudlessctl dev up` starts one)"
                ) from err
            raise

    async def snapshot(self) -> ClusterSnapshot:
        return await self._from_ledger(self.ledger.snapshot(rpc_timeout=RPC_TIMEOUT))

    async def scheduler_settings(self) -> SchedulerSettings:
        """The cluster's scheduler settings, as the ledger keeps them."""
        return await self._from_ledger(self.ledger.scheduler_settings(rpc_timeout=RPC_TIMEOUT))

    async def set_scheduler_settings(self, new: SchedulerSettings) -> int:
        """Replace the cluster's scheduler settings; returns the ledger version that holds
        them (every coordinator reloads its index, and with it the settings, within ~3 s)."""
        return await self.ledger.set_scheduler_settings(new, rpc_timeout=RPC_TIMEOUT)

    async def users(self) -> list[UserRecord]:
        """The cluster's users (admins only)."""
        return await self._from_ledger(self.ledger.users(rpc_timeout=RPC_TIMEOUT))

    async def register_user(self, user: IssuedUser) -> UserRecord:
        """Record a user's new certificate, so that it can be revoked."""
        try:
            return await self.ledger.register_user(
                RegisterUserInput(
                    name=user.name,
                    role=user.role.value,
                    serial=user.serial,
                    not_after=user.not_after,
                ),
                rpc_timeout=RPC_TIMEOUT,
            )
        except WorkflowUpdateFailedError as err:
            raise _update_error(err) from err

    async def revoke_user(self, name: str, reason: str = "") -> RevokeUserResult:
        """Revoke every certificate of the user; every front and gateway refuses them
        within seconds."""
        result = await self.ledger.revoke_user(
            RevokeUserInput(name=name, reason=reason), rpc_timeout=RPC_TIMEOUT
        )
        if not result.found:
            raise NotFoundError(f"no user {name!r} in cluster {self.cluster!r}; see `user list`")
        return result

    async def wait_node(
        self, node_id: str, states: Sequence[NodeState] = (), timeout: float = 30.0
    ) -> LedgerNode | None:
        """Await the ledger listing the node (in one of ``states``); None on timeout."""
        return await self.ledger.wait_node(
            node_id,
            states,
            timeout,
            rpc_timeout=timedelta(seconds=timeout + RPC_TIMEOUT_SECONDS),
        )

    async def explain(self, workload: Workload, top_k: int = 3) -> ExplainResult:
        """Dry-run placement of the workload's replicas on the current cluster (the
        coordinator decides on its node index; nothing is committed)."""
        check_manifest(workload, workload.key, self.temporal.data_converter.payload_converter)
        try:
            return await explain.explain(
                self.temporal,
                ExplainInput(cluster=self.cluster, manifest=workload, top_k=top_k),
                workload.key,
                execution_timeout=timedelta(seconds=60),
                rpc_timeout=RPC_TIMEOUT,
            )
        except WorkflowFailureError as err:
            cause = err.cause.cause if isinstance(err.cause, ActivityError) else err.cause
            raise CloudlessError(f"explain failed: {getattr(cause, 'message', cause)}") from err

    async def reap(self, grace_seconds: float = 60.0) -> ReapReport:
        """Run the reaper now: release the reservations whose workflow run is over and stop
        the replicas no workload places where they run (started at least
        ``grace_seconds`` ago). Returns what it did."""
        try:
            return await reaper.run_now(
                self.temporal, ReaperInput(cluster=self.cluster, grace_seconds=grace_seconds)
            )
        except WorkflowFailureError as err:
            cause = err.cause.cause if isinstance(err.cause, ActivityError) else err.cause
            raise CloudlessError(f"reaper failed: {getattr(cause, 'message', cause)}") from err

    async def rotate_certificates(self, *, force: bool = False) -> CertRotationReport:
        """Run the ``cert-rotation`` look now (it also runs on a Schedule): every live
        coordinator instance renews what is due of its certificates (``force``: all of
        them) and says what each is. Returns the report."""
        try:
            return await certs.run_now(
                self.temporal, CertRotationInput(cluster=self.cluster, force=force)
            )
        except WorkflowFailureError as err:
            cause = err.cause.cause if isinstance(err.cause, ActivityError) else err.cause
            raise CloudlessError(
                f"certificate rotation failed: {getattr(cause, 'message', cause)}"
            ) from err

    async def rotate_ca(self, overlap: timedelta) -> str:
        """Start rotating the cluster CA through ``overlap`` (twice: trusting both while
        the old one issues, then while the new one does); its workflow id. Refused while
        a rotation runs."""
        try:
            await certs.start_ca_rotation(
                self.temporal,
                CARotationInput(cluster=self.cluster, overlap_seconds=overlap.total_seconds()),
            )
        except WorkflowAlreadyStartedError as err:
            raise CloudlessError(
                f"a CA rotation of cluster {self.cluster!r} is under way "
                f"({certs.ca_workflow_id(self.cluster)}); let it finish first"
            ) from err
        return certs.ca_workflow_id(self.cluster)

    async def ca_rotation(self) -> CARotationReport:
        """The cluster's last (or current) CA rotation: the result, or where it is."""
        handle = self.temporal.get_workflow_handle(
            certs.ca_workflow_id(self.cluster), result_type=CARotationReport
        )
        report: CARotationReport = await handle.result()
        return report

    async def audit(self, where: AuditFilter) -> AuditEntries:
        """The cluster's audit records matching ``where``, newest first: who called what
        through the coordinator's front, when, from where, and the outcome (denials
        included). Empty if nothing was recorded yet (the log starts with its first
        record)."""
        try:
            return await AuditHandle(self.temporal, self.cluster).entries(
                where, rpc_timeout=RPC_TIMEOUT
            )
        except RPCError as err:
            if gone(err):
                return AuditEntries()
            raise self._unanswered(err) from err

    async def list_nodes(self) -> list[LedgerNode]:
        return sorted((await self.snapshot()).nodes, key=lambda n: n.node_id)

    async def node_admin(
        self, node_id: str, action: AdminAction, reason: str = "", timeout: float = 3600.0
    ) -> NodeStatus:
        """Cordon, uncordon or drain a node; returns once done (a drain once it is empty)."""
        await self.describe_node(node_id)  # a clear NotFound first
        try:
            return await self.node(node_id).admin(
                NodeAdminInput(action=action, reason=reason),
                rpc_timeout=timedelta(seconds=timeout),
            )
        except WorkflowUpdateFailedError as err:
            raise _update_error(err) from err

    async def remove_node(
        self, node_id: str, reason: str = "", timeout: float = 3600.0
    ) -> NodeStatus:
        """Retire a node for good: its workloads replace its replicas elsewhere (nothing
        running elsewhere is stopped), what it held in the ledger is freed, whatever its
        agent still runs is stopped if it can be reached, and its certificate is revoked.
        The name may enroll again with a new token. Returns the node's final status."""
        return await self.node_admin(node_id, AdminAction.REMOVE, reason, timeout)

    async def describe_node(self, node_id: str) -> NodeDetails:
        nodes = {n.node_id: n for n in (await self.snapshot()).nodes}
        if node_id not in nodes:
            raise NotFoundError(
                f"node {node_id!r} not found; list nodes with `cloudlessctl get nodes`"
            )
        status = await self.node(node_id).describe(rpc_timeout=RPC_TIMEOUT)
        workloads = []
        for w in await self.list_workloads():
            if any(r.node_id == node_id for r in w.replicas):
                workloads.append(f"{w.namespace}/{w.name}")
        return NodeDetails(node=nodes[node_id], status=status, workloads=workloads)


async def apply_all(
    client: CloudlessClient, workloads: Sequence[Workload], *, wait: bool, timeout: float
) -> list[ApplyOutcome]:
    return [await client.apply(w, wait=wait, timeout=timeout) for w in workloads]
