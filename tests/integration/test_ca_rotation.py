"""The cluster CA rotates through an overlap while the cluster works (issue #11, item 5),
against the real Temporal dev server, real agents and mutual TLS.

Node certificates live 12 seconds and the overlap is 13, so every node renews in each
overlap: first it learns the bundle of both CAs (the old one still issuing), then it gets
a certificate of the new CA. Through it all both nodes stay Ready and a workload keeps
running; afterwards the coordinator and every node hold new-CA certificates, a certificate
of the old CA is refused, and a new node enrolls with a new token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import cast

import grpc
import pytest
from temporalio.testing import WorkflowEnvironment

from cloudless.api import gateway_pb2, gateway_pb2_grpc
from cloudless.client import CloudlessClient
from cloudless.errors import PKIError
from cloudless.model import NodeState
from cloudless.pki import CertificateAuthority, Identity, load_trust_bundle, verify_issued_by
from cloudless.pki.rotation import CAStage, stage, trust_bundle
from cloudless.testing.cluster import LocalCluster, exec_cluster
from cloudless.testing.workloads import sleeper
from cloudless.tls import GATEWAY_SERVER_NAME, TLSMaterial, secure_channel
from tests.conftest import unique
from workers.coordinator import Coordinator

pytestmark = pytest.mark.temporal

NODE_VALIDITY = timedelta(seconds=12)
OVERLAP = timedelta(seconds=13)


@pytest.fixture
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    async with exec_cluster(
        temporal_env.client, "carot", agents=2, node_cert_validity=NODE_VALIDITY
    ) as c:
        yield c


async def test_the_ca_rotates_while_the_cluster_works(cluster: LocalCluster) -> None:
    client = CloudlessClient(cluster.client, cluster.cluster)
    coordinator = cast(Coordinator, cluster.coordinator)
    assert coordinator.certificates is not None
    directory = cluster.coordinator_dir
    old = CertificateAuthority.load(directory)
    old_node_key, old_node_cert = old.issue(
        Identity(cluster.cluster, "node", cluster.agent_names[0]), dns_names=["x"]
    )
    name = unique("carot")
    applied = await client.apply(sleeper(name, 2), wait=True, timeout=60)
    assert applied.status is not None and applied.status.ready == 2

    await client.rotate_ca(OVERLAP)
    states: set[str] = set()

    async def watch() -> None:
        while True:
            for node in cluster.agent_names:
                status = (await client.describe_node(node)).status
                if status is not None:
                    states.add(status.state.value)
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch())
    try:
        report = await asyncio.wait_for(client.ca_rotation(), timeout=120)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert report.phase == "Done", report
    assert states == {NodeState.READY.value}, states
    assert [s.stage for s in report.stages] == ["prepare", "switch", "retire"]

    new = CertificateAuthority.load(directory)
    assert new.fingerprint != old.fingerprint and new.cluster == old.cluster
    assert stage(directory) == CAStage.STEADY and trust_bundle(directory) == new.cert_pem
    verify_issued_by(coordinator.certificates.material.cert_pem, new.cert_pem)
    assert coordinator.certificates.material.ca_pem == new.cert_pem
    admin_ca = (cluster.root / "admin" / "ca.crt").read_bytes()
    assert admin_ca == new.cert_pem

    # Every node renewed with the new CA (and, at the next renewal, trusts it alone).
    for node in cluster.agent_names:
        handle = cluster.agents[node]
        await asyncio.wait_for(
            handle.renewer.wait_renewals(handle.renewer.renewals + 1), timeout=30
        )
        material = TLSMaterial.load(handle.state_dir)
        verify_issued_by(material.cert_pem, new.cert_pem)
        assert material.ca_pem == new.cert_pem, node
        assert len(load_trust_bundle(material.ca_pem)) == 1

    # The workload ran through it all, and the coordinator still reaches the agents.
    scaled = await client.scale("default", name, 3)
    status = await client.wait("default", name, scaled.generation, timeout=60, all_ready=True)
    assert status.ready == 3, status

    # A certificate of the old CA is refused now.
    old_material = TLSMaterial(old_node_key, old_node_cert, old.cert_pem + new.cert_pem)
    async with secure_channel(
        cluster.agent_gateway, GATEWAY_SERVER_NAME, new.cert_pem, old_material
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway_pb2_grpc.GatewayServiceStub(channel).RenewCertificate(
                gateway_pb2.RenewCertificateRequest(csr_pem=b"x"), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(PKIError):
        verify_issued_by(old_node_cert, trust_bundle(directory))

    # A new node enrolls with a token minted now.
    newcomer = unique("late")
    handle = await cluster.add_agent(newcomer, runtimes=["exec"])
    verify_issued_by(TLSMaterial.load(handle.state_dir).cert_pem, new.cert_pem)
    await client.delete("default", name)
