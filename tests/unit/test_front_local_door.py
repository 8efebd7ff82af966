"""The front's door for the local coordinator: TLS without a client certificate, a
per-process API key, nothing else (real gRPC servers, a recording stand-in upstream)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cloudless.pki import CertificateAuthority, Identity, cert_serial
from cloudless.tls import GATEWAY_SERVER_NAME, TLSMaterial, channel_credentials
from workers.front.temporal_proxy import TemporalFront

CLUSTER = "door"
METHOD = "/temporal.api.workflowservice.v1.WorkflowService/GetSystemInfo"


class Upstream(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Temporal's stand-in: answers every call with its request, remembers the metadata."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str | bytes]] = []

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes]:
        async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            self.metadata.append(dict(context.invocation_metadata() or ()))
            return request

        return grpc.unary_unary_rpc_method_handler(echo)


def issue(ca: CertificateAuthority, role: str, name: str) -> TLSMaterial:
    key, cert = ca.issue(Identity(CLUSTER, role, name), dns_names=[GATEWAY_SERVER_NAME])  # type: ignore[arg-type]
    return TLSMaterial(key, cert, ca.cert_pem)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.bootstrap(tmp_path / "ca", CLUSTER)


@pytest.fixture
async def stack(
    ca: CertificateAuthority, tmp_path: Path
) -> AsyncIterator[tuple[TemporalFront, Upstream]]:
    upstream = Upstream()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([upstream])
    socket_path = tmp_path / "frontend.sock"
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    front = TemporalFront(
        "127.0.0.1:0", f"unix:{socket_path}", issue(ca, "coordinator", "coordinator"), CLUSTER
    )
    await front.start()
    try:
        yield front, upstream
    finally:
        await front.stop(grace=0)
        await server.stop(None)


async def call(
    port: int,
    trust: bytes,
    *,
    authorization: str | None = None,
    client: TLSMaterial | None = None,
) -> bytes:
    metadata = () if authorization is None else (("authorization", authorization),)
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        channel_credentials(trust, client),
        options=[("grpc.ssl_target_name_override", GATEWAY_SERVER_NAME)],
    ) as channel:
        answer: bytes = await channel.unary_unary(METHOD, None, None)(
            b"ping", metadata=metadata, timeout=5
        )
        return answer


async def test_the_key_is_the_coordinator_and_never_goes_upstream(
    stack: tuple[TemporalFront, Upstream], ca: CertificateAuthority
) -> None:
    front, upstream = stack
    assert front.local is not None and front.local_port not in (0, front.port)
    assert (
        await call(
            front.local_port, front.local_material.ca_pem, authorization=f"Bearer {front.local.key}"
        )
        == b"ping"
    )
    assert upstream.metadata and "authorization" not in upstream.metadata[-1]
    assert front.proxy.forwarded == 1
    assert front.local.key not in repr(front.local)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", "Bearer ", "Basic abc", "KEY"],
    ids=["no key", "wrong key", "empty key", "another scheme", "bare key"],
)
async def test_anything_but_the_key_is_unauthenticated(
    stack: tuple[TemporalFront, Upstream], ca: CertificateAuthority, authorization: str | None
) -> None:
    front, upstream = stack
    assert front.local is not None
    if authorization == "KEY":
        authorization = front.local.key  # the key without "Bearer ": not what the SDK sends
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(front.local_port, front.local_material.ca_pem, authorization=authorization)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "local coordinator only" in (refused.value.details() or "")
    assert upstream.metadata == [] and front.proxy.refused == 1


async def test_a_certificate_counts_for_nothing_on_the_local_door(
    stack: tuple[TemporalFront, Upstream], ca: CertificateAuthority
) -> None:
    """The door asks for no client certificate; a coordinator's certificate without the
    key is refused all the same, while on the mutual-TLS listener it gets through."""
    front, _ = stack
    coordinator = issue(ca, "coordinator", "other")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(front.local_port, front.local_material.ca_pem, client=coordinator)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await call(front.port, ca.cert_pem, client=coordinator) == b"ping"
    # ... and the key opens nothing on the mutual-TLS listener (no certificate: no handshake).
    assert front.local is not None
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(front.port, ca.cert_pem, authorization=f"Bearer {front.local.key}")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def _served_serial(port: int, trust: bytes, tmp_path: Path) -> str:
    (tmp_path / "ca.pem").write_bytes(trust)
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=GATEWAY_SERVER_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return cert_serial(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM))


async def test_update_renews_the_mutual_tls_listener_and_leaves_the_door_alone(
    stack: tuple[TemporalFront, Upstream], ca: CertificateAuthority, tmp_path: Path
) -> None:
    """A renewed (or re-trusted) coordinator certificate is served to people from the
    next handshake on; the local door keeps the certificate of its own CA, which its one
    client trusts whatever happens to the cluster CA."""
    front, _ = stack
    door = cert_serial(front.local_material.cert_pem)
    renewed = issue(ca, "coordinator", "coordinator")
    front.update(renewed)
    served = await asyncio.to_thread(_served_serial, front.port, ca.cert_pem, tmp_path)
    assert served == cert_serial(renewed.cert_pem)
    on_door = await asyncio.to_thread(
        _served_serial, front.local_port, front.local_material.ca_pem, tmp_path
    )
    assert on_door == door
    assert front.local is not None
    key = f"Bearer {front.local.key}"
    assert await call(front.local_port, front.local_material.ca_pem, authorization=key) == b"ping"
