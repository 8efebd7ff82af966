"""Placement epochs end to end: the workload numbers each placement, agents refuse stale
RunReplicas over real gRPC/mTLS, and reconciling a returning node stops a run older than
the control plane's record. Real Temporal, real agents, real processes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.membership import MembershipActivities
from cloudless.api import agent_pb2
from cloudless.client import CloudlessClient
from cloudless.model import NodeState, ReconcileNodeInput, ReplicaPhase, WorkloadStatus
from cloudless.spec import parse_workload
from cloudless.testing.cluster import LocalCluster, exec_cluster
from cloudless.workloads import replica_spec_proto
from tests.conftest import unique

pytestmark = pytest.mark.temporal


@pytest.fixture
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    suffix = uuid.uuid4().hex[:6]
    # A long grace: the agent restart below comes back from Suspect, not Offline.
    async with exec_cluster(
        temporal_env.client, "e", suffix=suffix, heartbeat_ttl=60.0, suspect_grace=60.0
    ) as c:
        await c.add_agent(f"epoch-{suffix}", runtimes=["exec"])
        yield c


def sleeper(name: str, replicas: int) -> dict[str, Any]:
    return parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "runtime": "exec",
                "container": {"command": ["sleep", "3600"]},
                "resources": {"cpu": "10m", "memory": "8Mi"},
            },
        }
    ).to_manifest()


async def test_epochs_are_numbered_refused_when_stale_and_reconciled(
    cluster: LocalCluster,
) -> None:
    client = CloudlessClient(cluster.client, cluster.cluster)
    name = unique("ep")
    manifest = parse_workload(sleeper(name, 2))
    outcome = await client.apply(manifest, wait=True, timeout=60)
    status = outcome.status
    assert status is not None and status.ready == 2
    epochs = sorted(r.epoch for r in status.replicas)
    assert epochs == [1, 2] and status.epoch == 2  # one per placement, only growing

    (node,) = cluster.agents
    address = cluster.agents[node].address
    pool = cast(Any, cluster.coordinator)._pool
    stub = await pool.stub(node, address)
    newest = max(status.replicas, key=lambda r: r.epoch)
    rid = newest.replica_id

    # The agent reports what it runs with its epoch.
    listed = await stub.ListReplicas(agent_pb2.ListReplicasRequest(workload=name))
    assert {r.replica_id: r.epoch for r in listed.replicas} == {
        r.replica_id: r.epoch for r in status.replicas
    }

    def run(epoch: int) -> Any:
        spec = replica_spec_proto(
            manifest,
            replica_id=rid,
            generation=newest.generation,
            spec_hash=newest.spec_hash,
            epoch=epoch,
        )
        return stub.RunReplica(agent_pb2.RunReplicaRequest(spec=spec))

    same = await run(2)  # a retry of the same placement stays idempotent
    assert same.status.phase == "Running"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await run(1)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.value.details() or ""
    assert f"replica {rid}: this RunReplica carries placement epoch 1" in details
    assert "already accepted epoch 2" in details and "stale" in details

    # The refusal survives an agent restart (the epochs are on disk).
    await cluster.kill_agent(node)
    # Await Suspect in the ledger first: until then it still says Ready from before the
    # kill, and awaiting "Ready" below would return before the node came back.
    suspect = await client.wait_node(node, [NodeState.SUSPECT], timeout=30)
    assert suspect is not None and suspect.state == NodeState.SUSPECT, suspect
    # Meanwhile the node's own records say it runs an older placement of the replica
    # (what a node that missed a re-placement comes back with).
    desired_file = cluster.root / "agents" / node / "desired.json"
    desired = json.loads(desired_file.read_text())
    for item in desired:
        if item["spec"]["replica_id"] == rid:
            item["spec"]["epoch"] = 1
    desired_file.write_text(json.dumps(desired))
    # Back from Suspect (the long grace), the node is reconciled before it is Ready: the
    # run of the older placement is stopped, though the workload still places that replica
    # id on this node (only the epochs tell them apart), and reported missing.
    await cluster.restart_agent(node)
    stub = await pool.stub(node, address)
    listed = await stub.ListReplicas(agent_pb2.ListReplicasRequest(workload=name))
    assert rid not in {r.replica_id for r in listed.replicas}
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await run(1)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # Reconciling again finds no stale run left to stop.
    membership = MembershipActivities(cluster.client, pool, cluster.cluster)
    result = await ActivityEnvironment().run(
        membership.reconcile_node,
        ReconcileNodeInput(node_id=node, address=address, cluster=cluster.cluster),
    )
    assert result.stale_epochs == [] and rid not in result.stopped

    # The workload replaces it with a new replica and a newer epoch.
    async def replaced() -> WorkloadStatus:
        while True:
            s = await client.workload_status("default", name)
            ids = {r.replica_id for r in s.replicas}
            if rid not in ids and s.ready == 2:
                return s
            await asyncio.sleep(0.2)

    async with asyncio.timeout(60):
        final = await replaced()
    assert all(r.phase == ReplicaPhase.RUNNING for r in final.replicas)
    assert max(r.epoch for r in final.replicas) == 3 == final.epoch

    # Stops carry the epoch: a start that arrives after the delete cannot resurrect it.
    await client.delete("default", name, wait=True)
    victim = final.replicas[0]
    late = replica_spec_proto(
        manifest,
        replica_id=victim.replica_id,
        generation=victim.generation,
        spec_hash=victim.spec_hash,
        epoch=victim.epoch,
    )
    with pytest.raises(grpc.aio.AioRpcError) as fenced:
        await stub.RunReplica(agent_pb2.RunReplicaRequest(spec=late))
    assert fenced.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "which the control plane already stopped" in (fenced.value.details() or "")
    listed = await stub.ListReplicas(agent_pb2.ListReplicasRequest(workload=name))
    assert not listed.replicas
