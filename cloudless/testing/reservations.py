"""The ledger equation, checked against a real cluster.

For every node, what the ledger (``cluster/<name>``) reserves equals the sum of the
requests of the live replicas assigned to it: those the *running* workload workflows
hold there (placed, not yet released, not preempted). And every agent runs exactly the
replicas those workflows have Running on its node. :func:`ledger_mismatches` and
:func:`agent_mismatches` list every way a cluster differs; empty lists mean both hold.
Meant for a quiescent cluster (nothing being applied, started or moved).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from cloudless.api import agent_pb2, agent_pb2_grpc
from cloudless.client import CloudlessClient
from cloudless.contracts import WorkloadHandle, gone
from cloudless.contracts.names import task_queue
from cloudless.model import ReplicaPhase, ReplicaRecord, Resources, WorkloadStatus
from cloudless.testing.cluster import LocalCluster
from cloudless.tls import TLSMaterial, secure_channel


def holds_reservation(r: ReplicaRecord) -> bool:
    """Whether a replica record of a running workload holds its node's room."""
    return bool(r.node_id) and not r.released and not r.preempted


async def live_workloads(cluster: LocalCluster, keys: Iterable[str]) -> dict[str, WorkloadStatus]:
    """The status of each of ``keys`` (and of every workload the ledger holds room for)
    whose workflow runs for this cluster."""
    c = CloudlessClient(cluster.client, cluster.cluster)
    candidates = set(keys) | set(await c.ledger.workload_owners())
    out: dict[str, WorkloadStatus] = {}
    for key in sorted(candidates):
        handle = WorkloadHandle.of(cluster.client, key)
        try:
            desc = await handle.handle.describe()
        except RPCError as err:
            if gone(err):
                continue
            raise
        if desc.status != WorkflowExecutionStatus.RUNNING:
            continue
        if desc.task_queue != task_queue(cluster.cluster):
            continue
        out[key] = await handle.status()
    return out


async def ledger_mismatches(cluster: LocalCluster, keys: Iterable[str] = ()) -> list[str]:
    """How the ledger's reservations differ from what live replicas request, per node."""
    c = CloudlessClient(cluster.client, cluster.cluster)
    live = await live_workloads(cluster, keys)
    want: dict[str, Resources] = defaultdict(Resources)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for key, status in live.items():
        for r in status.replicas:
            if holds_reservation(r):
                want[r.node_id] = want[r.node_id] + r.resources
                counts[r.node_id][key] = counts[r.node_id].get(key, 0) + 1
    snap = await c.snapshot()
    problems = []
    for n in snap.nodes:
        if n.allocated != want.get(n.node_id, Resources()):
            problems.append(
                f"{n.node_id}: ledger reserves {n.allocated}, live replicas request "
                f"{want.get(n.node_id, Resources())}"
            )
        if n.workloads != counts.get(n.node_id, {}):
            problems.append(
                f"{n.node_id}: ledger counts {n.workloads}, live replicas "
                f"{counts.get(n.node_id, {})}"
            )
    listed = {n.node_id for n in snap.nodes}
    for node_id in sorted(set(want) - listed):
        problems.append(f"{node_id}: live replicas request {want[node_id]}, the ledger has no node")
    return problems


async def running_replicas(cluster: LocalCluster) -> dict[str, set[str]]:
    """node -> replica ids its agent reports Running (every started agent is asked)."""
    material = TLSMaterial.load(cluster.coordinator_dir)
    out: dict[str, set[str]] = {}
    for name, handle in list(cluster.agents.items()):
        async with secure_channel(handle.address, name, material.ca_pem, material) as ch:
            listed = await agent_pb2_grpc.AgentServiceStub(ch).ListReplicas(
                agent_pb2.ListReplicasRequest(), timeout=10
            )
        out[name] = {r.replica_id for r in listed.replicas if r.phase == ReplicaPhase.RUNNING}
    return out


async def agent_mismatches(cluster: LocalCluster, keys: Iterable[str] = ()) -> list[str]:
    """How what the started agents run differs from what live workloads have Running
    there (a replica of a workload that is not live must not run at all)."""
    live = await live_workloads(cluster, keys)
    want: dict[str, set[str]] = defaultdict(set)
    for status in live.values():
        for r in status.replicas:
            if holds_reservation(r) and r.phase == ReplicaPhase.RUNNING:
                want[r.node_id].add(r.replica_id)
    problems = []
    for node_id, running in sorted((await running_replicas(cluster)).items()):
        extra, missing = running - want.get(node_id, set()), want.get(node_id, set()) - running
        if extra:
            problems.append(f"{node_id} runs {sorted(extra)}, which no live workload places there")
        if missing:
            problems.append(f"{node_id} does not run {sorted(missing)}, which live workloads do")
    return problems


__all__ = [
    "agent_mismatches",
    "holds_reservation",
    "ledger_mismatches",
    "live_workloads",
    "running_replicas",
]
