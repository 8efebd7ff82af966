"""Activities for membership changes: tell workloads a node is lost, reconcile a node's
replicas against what the control plane wants there, ask a node to do so, retire a
removed node, and find what an ended workload run left on the cluster (for the run that
tears it down)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import timedelta

import grpc
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from activities.agent_client import AgentClientPool
from activities.agents import translate_rpc_error
from cloudless.api import agent_pb2, agent_pb2_grpc
from cloudless.contracts import (
    LedgerHandle,
    NodeHandle,
    WorkloadHandle,
    gone,
    signal_unless_gone,
    workload,
)
from cloudless.contracts import node as node_contract
from cloudless.contracts.names import task_queue
from cloudless.contracts.stuck import workflow_task_failure
from cloudless.model import (
    Leftovers,
    LeftoversInput,
    NodeState,
    NotifyWorkloadsInput,
    ReconcileNodeInput,
    ReconcileNodeResult,
    ReconcileRequest,
    ReplicaPhase,
    ReplicaRecord,
    ReplicasLost,
    RetireNodeInput,
    WorkloadPhase,
)
from policies.membership import PlacedHere, placed_here

#: How long one workload's status query may take while a node is reconciled.
STATUS_TIMEOUT = timedelta(seconds=10)


class _Unanswered:
    """A workload whose workflow cannot answer (its workflow task fails), and why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class MembershipActivities:
    def __init__(self, client: Client, pool: AgentClientPool, cluster: str) -> None:
        self._client = client
        self._pool = pool
        self._cluster = cluster
        self._ledger = LedgerHandle(client, cluster)

    async def _signal(self, key: str, signal: ReplicasLost) -> bool:
        """Tell the workload; False if it was deleted meanwhile (nothing to reschedule)."""
        handle = WorkloadHandle.of(self._client, key).handle
        return await signal_unless_gone(handle, workload.REPLICAS_LOST, signal)

    @activity.defn(name="notify_workloads")
    async def notify_workloads(self, inp: NotifyWorkloadsInput) -> list[str]:
        """Signal every workload with replicas on the node; returns the ones told."""
        workloads = await self._ledger.node_workloads(inp.node_id)
        told = []
        for key in workloads:
            sig = ReplicasLost(node_id=inp.node_id, reason=inp.reason, evacuate=inp.evacuate)
            if await self._signal(key, sig):
                told.append(key)
            activity.heartbeat(key)
        return told

    @activity.defn(name="request_reconcile")
    async def request_reconcile(self, req: ReconcileRequest) -> bool:
        """Ask ``node/<id>`` to reconcile (a workload gave up stopping replicas there);
        False if the node is gone."""
        handle = NodeHandle(self._client, req.node_id).handle
        return await signal_unless_gone(handle, node_contract.RECONCILE, req)

    @activity.defn(name="wait_node_empty")
    async def wait_node_empty(self, node_id: str) -> None:
        """Return once the ledger holds no replica on the node (a drain has finished).

        Polls the ledger (a cheap query) while heartbeating; a drain takes as long as its
        workloads need to place replacements, so there is no event to await here.
        """
        while True:
            left = await self._ledger.node_workloads(node_id)
            if not left:
                return
            activity.heartbeat(left)
            await asyncio.sleep(0.5)

    async def _running(self, key: str) -> bool:
        """Whether the workload's workflow runs (for this cluster): it can still release."""
        try:
            desc = await WorkloadHandle.of(self._client, key).handle.describe()
        except RPCError as err:
            if gone(err):
                return False
            raise
        return desc.status == WorkflowExecutionStatus.RUNNING and desc.task_queue == task_queue(
            self._cluster
        )

    @activity.defn(name="wait_node_released")
    async def wait_node_released(self, node_id: str) -> list[str]:
        """Return once no running workload holds reservations on the node any more (they
        were told it was removed and release as they replace). Returns the workloads still
        listed there, whose workflows are over: the node's removal frees what they held."""
        while True:
            left = await self._ledger.node_workloads(node_id)
            live = [key for key in left if await self._running(key)]
            if not live:
                return left
            activity.heartbeat(live)
            await asyncio.sleep(0.5)

    @activity.defn(name="retire_node")
    async def retire_node(self, inp: RetireNodeInput) -> list[str]:
        """Stop everything a removed node's agent still runs, if it can be reached: its
        workloads have replaced those replicas elsewhere. Returns the replicas stopped."""
        stub = await self._pool.stub(inp.node_id, inp.address)
        try:
            listed = await stub.ListReplicas(agent_pb2.ListReplicasRequest(), timeout=10)
        except grpc.aio.AioRpcError as err:
            raise translate_rpc_error(err, inp.node_id) from err
        stopped = []
        for r in listed.replicas:
            try:
                await stub.StopReplica(
                    agent_pb2.StopReplicaRequest(
                        replica_id=r.replica_id, grace_seconds=10, epoch=r.epoch
                    ),
                    timeout=40,
                )
            except grpc.aio.AioRpcError as err:
                raise translate_rpc_error(err, inp.node_id) from err
            stopped.append(r.replica_id)
            activity.heartbeat(len(stopped))
        return stopped

    async def _assigned(self, key: str, node_id: str) -> PlacedHere | _Unanswered | None:
        """What the workload places on the node (``policies.membership.placed_here``);
        None if the workload is gone; ``_Unanswered`` if its workflow task fails (it
        answers nothing until someone fixes or deletes it).

        Any other failure (a timeout, Temporal busy) is raised: the activity retries.
        """
        handle = WorkloadHandle.of(self._client, key)
        try:
            status = await handle.status(rpc_timeout=STATUS_TIMEOUT)
        except RPCError as err:
            if gone(err):
                return None
            failing = await workflow_task_failure(
                self._client, handle.id, rpc_timeout=STATUS_TIMEOUT
            )
            if failing is None:
                raise
            return _Unanswered(failing.message())
        if status.phase in (WorkloadPhase.DELETED,):
            return None
        return placed_here(status.replicas, node_id)

    @activity.defn(name="reconcile_node")
    async def reconcile_node(self, inp: ReconcileNodeInput) -> ReconcileNodeResult:
        """Stop what runs on the node but is no longer placed there; report what is placed
        there but does not run, so the workload replaces it. Runs before the node is Ready
        again, so no replica id ever runs on two nodes after reconciliation."""
        stub = await self._pool.stub(inp.node_id, inp.address)
        try:
            listed = await stub.ListReplicas(agent_pb2.ListReplicasRequest(), timeout=15)
        except grpc.aio.AioRpcError as err:
            raise translate_rpc_error(err, inp.node_id) from err
        running: dict[str, set[str]] = defaultdict(set)
        epochs = {r.replica_id: r.epoch for r in listed.replicas}
        for r in listed.replicas:
            running[workload.key(r.namespace, r.workload)].add(r.replica_id)
        in_ledger = [] if inp.fresh else await self._ledger.node_workloads(inp.node_id)
        result = ReconcileNodeResult(kept=0)
        for key in sorted(set(running) | set(in_ledger)):
            found = await self._assigned(key, inp.node_id)
            if isinstance(found, _Unanswered):
                # Nothing can say where its replicas belong: leave them as they are (the
                # ledger still holds them here) rather than keep the node from Ready, which
                # would strand every other workload's replicas on it too.
                result.unanswered[key] = found.reason
                result.kept += len(running.get(key, ()))
                activity.logger.warning(
                    "%s: left %d replica(s) of %s as they are: %s",
                    inp.node_id,
                    len(running.get(key, ())),
                    key,
                    found.reason,
                )
                activity.heartbeat(key)
                continue
            here = found or PlacedHere({}, frozenset())
            placed, believed_running = here.epochs, here.running
            assigned = set(placed)
            have = running.get(key, set())
            # A run older than the placement the control plane recorded (the replica was
            # placed again meanwhile) is stale too; 0 means "unknown" (older software).
            older = {rid for rid in have & assigned if 0 < epochs[rid] < placed[rid]}
            result.stale_epochs.extend(sorted(older))
            for rid in sorted((have - assigned) | older):
                try:
                    await stub.StopReplica(
                        agent_pb2.StopReplicaRequest(replica_id=rid, grace_seconds=10), timeout=40
                    )
                except grpc.aio.AioRpcError as err:
                    raise translate_rpc_error(err, inp.node_id) from err
                result.stopped.append(rid)
            have -= older
            result.kept += len(have & assigned)
            # Only replicas believed Running: one still starting may not exist here yet.
            missing = sorted(believed_running - have)
            if missing:
                # The listing came before the workload's answer: a replica that started
                # in between is believed Running but was not listed. Only what a second
                # listing, made after the answer, still lacks is lost.
                missing = await self._still_absent(stub, inp.node_id, key, missing)
            if missing:
                result.missing[key] = missing
                await self._signal(
                    key,
                    ReplicasLost(
                        node_id=inp.node_id,
                        reason=f"not running on {inp.node_id} when it reconnected",
                        replica_ids=missing,
                    ),
                )
            activity.heartbeat(key)
        return result

    async def _still_absent(
        self,
        stub: agent_pb2_grpc.AgentServiceStub,
        node_id: str,
        key: str,
        candidates: list[str],
    ) -> list[str]:
        """``candidates`` (of workload ``key``) that the node does not run now."""
        namespace, name = workload.split_key(key)
        try:
            listed = await stub.ListReplicas(
                agent_pb2.ListReplicasRequest(namespace=namespace, workload=name), timeout=15
            )
        except grpc.aio.AioRpcError as err:
            raise translate_rpc_error(err, node_id) from err
        now = {r.replica_id for r in listed.replicas}
        return [rid for rid in candidates if rid not in now]

    @activity.defn(name="find_leftovers")
    async def find_leftovers(self, inp: LeftoversInput) -> Leftovers:
        """The replicas ended runs of a workload left running: asked of the agents of every
        node the ledger still holds the workload on (before the teardown run's claim
        releases those reservations). Each comes back as a record to stop and not release
        (the claim frees the ledger). Nodes whose agent does not answer keep their replicas
        until they return: reconciling the node then stops what no workload places there.
        """
        key = workload.key(inp.namespace, inp.name)
        snapshot = await self._ledger.snapshot()
        out = Leftovers()
        for node in snapshot.nodes:
            if not node.workloads.get(key, 0):
                continue
            if not node.address or node.state in (NodeState.OFFLINE, NodeState.LEFT):
                out.unreachable.append(node.node_id)
                continue
            try:
                stub = await self._pool.stub(node.node_id, node.address)
                listed = await stub.ListReplicas(
                    agent_pb2.ListReplicasRequest(namespace=inp.namespace, workload=inp.name),
                    timeout=15,
                )
            except grpc.aio.AioRpcError as err:
                activity.logger.warning("find_leftovers: %s: %s", node.node_id, err.details())
                out.unreachable.append(node.node_id)
                continue
            for r in listed.replicas:
                out.replicas.append(
                    ReplicaRecord(
                        replica_id=r.replica_id,
                        generation=0,
                        spec_hash="",
                        phase=ReplicaPhase.RUNNING,
                        node_id=node.node_id,
                        address=node.address,
                        epoch=r.epoch,
                        released=True,  # the claim frees the ledger: stop only
                        message="left by an ended run",
                    )
                )
            activity.heartbeat(node.node_id)
        return out
