"""Enrollment through the real gateway and enrollment workflow: good tokens admit a node,
expired, forged, reused and wrongly-bound tokens are refused with a clear reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from temporalio.testing import WorkflowEnvironment

from agent.enroll import NodeFacts, enroll
from cloudless.client import CloudlessClient
from cloudless.errors import EnrollmentError
from cloudless.pki import CertificateAuthority, identity_from_cert, verify_issued_by
from cloudless.testing.cluster import LocalCluster
from cloudless.tls import TLSMaterial
from cloudless.tokens import TokenSigner
from tests.conftest import unique

pytestmark = pytest.mark.temporal


@pytest.fixture(scope="module")
async def coordinator(
    temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(
        temporal_env.client, tmp_path_factory.mktemp("enroll"), cluster=unique("enr")
    )
    await cluster.start()
    yield cluster
    await cluster.close()


def facts(name: str, labels: dict[str, str] | None = None) -> NodeFacts:
    return NodeFacts(
        name=name,
        zone="zone-a",
        address="127.0.0.1:7999",
        cpu_millis=2000,
        memory_bytes=2 * 2**30,
        storage_bytes=2**30,
        labels=labels or {},
        runtimes=("exec",),
    )


async def test_valid_token_enrolls_and_registers_node(coordinator: LocalCluster) -> None:
    name = unique("node")
    agent = await coordinator.add_agent(name, runtimes=["exec"])  # waits for Ready
    material = TLSMaterial.load(agent.state_dir)
    ca = CertificateAuthority.load(coordinator.coordinator_dir)
    verify_issued_by(material.cert_pem, ca.cert_pem)
    ident = identity_from_cert(material.cert_pem)
    assert (ident.cluster, ident.role, ident.name) == (coordinator.cluster, "node", name)
    assert (agent.state_dir / "tls.key").stat().st_mode & 0o777 == 0o600
    details = await CloudlessClient(coordinator.client, coordinator.cluster).describe_node(name)
    assert details.status is not None
    assert [t.state.value for t in details.status.transitions] == ["Joining", "Ready"]
    assert details.node.capacity.cpu_millis == 2000
    assert details.node.runtimes == ["exec"]


async def test_unreachable_agent_is_not_marked_ready(
    coordinator: LocalCluster, tmp_path: Path
) -> None:
    # Enrolled, but nothing serves at the advertised address: the node stays Joining
    # (and would go Offline after the probe deadline), never Ready.
    name = unique("ghost")
    await enroll(tmp_path, coordinator.gateway, coordinator.mint_token(name), facts(name))
    c = CloudlessClient(coordinator.client, coordinator.cluster)
    node = await c.wait_node(name, timeout=20)  # published by the node workflow
    assert node is not None and node.state.value == "Joining"
    status = await c.node(name).describe()
    assert status is not None
    assert [t.state.value for t in status.transitions] == ["Joining"]


async def test_reused_token_is_refused(coordinator: LocalCluster, tmp_path: Path) -> None:
    token = coordinator.mint_token()
    await enroll(tmp_path / "a", coordinator.gateway, token, facts(unique("first")))
    with pytest.raises(EnrollmentError, match="already used"):
        await enroll(tmp_path / "b", coordinator.gateway, token, facts(unique("second")))
    assert not (tmp_path / "b" / "tls.crt").exists()


async def test_expired_token_is_refused(coordinator: LocalCluster, tmp_path: Path) -> None:
    signer = TokenSigner.load(coordinator.coordinator_dir)
    ca = CertificateAuthority.load(coordinator.coordinator_dir).cert_pem.decode()
    token, _ = signer.mint(
        cluster=coordinator.cluster,
        ca_pem=ca,
        ttl=timedelta(minutes=1),
        now=datetime.now(UTC) - timedelta(hours=1),
    )
    with pytest.raises(EnrollmentError, match="expired"):
        await enroll(tmp_path, coordinator.gateway, token, facts(unique("late")))


async def test_one_second_token_is_refused_just_after_it_expires(
    coordinator: LocalCluster, tmp_path: Path
) -> None:
    """Issue 10: a `--ttl 1s` token enrolled for ~31 s (a flat 30 s leeway). The leeway is
    capped at the token's lifetime, so it is refused by the gateway 1 s after it expires."""
    signer = TokenSigner.load(coordinator.coordinator_dir)
    ca = CertificateAuthority.load(coordinator.coordinator_dir).cert_pem.decode()
    token, claims = signer.mint(cluster=coordinator.cluster, ca_pem=ca, ttl=timedelta(seconds=1))
    refused_from = claims.expires_at + timedelta(seconds=1)  # expiry + leeway (= lifetime)
    # A point in time, not an event: sleep until it (at most ~2 s after minting).
    await asyncio.sleep(max(0.0, (refused_from - datetime.now(UTC)).total_seconds()))
    with pytest.raises(EnrollmentError, match=r"token expired at .*; mint a new one") as err:
        await enroll(tmp_path, coordinator.gateway, token, facts(unique("brief")))
    assert (datetime.now(UTC) - claims.expires_at) < timedelta(seconds=10), str(err.value)
    assert not (tmp_path / "tls.crt").exists()


