"""The agent's AgentService accepts only coordinators of its own cluster, over mTLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from temporalio.testing import WorkflowEnvironment

from agent.enroll import GATEWAY_SERVER_NAME
from cloudless.api import agent_pb2, agent_pb2_grpc
from cloudless.pki import CertificateAuthority, Identity
from cloudless.testing.cluster import AgentHandle, LocalCluster
from cloudless.tls import TLSMaterial, secure_channel
from tests.conftest import unique

pytestmark = pytest.mark.temporal


@pytest.fixture(scope="module")
async def cluster_with_agent(
    temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[LocalCluster, AgentHandle]]:
    cluster = LocalCluster(
        temporal_env.client, tmp_path_factory.mktemp("mtls"), cluster=unique("tls")
    )
    await cluster.start()
    agent = await cluster.add_agent(unique("n"), runtimes=["exec"])
    yield cluster, agent
    await cluster.close()


async def call(
    agent: AgentHandle, ca_pem: bytes, client: TLSMaterial | None
) -> agent_pb2.NodeInfoResponse:
    async with secure_channel(agent.address, agent.name, ca_pem, client) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        response: agent_pb2.NodeInfoResponse = await stub.NodeInfo(
            agent_pb2.NodeInfoRequest(), timeout=5
        )
        return response


async def test_coordinator_certificate_is_accepted(
    cluster_with_agent: tuple[LocalCluster, AgentHandle],
) -> None:
    cluster, agent = cluster_with_agent
    material = TLSMaterial.load(cluster.coordinator_dir)
    info = await call(agent, material.ca_pem, material)
    assert info.node_id == agent.name
    assert list(info.runtimes) == ["exec"]


async def test_client_without_certificate_is_refused(
    cluster_with_agent: tuple[LocalCluster, AgentHandle],
) -> None:
    cluster, agent = cluster_with_agent
    ca = CertificateAuthority.load(cluster.coordinator_dir)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(agent, ca.cert_pem, None)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


async def test_certificate_from_another_ca_is_refused(
    cluster_with_agent: tuple[LocalCluster, AgentHandle], tmp_path: Path
) -> None:
    cluster, agent = cluster_with_agent
    rogue_ca = CertificateAuthority.bootstrap(tmp_path / "rogue", cluster.cluster)
    key, cert = rogue_ca.issue(Identity(cluster.cluster, "coordinator", "coordinator"))
    real_ca = CertificateAuthority.load(cluster.coordinator_dir).cert_pem
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(agent, real_ca, TLSMaterial(key, cert, real_ca))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_node_certificate_may_not_command_an_agent(
    cluster_with_agent: tuple[LocalCluster, AgentHandle],
) -> None:
    cluster, agent = cluster_with_agent
    ca = CertificateAuthority.load(cluster.coordinator_dir)
    key, cert = ca.issue(Identity(cluster.cluster, "node", "some-other-node"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(agent, ca.cert_pem, TLSMaterial(key, cert, ca.cert_pem))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "only coordinators" in (info.value.details() or "")


async def test_agent_is_authenticated_by_node_identity(
    cluster_with_agent: tuple[LocalCluster, AgentHandle],
) -> None:
    # Dialling the agent's address while expecting another identity must fail: the
    # coordinator authenticates the node by name, not by whatever answers at the address.
    cluster, agent = cluster_with_agent
    material = TLSMaterial.load(cluster.coordinator_dir)
    async with secure_channel(agent.address, GATEWAY_SERVER_NAME, material.ca_pem, material) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.NodeInfo(agent_pb2.NodeInfoRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
