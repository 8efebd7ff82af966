"""``cloudlessctl node remove``: a node retired for good has its replicas replaced on other
nodes (nothing running elsewhere is stopped), its reservations freed, whatever its agent
still runs stopped, and its certificate refused from then on; the name enrolls again
with a new token. Real Temporal, real agents over mTLS (exec runtime)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import grpc
import pytest
from temporalio.testing import WorkflowEnvironment

from cloudless.api import gateway_pb2, gateway_pb2_grpc
from cloudless.client import CloudlessClient
from cloudless.errors import NotFoundError
from cloudless.model import NodeState
from cloudless.testing.cli import ctl
from cloudless.testing.cluster import LocalCluster, exec_cluster
from cloudless.testing.reservations import agent_mismatches, ledger_mismatches, running_replicas
from cloudless.testing.workloads import sleeper
from cloudless.tls import GATEWAY_SERVER_NAME, TLSMaterial, secure_channel
from tests.conftest import unique

pytestmark = pytest.mark.temporal


@pytest.fixture(scope="module")
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    async with exec_cluster(
        temporal_env.client,
        "rm",
        agents=3,
        agent_prefix="m",
        heartbeat_ttl=3.0,
        suspect_grace=0.5,
    ) as c:
        yield c


async def _heartbeat_refusal(cluster: LocalCluster, material: TLSMaterial) -> str:
    """Open a heartbeat stream with ``material``; the gateway's refusal, or '' if none.

    (An accepted stream would stand in for the node's own agent: only for refused ones.)"""
    async with secure_channel(
        cluster.agent_gateway, GATEWAY_SERVER_NAME, material.ca_pem, material
    ) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def beats() -> AsyncIterator[gateway_pb2.HeartbeatRequest]:
            yield gateway_pb2.HeartbeatRequest(seq=1)

        try:
            async for _ in stub.Heartbeat(beats(), timeout=10):
                return ""
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err
            return err.details() or ""
    return ""


async def test_a_removed_ready_node_is_retired_and_its_name_enrolls_again(
    cluster: LocalCluster,
) -> None:
    c = CloudlessClient(cluster.client, cluster.cluster)
    moving, staying = unique("move"), unique("stay")
    first = await c.apply(sleeper(moving, 3), wait=True, timeout=60)
    assert first.status is not None and first.status.ready == 3
    await c.apply(sleeper(staying, 2), wait=True, timeout=60)
    keys = [f"default/{moving}", f"default/{staying}"]
    victim = first.status.replicas[0].node_id
    on_victim = {r.replica_id for r in first.status.replicas if r.node_id == victim}
    before = await running_replicas(cluster)
    elsewhere = {n: ids for n, ids in before.items() if n != victim}
    material = TLSMaterial.load(cluster.agents[victim].state_dir)

    # Without --yes the CLI refuses and removes nothing.
    refused = await ctl(cluster, "node", "remove", victim)
    assert refused.exit_code != 0 and "--yes" in refused.output
    assert (await c.describe_node(victim)).node.state == NodeState.READY

    status = await c.remove_node(victim, reason="the device was sold")
    assert status.state == NodeState.REMOVED
    assert status.transitions[-1].reason == "the device was sold"
    with pytest.raises(NotFoundError):
        await c.describe_node(victim)
    # Its replicas run elsewhere now; nothing that ran elsewhere was stopped.
    settled = await c.wait("default", moving, first.generation, 60, all_ready=True)
    assert settled.ready == 3 and all(r.node_id != victim for r in settled.replicas)
    assert not on_victim & {r.replica_id for r in settled.replicas}
    after = await running_replicas(cluster)
    for node_id, ids in elsewhere.items():
        assert ids <= after[node_id], (node_id, ids, after[node_id])
    assert after[victim] == set()  # its agent was reachable: what it ran was stopped
    assert await ledger_mismatches(cluster, keys) == []
    assert await agent_mismatches(cluster, keys) == []

    # The removed node's certificate is refused, also on a fresh stream.
    refusal = await _heartbeat_refusal(cluster, material)
    assert f"certificate of node {victim!r} was revoked" in refusal

    # The device enrolls again under its name with a new token (and a new certificate).
    await cluster.stop_agent(victim)
    shutil.rmtree(cluster.root / "agents" / victim)
    again = await cluster.add_agent(victim, zone="zone-9", runtimes=["exec"])
    await asyncio.wait_for(again.heartbeat.connected.wait(), timeout=15)
    assert TLSMaterial.load(again.state_dir).cert_pem != material.cert_pem
    details = await c.describe_node(victim)
    assert details.node.state == NodeState.READY and details.node.zone == "zone-9"
    assert details.status is not None and details.status.record.certificate_serial
    # The reaper finds nothing left to do: no leak, no ghost.
    report = await c.reap(grace_seconds=0)
    assert report.workloads.reaped == [] and report.orphans.stopped == [], report
    for key in keys:
        await c.delete(*key.split("/"))


async def test_removing_an_offline_node_frees_what_it_held(cluster: LocalCluster) -> None:
    c = CloudlessClient(cluster.client, cluster.cluster)
    name = unique("off")
    first = await c.apply(sleeper(name, 2), wait=True, timeout=60)
    assert first.status is not None and first.status.ready == 2
    victim = first.status.replicas[0].node_id
    await cluster.kill_agent(victim)
    node = await c.wait_node(victim, [NodeState.OFFLINE], timeout=20)
    assert node is not None and node.state == NodeState.OFFLINE

    result = await ctl(cluster, "node", "remove", victim, "--yes")
    assert result.exit_code == 0, result.output
    assert f"node/{victim} removed" in result.output
    assert victim not in {n.node_id for n in (await c.snapshot()).nodes}
    await c.wait("default", name, first.generation, 60, all_ready=True, avoid_node=victim)
    assert await ledger_mismatches(cluster, [f"default/{name}"]) == []
    assert await agent_mismatches(cluster, [f"default/{name}"]) == []
    await c.delete("default", name)