async def test_token_within_the_leeway_still_enrolls(
    coordinator: LocalCluster, tmp_path: Path
) -> None:
    """Small skew is tolerated by the gateway and the workflow alike: a 1 min token that
    expired 1 s ago (within the 5 s leeway) enrolls."""
    signer = TokenSigner.load(coordinator.coordinator_dir)
    ca = CertificateAuthority.load(coordinator.coordinator_dir).cert_pem.decode()
    token, _ = signer.mint(
        cluster=coordinator.cluster,
        ca_pem=ca,
        ttl=timedelta(minutes=1),
        now=datetime.now(UTC) - timedelta(seconds=61),
    )
    await enroll(tmp_path, coordinator.gateway, token, facts(unique("skewed")))
    assert (tmp_path / "tls.crt").exists()


async def test_forged_token_is_refused(coordinator: LocalCluster, tmp_path: Path) -> None:
    # Signed by a key that is not this cluster's, but carrying the real CA so the agent
    # can reach the gateway: exactly what an attacker without the key could produce.
    rogue = TokenSigner.load_or_create(tmp_path / "rogue")
    ca = CertificateAuthority.load(coordinator.coordinator_dir).cert_pem.decode()
    token, _ = rogue.mint(cluster=coordinator.cluster, ca_pem=ca)
    with pytest.raises(EnrollmentError, match="signature"):
        await enroll(tmp_path / "n", coordinator.gateway, token, facts(unique("forged")))


async def test_token_bound_to_another_name_is_refused(
    coordinator: LocalCluster, tmp_path: Path
) -> None:
    token = coordinator.mint_token("edge-7")
    with pytest.raises(EnrollmentError, match="bound to node 'edge-7'"):
        await enroll(tmp_path, coordinator.gateway, token, facts(unique("other")))


async def test_token_bound_to_labels_requires_them(
    coordinator: LocalCluster, tmp_path: Path
) -> None:
    token = coordinator.mint_token(labels={"tier": "edge"})
    with pytest.raises(EnrollmentError, match="tier"):
        await enroll(tmp_path / "a", coordinator.gateway, token, facts(unique("nolabel")))
    ok = coordinator.mint_token(labels={"tier": "edge"})
    await enroll(tmp_path / "b", coordinator.gateway, ok, facts(unique("label"), {"tier": "edge"}))


async def test_invalid_request_lists_every_problem(
    coordinator: LocalCluster, tmp_path: Path
) -> None:
    bad = NodeFacts(
        name="Not_A_Name",
        zone="zone-a",
        address="nowhere",
        cpu_millis=0,
        memory_bytes=2**30,
        storage_bytes=0,
        runtimes=("podman",),
    )
    with pytest.raises(EnrollmentError) as info:
        await enroll(tmp_path, coordinator.gateway, coordinator.mint_token(), bad)
    text = str(info.value)
    for expected in ("node_name", "address", "cpu_millis", "runtimes"):
        assert expected in text


async def test_unbound_token_cannot_take_over_an_enrolled_name(
    coordinator: LocalCluster, tmp_path: Path
) -> None:
    name = unique("taken")
    await enroll(tmp_path / "a", coordinator.gateway, coordinator.mint_token(name), facts(name))
    c = CloudlessClient(coordinator.client, coordinator.cluster)
    assert await c.wait_node(name, timeout=20) is not None
    with pytest.raises(EnrollmentError, match="already enrolled"):
        await enroll(tmp_path / "b", coordinator.gateway, coordinator.mint_token(), facts(name))
    # A token bound to the name may re-enroll it (e.g. a device that lost its key).
    await enroll(tmp_path / "c", coordinator.gateway, coordinator.mint_token(name), facts(name))


async def test_bad_csr_does_not_consume_the_token(
    coordinator: LocalCluster, tmp_path: Path
) -> None:
    from agent.enroll import GATEWAY_SERVER_NAME
    from cloudless.api import gateway_pb2, gateway_pb2_grpc
    from cloudless.tls import secure_channel

    token = coordinator.mint_token()
    ca = CertificateAuthority.load(coordinator.coordinator_dir).cert_pem
    request = gateway_pb2.EnrollRequest(
        token=token,
        csr_pem=b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        node_name=unique("csr"),
        zone="zone-a",
        capacity=gateway_pb2.Capacity(cpu_millis=1000, memory_bytes=2**30),
        address="127.0.0.1:7999",
        runtimes=["exec"],
    )
    async with secure_channel(coordinator.gateway, GATEWAY_SERVER_NAME, ca) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Enroll(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "csr_pem" in (info.value.details() or "")
    await enroll(tmp_path, coordinator.gateway, token, facts(unique("after")))
