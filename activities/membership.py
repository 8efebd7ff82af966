"""Activities for membership changes: tell workloads a node is lost, and reconcile a
returning node's replicas against what the control plane wants there."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import grpc
from temporalio import activity
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.agent_client import AgentClientPool
from activities.agents import translate_rpc_error
from cloudless.api import agent_pb2
from cloudless.model import (
    NotifyWorkloadsInput,
    ReconcileNodeInput,
    ReconcileNodeResult,
    ReplicaPhase,
    ReplicasLost,
    WorkloadPhase,
    WorkloadStatus,
)
from cloudless.naming import cluster_workflow_id, workload_workflow_id


class MembershipActivities:
    def __init__(self, client: Client, pool: AgentClientPool, cluster: str) -> None:
        self._client = client
        self._pool = pool
        self._cluster = cluster

    async def _signal(self, workload: str, signal: ReplicasLost) -> bool:
        namespace, name = workload.split("/", 1)
        handle = self._client.get_workflow_handle(workload_workflow_id(namespace, name))
        try:
            await handle.signal("replicas_lost", signal)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False  # deleted meanwhile: nothing to reschedule
            raise
        return True

    @activity.defn(name="notify_workloads")
    async def notify_workloads(self, inp: NotifyWorkloadsInput) -> list[str]:
        """Signal every workload with replicas on the node; returns the ones told."""
        ledger = self._client.get_workflow_handle(cluster_workflow_id(self._cluster))
        workloads: list[str] = await ledger.query(
            "node_workloads", inp.node_id, result_type=list[str]
        )
        told = []
        for key in workloads:
            sig = ReplicasLost(node_id=inp.node_id, reason=inp.reason, evacuate=inp.evacuate)
            if await self._signal(key, sig):
                told.append(key)
            activity.heartbeat(key)
        return told

    @activity.defn(name="wait_node_empty")
    async def wait_node_empty(self, node_id: str) -> None:
        """Return once the ledger holds no replica on the node (a drain has finished).

        Polls the ledger (a cheap query) while heartbeating; a drain takes as long as its
        workloads need to place replacements, so there is no event to await here.
        """
        ledger = self._client.get_workflow_handle(cluster_workflow_id(self._cluster))
        while True:
            left: list[str] = await ledger.query("node_workloads", node_id, result_type=list[str])
            if not left:
                return
            activity.heartbeat(left)
            await asyncio.sleep(0.5)

    async def _assigned(
        self, workload: str, node_id: str
    ) -> tuple[dict[str, int], set[str]] | None:
        """Replica ids the workload places on the node (with their placement epochs), and
        those of them it believes Running; None if the workload is gone."""
        namespace, name = workload.split("/", 1)
        handle = self._client.get_workflow_handle(workload_workflow_id(namespace, name))
        try:
            status: WorkloadStatus = await handle.query("status", result_type=WorkloadStatus)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        if status.phase in (WorkloadPhase.DELETED,):
            return None
        here = [r for r in status.replicas if r.node_id == node_id]
        return (
            {r.replica_id: r.epoch for r in here},
            {r.replica_id for r in here if r.phase == ReplicaPhase.RUNNING},
        )

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
            running[f"{r.namespace}/{r.workload}"].add(r.replica_id)
        ledger = self._client.get_workflow_handle(cluster_workflow_id(self._cluster))
        placed_here: list[str] = (
            []
            if inp.fresh
            else await ledger.query("node_workloads", inp.node_id, result_type=list[str])
        )
        result = ReconcileNodeResult(kept=0)
        for workload in sorted(set(running) | set(placed_here)):
            found = await self._assigned(workload, inp.node_id)
            placed, believed_running = found if found else ({}, set())
            assigned = set(placed)
            have = running.get(workload, set())
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
                result.missing[workload] = missing
                await self._signal(
                    workload,
                    ReplicasLost(
                        node_id=inp.node_id,
                        reason=f"not running on {inp.node_id} when it reconnected",
                        replica_ids=missing,
                    ),
                )
            activity.heartbeat(workload)
        return result
