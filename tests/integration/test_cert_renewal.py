"""Node certificates renew themselves (#11 item 5, the node part), on the real stack:
real Temporal, a coordinator, agents over mutual TLS (exec runtime).

Node certificates live a few seconds here, so every node renews many times while its
heartbeats, a workload and the coordinator's calls to it go on: no node leaves Ready, no
call from the coordinator to an agent fails (on its pooled channels and on fresh ones,
whose handshakes see each new certificate), and nothing enrolls again. A removed node's
renewal is refused, and an agent whose certificate expired is told how to enroll again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from temporalio.testing import WorkflowEnvironment

from agent.renewal import CertificateExpired, RenewalRefused
from cloudless.api import agent_pb2, agent_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from cloudless.client import CloudlessClient
from cloudless.model import NodeState
from cloudless.pki import cert_not_after, cert_serial, generate_private_key_pem, make_csr
from cloudless.testing.cluster import LocalCluster, exec_cluster
from cloudless.testing.workloads import sleeper
from cloudless.tls import GATEWAY_SERVER_NAME, TLSMaterial, secure_channel
from tests.conftest import unique

pytestmark = pytest.mark.temporal

#: Short enough for many renewals in a test, long enough for a loaded 2-core machine to
#: sign and switch well before expiry (renewal is due at ~4 s).
VALIDITY = timedelta(seconds=6)
RENEWALS = 5


@pytest.fixture(scope="module")
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    async with exec_cluster(
        temporal_env.client,
        "renew",
        heartbeat_ttl=3.0,
        suspect_grace=0.5,
        node_cert_validity=VALIDITY,
    ) as c:
        yield c


class Calls:
    """The coordinator calling agents while certificates change: over its own pooled
    channels (as activities do) and over a fresh channel each round (a new handshake,
    which must accept the agent's newest certificate)."""

    def __init__(self, cluster: LocalCluster, nodes: list[str]) -> None:
        self.cluster, self.nodes = cluster, nodes
        self.ok = 0
        self.failed: list[str] = []
        self.material = TLSMaterial.load(cluster.coordinator_dir)

    async def run(self, stop: asyncio.Event) -> None:
        pool = self.cluster.coordinator._pool  # type: ignore[attr-defined]
        while not stop.is_set():
            for name in self.nodes:
                address = self.cluster.agents[name].address
                try:
                    stub = await pool.stub(name, address)
                    info = await stub.NodeInfo(agent_pb2.NodeInfoRequest(), timeout=5)
                    assert info.node_id == name
                    await stub.ListReplicas(agent_pb2.ListReplicasRequest(), timeout=5)
                    async with secure_channel(
                        address, name, self.material.ca_pem, self.material
                    ) as fresh:
                        info = await agent_pb2_grpc.AgentServiceStub(fresh).NodeInfo(
                            agent_pb2.NodeInfoRequest(), timeout=5
                        )
                        assert info.node_id == name
                    self.ok += 1
                except grpc.aio.AioRpcError as err:
                    self.failed.append(f"{name}: {err.code().name} {err.details()}")
            # Pacing of the load, not a wait for an event.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.2)


async def test_nodes_renew_many_times_without_dropping_anything(cluster: LocalCluster) -> None:
    c = CloudlessClient(cluster.client, cluster.cluster)
    nodes = [unique("rn") for _ in range(2)]
    for i, name in enumerate(nodes):
        await cluster.add_agent(name, zone=f"zone-{i}", runtimes=["exec"])
    before = {n: (await c.describe_node(n)).status for n in nodes}
    first_serial = {n: cert_serial(cluster.agents[n].renewer.material.cert_pem) for n in nodes}
    workload = unique("steady")
    applied = await c.apply(sleeper(workload, 2), wait=True, timeout=60)
    assert applied.status is not None and applied.status.ready == 2

    stop = asyncio.Event()
    calls = Calls(cluster, nodes)
    calling = asyncio.create_task(calls.run(stop))
    try:
        # Halfway, the workload grows: the coordinator starts replicas on renewing nodes.
        await asyncio.gather(
            *(cluster.agents[n].renewer.wait_renewals(RENEWALS // 2) for n in nodes)
        )
        scaled = await c.scale("default", workload, 4)
        status = await c.wait("default", workload, scaled.generation, 60, all_ready=True)
        assert status.ready == 4
        await asyncio.wait_for(
            asyncio.gather(*(cluster.agents[n].renewer.wait_renewals(RENEWALS) for n in nodes)),
            timeout=VALIDITY.total_seconds() * (RENEWALS + 4),
        )
    finally:
        stop.set()
        await calling

    assert calls.failed == [] and calls.ok > 0, calls.failed
    for name in nodes:
        handle = cluster.agents[name]
        renewer, heartbeat = handle.renewer, handle.heartbeat
        assert renewer.failure is None and renewer.renewals >= RENEWALS
        # Each renewal's stream handover completes (after the renewal itself).
        await asyncio.wait_for(heartbeat.wait_handovers(RENEWALS), timeout=15)
        assert heartbeat.connected.is_set()
        # On disk: the current certificate, its key private.
        on_disk = TLSMaterial.load(handle.state_dir)
        assert on_disk.cert_pem == renewer.material.cert_pem
        assert cert_serial(on_disk.cert_pem) != first_serial[name]
        assert cert_not_after(on_disk.cert_pem) > datetime.now(UTC)
        # The node stayed Ready the whole time, and never enrolled again.
        details = await c.describe_node(name)
        assert details.node.state == NodeState.READY
        status_before, status_now = before[name], details.status
        assert status_before is not None and status_now is not None
        assert status_now.churn == [] and status_now.down_since is None
        states = [t.state for t in status_now.transitions]
        assert NodeState.SUSPECT not in states and NodeState.OFFLINE not in states, states
        assert status_now.record.enrolled_at == status_before.record.enrolled_at
        # The record follows the renewals (describe node shows the current expiry).
        assert status_now.record.certificate_serial != status_before.record.certificate_serial
        assert status_now.certificates, "renewed certificates are recorded for revocation"
    final = await c.workload_status("default", workload)
    assert final.ready == 4
    await c.delete("default", workload)


async def _renew_with(cluster: LocalCluster, material: TLSMaterial) -> grpc.aio.AioRpcError:
    async with secure_channel(
        cluster.agent_gateway, GATEWAY_SERVER_NAME, material.ca_pem, material
    ) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        csr = make_csr(generate_private_key_pem(), material.identity.name)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RenewCertificate(
                gateway_pb2.RenewCertificateRequest(csr_pem=csr), timeout=10
            )
    return err.value


async def test_a_removed_node_is_refused_renewal(cluster: LocalCluster) -> None:
    c = CloudlessClient(cluster.client, cluster.cluster)
    name = unique("gone")
    handle = await cluster.add_agent(name, runtimes=["exec"])
    await handle.renewer.wait_renewals(1)  # renewals worked for it
    material = handle.renewer.material
    await c.remove_node(name, reason="retired")

    refused = await _renew_with(cluster, material)
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"certificate of node {name!r} was revoked" in (refused.details() or "")
    # The agent's own renewer hears the same, stops, and says why.
    with pytest.raises(RenewalRefused, match="revoked"):
        await asyncio.wait_for(handle.renewer.wait_renewals(10**6), timeout=30)
    await cluster.stop_agent(name)


async def test_an_agent_whose_certificate_expired_is_told_to_enroll_again(
    cluster: LocalCluster,
) -> None:
    name = unique("late")
    handle = await cluster.add_agent(name, runtimes=["exec"])
    await cluster.stop_agent(name)
    expiry = cert_not_after(TLSMaterial.load(handle.state_dir).cert_pem)
    # The certificate's expiry is a time, not an event: wait for it.
    await asyncio.sleep(max(0.0, (expiry - datetime.now(UTC)).total_seconds()) + 0.5)
    with pytest.raises(CertificateExpired) as err:
        await cluster.restart_agent(name, wait_ready=False)
    assert f"cloudlessctl token create --node {name}" in str(err.value)
    # With a token bound to it, the agent enrolls again by itself, under its name.
    again = await cluster.add_agent(name, runtimes=["exec"], token=cluster.mint_token(name))
    assert again.state_dir == handle.state_dir
    assert cert_not_after(TLSMaterial.load(again.state_dir).cert_pem) > datetime.now(UTC)
    await cluster.stop_agent(name)


async def test_an_agent_back_after_its_renewal_point_renews_at_once(
    temporal_env: WorkflowEnvironment,
) -> None:
    """Off past the renewal point but back before the expiry: the agent renews as soon as
    it starts, with the certificate it has; it does not enroll again."""
    validity = timedelta(seconds=15)  # room for a stop and a start between 2/3 and expiry
    async with exec_cluster(
        temporal_env.client,
        "back",
        heartbeat_ttl=3.0,
        suspect_grace=0.5,
        node_cert_validity=validity,
    ) as c:
        client = CloudlessClient(c.client, c.cluster)
        name = unique("back")
        handle = await c.add_agent(name, runtimes=["exec"])
        first = (await client.describe_node(name)).status
        assert first is not None
        await c.stop_agent(name)
        old = TLSMaterial.load(handle.state_dir).cert_pem
        expiry = cert_not_after(old)
        # Past the latest renewal point (2/3 + 5 % of the lifetime): a time, not an event.
        due = expiry - validity * (1 - 2 / 3 - 0.05) + timedelta(milliseconds=200)
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
        assert datetime.now(UTC) < expiry
        back = await c.restart_agent(name)
        await asyncio.wait_for(back.renewer.wait_renewals(1), timeout=10)
        assert datetime.now(UTC) < expiry, "renewed only after the expiry"
        renewed = TLSMaterial.load(back.state_dir).cert_pem
        assert cert_serial(renewed) != cert_serial(old)
        assert cert_not_after(renewed) > expiry
        details = await client.describe_node(name)
        assert details.node.state == NodeState.READY
        assert details.status is not None
        assert details.status.record.enrolled_at == first.record.enrolled_at
