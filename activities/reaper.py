"""The reaper's side effects: gather what the ledger holds, what Temporal says of each
workload's workflow and what agents actually run; release and stop what
:mod:`policies.reaper` finds nobody owns.

Facts are gathered here, not in the workflow: at scale they are thousands of workflow
descriptions and replica listings, which would spend the reaper's history on data it
does not keep (the same reason placement decides in an activity). Everything is
bounded per run and idempotent: a reap releases only while the owner it judged still
holds the reservations, a stop of a replica that is gone is a no-op.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import TypeVar

import grpc
import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from activities.agent_client import AgentClientPool
from activities.agents import translate_rpc_error
from activities.ledger import LedgerBase
from cloudless.api import agent_pb2, agent_pb2_grpc
from cloudless.contracts import LedgerHandle, WorkloadHandle, gone, signal_unless_gone, workload
from cloudless.contracts.names import task_queue
from cloudless.model import (
    LedgerOp,
    NodeState,
    ReapedWorkload,
    ReapOrphansInput,
    ReapOrphansResult,
    ReapWorkloadInput,
    ReapWorkloadsInput,
    ReapWorkloadsResult,
    ReplicasLost,
    StoppedReplica,
    WorkloadStatus,
)
from policies import reaper as policy
from policies.membership import placed_here

log = structlog.get_logger("cloudless.reaper")

T = TypeVar("T")

#: Calls to Temporal or to agents one run has in flight at once.
CONCURRENCY = 16
#: A workflow that does not answer its status query within this long is not judged.
STATUS_TIMEOUT = timedelta(seconds=5)
LEDGER_TIMEOUT = timedelta(seconds=30)
#: An agent that does not list its replicas within this long is skipped this run.
LIST_TIMEOUT = 10.0
STOP_GRACE_SECONDS = 10.0


async def _bounded(calls: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return await asyncio.gather(*(one(c) for c in calls))


class ReaperActivities:
    """Bound to one cluster by the coordinator; ``ledger`` is its ledger activities (their
    batched writer and scheduler index). Remembers, in memory only, when it last looked
    at each workload and node, so bounded runs get round all of them in turn."""

    def __init__(
        self, client: Client, pool: AgentClientPool, cluster: str, ledger: LedgerBase
    ) -> None:
        self._client = client
        self._pool = pool
        self._cluster = cluster
        self._ledger = ledger
        self._handle = LedgerHandle(client, cluster)
        self._checked: dict[str, float] = {}
        self._inspected: dict[str, float] = {}

    # ------------------------------------------------------------------ facts

    async def _look(self, key: str) -> tuple[policy.WorkloadRun, WorkloadStatus | None] | None:
        """What Temporal says of the workload's workflow, and the running run's status
        (its replicas and owner token); None if it could not be learnt this time."""
        handle = WorkloadHandle.of(self._client, key)
        try:
            desc = await handle.handle.describe(rpc_timeout=STATUS_TIMEOUT)
        except RPCError as err:
            if gone(err):
                return policy.WorkloadRun(policy.RunStatus.ABSENT), None
            return None  # Temporal did not answer: not judged this time
        if desc.status != WorkflowExecutionStatus.RUNNING:
            name = desc.status.name.replace("_", " ").title() if desc.status else "unknown"
            return policy.WorkloadRun(policy.RunStatus.CLOSED, name), None
        if desc.task_queue != task_queue(self._cluster):
            return policy.WorkloadRun(policy.RunStatus.FOREIGN, desc.task_queue), None
        try:
            status = await handle.status(rpc_timeout=STATUS_TIMEOUT)
        except RPCError:
            return None  # gone meanwhile, or its workflow cannot answer: not judged
        return policy.WorkloadRun(policy.RunStatus.RUNNING, owner=status.owner), status

    # ------------------------------------------------------------------ reservations

    @activity.defn(name="reap_workloads")
    async def reap_workloads(self, inp: ReapWorkloadsInput) -> ReapWorkloadsResult:
        """Release the reservations whose owning workflow run is over."""
        owners = await self._handle.workload_owners(rpc_timeout=LEDGER_TIMEOUT)
        result = ReapWorkloadsResult(held=len(owners))
        keys = policy.least_recently_seen(owners, self._checked, inp.max_checks)
        runs: dict[str, policy.WorkloadRun | None] = {}

        async def check(key: str) -> None:
            found = await self._look(key)
            if found is not None:  # None: not judged; the key stays out of ``runs``
                runs[key] = found[0]
            self._checked[key] = time.monotonic()
            activity.heartbeat(len(runs))

        await _bounded([functools.partial(check, k) for k in keys])
        self._checked = {k: t for k, t in self._checked.items() if k in owners}
        result.checked = len(runs)
        held = [policy.HeldWorkload(k, owners[k]) for k in keys]
        for reap in policy.workloads_to_reap(held, runs, limit=inp.max_reaps):
            done = await self._ledger.writer.submit(
                LedgerOp(
                    reap=ReapWorkloadInput(workload=reap.key, owner=reap.owner, reason=reap.reason)
                )
            )
            outcome = done.reaped
            if outcome is None or not outcome.reaped:
                continue  # a newer run holds it now, or it went meanwhile
            self._ledger.scheduler.mark_stale()  # reservations left the index's view
            result.reaped.append(
                ReapedWorkload(
                    workload=reap.key,
                    owner=reap.owner,
                    reason=reap.reason,
                    replicas=outcome.replicas,
                    freed=outcome.freed,
                )
            )
            log.info(
                "reaper.reservations_released",
                workload=reap.key,
                owner=reap.owner,
                reason=reap.reason,
                replicas=sum(outcome.replicas.values()),
                nodes=sorted(outcome.replicas),
                cpu_millis=outcome.freed.cpu_millis,
                memory_bytes=outcome.freed.memory_bytes,
            )
            if outcome.woken:
                await self._ledger.wake(outcome.woken, f"reservations of {reap.key} were reaped")
            activity.heartbeat(len(result.reaped))
        return result

    # ------------------------------------------------------------------ replicas

    @activity.defn(name="reap_orphans")
    async def reap_orphans(self, inp: ReapOrphansInput) -> ReapOrphansResult:
        """Stop, on Ready nodes, the replicas no workload places where they run."""
        snap = await self._handle.snapshot(rpc_timeout=LEDGER_TIMEOUT)
        ready = {n.node_id: n.address for n in snap.nodes if n.state == NodeState.READY}
        picked = policy.least_recently_seen(ready, self._inspected, inp.max_nodes)
        result = ReapOrphansResult(nodes=len(picked))
        listed: dict[str, list[agent_pb2.ReplicaStatus]] = {}

        async def list_node(node_id: str) -> None:
            self._inspected[node_id] = time.monotonic()
            stub = await self._pool.stub(node_id, ready[node_id])
            try:
                # wait_for_ready: a channel still backing off from the agent's last outage
                # (the node is Ready again) connects instead of failing at once.
                reply = await stub.ListReplicas(
                    agent_pb2.ListReplicasRequest(), timeout=LIST_TIMEOUT, wait_for_ready=True
                )
            except grpc.aio.AioRpcError as err:
                result.errors[node_id] = str(translate_rpc_error(err, node_id))
                return
            listed[node_id] = list(reply.replicas)

        # Agents first, workflows after: a workflow records a placement before it starts
        # the replica, so whatever an agent listed is in its workload's answer below
        # unless the workload let go of it.
        await _bounded([functools.partial(list_node, n) for n in picked])
        self._inspected = {n: t for n, t in self._inspected.items() if n in ready}
        keys = {workload.key(r.namespace, r.workload) for rs in listed.values() for r in rs}
        statuses: dict[str, WorkloadStatus | None] = {}

        async def learn(key: str) -> None:
            found = await self._look(key)
            if found is not None:  # else not judged: none of its replicas is touched
                statuses[key] = found[1]

        await _bounded([functools.partial(learn, k) for k in sorted(keys)])
        now = time.time()
        for node_id in sorted(listed):
            stub = await self._pool.stub(node_id, ready[node_id])
            await self._stop_orphans(stub, node_id, listed[node_id], statuses, now, inp, result)
            activity.heartbeat(node_id)
        return result

    async def _stop_orphans(
        self,
        stub: agent_pb2_grpc.AgentServiceStub,
        node_id: str,
        replicas: list[agent_pb2.ReplicaStatus],
        statuses: dict[str, WorkloadStatus | None],
        now: float,
        inp: ReapOrphansInput,
        result: ReapOrphansResult,
    ) -> None:
        assigned: dict[str, dict[str, int] | None] = {}
        for key, status in statuses.items():
            # Not a lost or preempted record: released and replaced, though it names the
            # node until the workload's next pass (as a node's reconcile judges it).
            assigned[key] = None if status is None else placed_here(status.replicas, node_id).epochs
        orphans = policy.orphaned_replicas(
            [
                policy.AgentReplica(
                    r.replica_id,
                    workload.key(r.namespace, r.workload),
                    epoch=r.epoch,
                    started_at=r.started_at,
                )
                for r in replicas
            ],
            assigned,
            now=now,
            grace=inp.grace_seconds,
        )
        lost: dict[str, list[str]] = {}
        for o in orphans:
            try:
                await stub.StopReplica(
                    agent_pb2.StopReplicaRequest(
                        replica_id=o.replica_id, grace_seconds=STOP_GRACE_SECONDS, epoch=o.epoch
                    ),
                    timeout=STOP_GRACE_SECONDS + 30,
                )
            except grpc.aio.AioRpcError as err:
                result.errors[node_id] = str(translate_rpc_error(err, node_id))
                continue
            result.stopped.append(
                StoppedReplica(
                    node_id=node_id, replica_id=o.replica_id, workload=o.workload, reason=o.kind
                )
            )
            log.info(
                "reaper.replica_stopped",
                node=node_id,
                replica=o.replica_id,
                workload=o.workload,
                reason=o.kind.value,
            )
            if o.kind == policy.OrphanKind.OLDER_PLACEMENT:
                lost.setdefault(o.workload, []).append(o.replica_id)
        for key, ids in lost.items():
            # The workload believes its newer placement runs here: tell it it does not.
            await signal_unless_gone(
                WorkloadHandle.of(self._client, key).handle,
                workload.REPLICAS_LOST,
                ReplicasLost(
                    node_id=node_id,
                    reason=f"{node_id} ran an older placement of it (stopped by the reaper)",
                    replica_ids=ids,
                ),
                attempts=3,
            )
