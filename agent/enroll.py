"""Enrollment from the agent's side: key + CSR + token in, mTLS material out.

The agent trusts nothing at first. The token carries the cluster CA certificate (signed
inside the token by the coordinator), so the agent can authenticate the gateway before
sending its request, as kubeadm does with its discovery hash.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
#: Enrollment moves on to the next gateway only when this one could not be reached.
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


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


def split_addresses(values: str | Sequence[str] | None) -> list[str]:
    """``a,b`` or ``["a", "b,c"]`` (a repeated flag) as one ordered list, duplicates gone."""
    items = [values] if isinstance(values, str) else list(values or ())
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            if part.strip() and part.strip() not in out:
                out.append(part.strip())
    return out


def load_agent_gateways(state_dir: Path) -> list[str]:
    """Where this enrolled agent sends heartbeats, in order (recorded at enrollment)."""
    try:
        data = json.loads((state_dir / NODE_FILE).read_text())
    except (OSError, ValueError):
        return []
    many = data.get("agent_gateways")
    if isinstance(many, list) and many:
        return [str(v) for v in many]
    one = data.get("agent_gateway")  # written before several gateways were supported
    return [str(one)] if one else []


def load_agent_gateway(state_dir: Path) -> str | None:
    """The first gateway of :func:`load_agent_gateways` (kept for older callers)."""
    gateways = load_agent_gateways(state_dir)
    return gateways[0] if gateways else None


def is_enrolled(state_dir: Path) -> bool:
    return all((state_dir / f).exists() for f in (KEY_FILE, CERT_FILE, CA_FILE, NODE_FILE))


async def enroll(
    state_dir: Path,
    gateway: str | Sequence[str],
    token: str,
    facts: NodeFacts,
    *,
    ca_pem: bytes | None = None,
    timeout: float = 30.0,
) -> TLSMaterial:
    """Enroll through the first gateway that answers and persist key, certificate, CA and
    ``node.json`` under ``state_dir``.

    Several gateways (one per coordinator) may be given: an unreachable one is skipped,
    while a refusal (bad token, name taken) ends the attempt, since every coordinator
    would refuse alike. ``node.json`` records all of them, and for each the mTLS endpoint
    the agent heartbeats to (its host with the answering coordinator's agent port: the
    coordinators of one cluster are expected to listen on the same ports).
    """
    gateways = split_addresses(gateway)
    if not gateways:
        raise EnrollmentError("no gateway address given; pass --gateway host:port")
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
    response: gateway_pb2.EnrollResponse | None = None
    used = gateways[0]
    for i, used in enumerate(gateways):
        async with secure_channel(used, GATEWAY_SERVER_NAME, ca) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            try:
                response = await stub.Enroll(request, timeout=timeout)
                break
            except grpc.aio.AioRpcError as err:
                unreachable = err.code() in _UNREACHABLE
                if not unreachable or i == len(gateways) - 1:
                    raise EnrollmentError(
                        f"enrollment refused by {used}: {err.details() or err.code().name}"
                    ) from err
    assert response is not None
    write_private_file(state_dir / KEY_FILE, key_pem)
    write_public_file(state_dir / CERT_FILE, response.certificate_pem)
    write_public_file(state_dir / CA_FILE, response.ca_pem)
    write_public_file(
        state_dir / NODE_FILE,
        json.dumps(
            {
                "node_id": response.node_id,
                "cluster": response.cluster,
                "gateway": used,
                "gateways": gateways,
                "agent_gateway": agent_gateway_address(used, response.agent_port),
                "agent_gateways": [agent_gateway_address(g, response.agent_port) for g in gateways],
            },
            indent=2,
        ).encode(),
    )
    return TLSMaterial(key_pem=key_pem, cert_pem=response.certificate_pem, ca_pem=response.ca_pem)
