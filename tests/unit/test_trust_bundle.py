"""Trust bundles: the CA certificates a party trusts at once, so the cluster CA can rotate
through an overlap (issue #11, item 5). Verification accepts a certificate of any CA of
the bundle, gRPC's mutual TLS does the same with a bundle as its roots, and a bundle is
taken from a peer only if it keeps a CA already trusted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from cloudless.api import agent_pb2, agent_pb2_grpc
from cloudless.errors import PKIError
from cloudless.pki import (
    CertificateAuthority,
    Identity,
    accept_trust_update,
    load_trust_bundle,
    verify_issued_by,
)
from cloudless.tls import TLSMaterial, secure_channel, server_credentials

CLUSTER = "trust"


@pytest.fixture
def old(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.bootstrap(tmp_path / "old", CLUSTER)


@pytest.fixture
def new(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.bootstrap(tmp_path / "new", CLUSTER)


def test_a_certificate_of_either_ca_verifies_against_the_bundle(
    old: CertificateAuthority, new: CertificateAuthority
) -> None:
    bundle = old.cert_pem + new.cert_pem
    _, by_old = old.issue(Identity(CLUSTER, "node", "a"))
    _, by_new = new.issue(Identity(CLUSTER, "node", "b"))
    verify_issued_by(by_old, bundle)
    verify_issued_by(by_new, bundle)
    verify_issued_by(by_new, new.cert_pem)
    with pytest.raises(PKIError, match="not issued by this CA"):
        verify_issued_by(by_new, old.cert_pem)
    with pytest.raises(PKIError, match="any of the 2 trusted CAs"):
        verify_issued_by(by_new, old.cert_pem + old.cert_pem)


def test_a_bundle_holds_one_to_four_ca_certificates_and_nothing_else(
    old: CertificateAuthority, tmp_path: Path
) -> None:
    assert len(load_trust_bundle(old.cert_pem)) == 1
    with pytest.raises(PKIError, match="1 to 4"):
        load_trust_bundle(old.cert_pem * 5)
    _, leaf = old.issue(Identity(CLUSTER, "node", "a"))
    with pytest.raises(PKIError, match="certificate 2 is not a CA"):
        load_trust_bundle(old.cert_pem + leaf)
    with pytest.raises(PKIError, match="parseable"):
        load_trust_bundle(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(PKIError, match="at most 65536 bytes"):
        load_trust_bundle(b"x" * 70_000)


def test_trust_moves_through_an_overlap_never_by_replacement(
    old: CertificateAuthority, new: CertificateAuthority, tmp_path: Path
) -> None:
    # Prepare: the new CA joins; switch and retire: the old one leaves.
    both = accept_trust_update(old.cert_pem, new.cert_pem + old.cert_pem + new.cert_pem)
    assert both == new.cert_pem + old.cert_pem  # each CA once, in the offered order
    assert accept_trust_update(both, new.cert_pem) == new.cert_pem
    # A bundle that shares nothing with what the node trusts is refused, with the fix.
    with pytest.raises(PKIError, match=r"without an overlap.*enroll it again"):
        accept_trust_update(old.cert_pem, new.cert_pem)
    # So is one that smuggles in another cluster's CA next to a trusted one.
    foreign = CertificateAuthority.bootstrap(tmp_path / "foreign", "elsewhere")
    with pytest.raises(PKIError, match="another cluster"):
        accept_trust_update(old.cert_pem, old.cert_pem + foreign.cert_pem)


class _Agent(agent_pb2_grpc.AgentServiceServicer):
    async def NodeInfo(
        self, request: agent_pb2.NodeInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.NodeInfoResponse:
        return agent_pb2.NodeInfoResponse(node_id="ok")


async def _call(server_material: TLSMaterial, client_material: TLSMaterial) -> str:
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(_Agent(), server)
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(server_material, require_client_auth=True)
    )
    await server.start()
    try:
        channel = secure_channel(
            f"127.0.0.1:{port}", "pi-1", client_material.ca_pem, client_material
        )
        async with channel:
            answer = await agent_pb2_grpc.AgentServiceStub(channel).NodeInfo(
                agent_pb2.NodeInfoRequest(), timeout=5
            )
            return str(answer.node_id)
    finally:
        await server.stop(None)


async def test_mutual_tls_with_a_bundle_accepts_either_ca_in_both_directions(
    old: CertificateAuthority, new: CertificateAuthority
) -> None:
    """Mid-rotation: the agent still has its old-CA certificate, the coordinator already
    one of the new CA; both trust the bundle, so each accepts the other."""
    bundle = old.cert_pem + new.cert_pem
    agent = TLSMaterial(*old.issue(Identity(CLUSTER, "node", "pi-1"), dns_names=["pi-1"]), bundle)
    coordinator = TLSMaterial(*new.issue(Identity(CLUSTER, "coordinator", "coordinator")), bundle)
    assert await _call(agent, coordinator) == "ok"
    # An agent that trusts only the old CA refuses the new coordinator.
    alone = TLSMaterial(agent.key_pem, agent.cert_pem, old.cert_pem)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _call(alone, coordinator)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
