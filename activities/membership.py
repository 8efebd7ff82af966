"""Activities for membership changes: tell workloads a node is lost, reconcile a node's
replicas against what the control plane wants there, ask a node to do so, and retire a
removed node."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import grpc
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from activities.agent_client import AgentClientPool
from activities.agents import translate_rpc_error
from cloudless.api import agent_pb2
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
from cloudless.model import (
    NotifyWorkloadsInput,
    ReconcileNodeInput,
    ReconcileNodeResult,
    ReconcileRequest,
    ReplicasLost,
    RetireNodeInput,
    WorkloadPhase,
)
from policies.membership import PlacedHere, placed_here


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

    async def _assigned(self, key: str, node_id: str) -> PlacedHere | None:
        """What the workload places on the node (``policies.membership.placed_here``);
        None if the workload is gone."""
        try:
            status = await WorkloadHandle.of(self._client, key).status()
        except RPCError as err:
            if gone(err):
                return None
            raise
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
            found = await self._assigned(key, inp.node_id) or PlacedHere({}, frozenset())
            placed, believed_running = found.epochs, found.running
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
