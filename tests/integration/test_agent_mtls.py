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


async def test_run_logs_list_stop_over_mtls(
    cluster_with_agent: tuple[LocalCluster, AgentHandle],
) -> None:
    cluster, agent = cluster_with_agent
    material = TLSMaterial.load(cluster.coordinator_dir)
    rid = unique("default-logs")
    spec = agent_pb2.ReplicaSpec(
        replica_id=rid,
        namespace="default",
        workload="logs",
        runtime="exec",
        command=["sh", "-c"],
        args=["echo hello-from-replica; exec sleep 60"],
        generation=1,
        spec_hash="h1",
    )
    async with secure_channel(agent.address, agent.name, material.ca_pem, material) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        run = await stub.RunReplica(agent_pb2.RunReplicaRequest(spec=spec), timeout=10)
        assert run.status.phase == "Running" and run.status.node_id == agent.name
        # Idempotent per replica id: same spec, same process.
        again = await stub.RunReplica(agent_pb2.RunReplicaRequest(spec=spec), timeout=10)
        assert again.status.runtime_id == run.status.runtime_id
        chunks = [
            c.data async for c in stub.Logs(agent_pb2.LogsRequest(replica_id=rid), timeout=10)
        ]
        assert b"hello-from-replica" in b"".join(chunks)
        listed = await stub.ListReplicas(agent_pb2.ListReplicasRequest(workload="logs"), timeout=5)
        assert [r.replica_id for r in listed.replicas] == [rid]
        stopped = await stub.StopReplica(agent_pb2.StopReplicaRequest(replica_id=rid), timeout=20)
        assert stopped.found
        gone = await stub.StopReplica(agent_pb2.StopReplicaRequest(replica_id=rid), timeout=20)
        assert not gone.found


async def test_invalid_replica_spec_is_rejected_with_reasons(
    cluster_with_agent: tuple[LocalCluster, AgentHandle],
) -> None:
    cluster, agent = cluster_with_agent
    material = TLSMaterial.load(cluster.coordinator_dir)
    spec = agent_pb2.ReplicaSpec(
        replica_id="Bad ID", namespace="default", workload="x", runtime="exec", cpu_millis=-1
    )
    async with secure_channel(agent.address, agent.name, material.ca_pem, material) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.RunReplica(agent_pb2.RunReplicaRequest(spec=spec), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert "replica_id" in details and "cpu_millis" in details
    spec_docker = agent_pb2.ReplicaSpec(
        replica_id="ok-1", namespace="default", workload="x", runtime="docker", image="x"
    )
    async with secure_channel(agent.address, agent.name, material.ca_pem, material) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.RunReplica(agent_pb2.RunReplicaRequest(spec=spec_docker), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "runtime 'docker' is not available" in (info.value.details() or "")
