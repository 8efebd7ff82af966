"""Enrollment from the agent's side: key + CSR + token in, mTLS material out.

The agent trusts nothing at first. The token carries the cluster CA certificate (signed
inside the token by the coordinator), so the agent can authenticate the gateway before
sending its request, as kubeadm does with its discovery hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cloudless.api import gateway_pb2, gateway_pb2_grpc
from cloudless.errors import EnrollmentError
from cloudless.pki import generate_private_key_pem, make_csr, write_private_file, write_public_file
from cloudless.tls import (
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    TLSMaterial,
    secure_channel,
)
from cloudless.tls import (
    GATEWAY_SERVER_NAME as GATEWAY_SERVER_NAME,
)
from cloudless.tokens import peek_ca_pem

#: The DNS name every gateway certificate carries; agents dial gateways by this name.
NODE_FILE = "node.json"


@dataclass(frozen=True)
class NodeFacts:
    """What the agent tells the control plane about itself at enrollment."""

    name: str
    zone: str
    address: str
    cpu_millis: int
    memory_bytes: int
    storage_bytes: int
    labels: dict[str, str] = field(default_factory=dict)
    runtimes: tuple[str, ...] = ()
    agent_version: str = ""


def agent_gateway_address(enroll_address: str, agent_port: int) -> str:
    """The mTLS endpoint: same host the agent enrolled through, the port it was told."""
    host = enroll_address.rsplit(":", 1)[0]
    return f"{host}:{agent_port}" if agent_port else enroll_address


def load_agent_gateway(state_dir: Path) -> str | None:
    """Where this enrolled agent sends heartbeats (recorded at enrollment)."""
    try:
        data = json.loads((state_dir / NODE_FILE).read_text())
    except (OSError, ValueError):
        return None
    value = data.get("agent_gateway")
    return str(value) if value else None


def is_enrolled(state_dir: Path) -> bool:
    return all((state_dir / f).exists() for f in (KEY_FILE, CERT_FILE, CA_FILE, NODE_FILE))


async def enroll(
    state_dir: Path,
    gateway: str,
    token: str,
    facts: NodeFacts,
    *,
    ca_pem: bytes | None = None,
    timeout: float = 30.0,
) -> TLSMaterial:
    """Enroll through the gateway and persist key, certificate and CA under ``state_dir``."""
    ca = ca_pem or peek_ca_pem(token).encode()
    key_pem = generate_private_key_pem()
    csr_pem = make_csr(key_pem, facts.name)
    request = gateway_pb2.EnrollRequest(
        token=token,
        csr_pem=csr_pem,
        node_name=facts.name,
        zone=facts.zone,
        labels=facts.labels,
        capacity=gateway_pb2.Capacity(
            cpu_millis=facts.cpu_millis,
            memory_bytes=facts.memory_bytes,
            storage_bytes=facts.storage_bytes,
        ),
        address=facts.address,
        runtimes=list(facts.runtimes),
        agent_version=facts.agent_version,
    )
    async with secure_channel(gateway, GATEWAY_SERVER_NAME, ca) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        try:
            response: gateway_pb2.EnrollResponse = await stub.Enroll(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise EnrollmentError(
                f"enrollment refused by {gateway}: {err.details() or err.code().name}"
            ) from err
    write_private_file(state_dir / KEY_FILE, key_pem)
    write_public_file(state_dir / CERT_FILE, response.certificate_pem)
    write_public_file(state_dir / CA_FILE, response.ca_pem)
    write_public_file(
        state_dir / NODE_FILE,
        json.dumps(
            {
                "node_id": response.node_id,
                "cluster": response.cluster,
                "gateway": gateway,
                "agent_gateway": agent_gateway_address(gateway, response.agent_port),
            },
            indent=2,
        ).encode(),
    )
    return TLSMaterial(key_pem=key_pem, cert_pem=response.certificate_pem, ca_pem=response.ca_pem)
