"""gRPC over mutual TLS with certificates from the cluster CA.

Servers present a certificate whose DNS SAN is their identity (node id, coordinator
name); clients dial with ``grpc.ssl_target_name_override`` set to that identity, so the
peer is authenticated by name, not by whichever address it happens to have today.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from cloudless.errors import PKIError
from cloudless.pki import Identity, identity_from_cert, read_private_file

#: The DNS name every coordinator certificate carries; clients verify the gateway by it.
GATEWAY_SERVER_NAME = "cloudless-gateway"
KEY_FILE = "tls.key"
CERT_FILE = "tls.crt"
CA_FILE = "ca.crt"

#: Keepalives detect dead peers behind NATs and sleeping devices without waiting for TCP.
KEEPALIVE_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass(frozen=True)
class TLSMaterial:
    """A key, its certificate and the CA that must have issued every peer."""

    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes

    @classmethod
    def load(cls, directory: Path) -> TLSMaterial:
        try:
            return cls(
                key_pem=read_private_file(directory / KEY_FILE),
                cert_pem=(directory / CERT_FILE).read_bytes(),
                ca_pem=(directory / CA_FILE).read_bytes(),
            )
        except FileNotFoundError as err:
            raise PKIError(
                f"TLS material missing: {err.filename}; enroll this node or bootstrap the "
                "coordinator first"
            ) from err

    @property
    def identity(self) -> Identity:
        return identity_from_cert(self.cert_pem)


#: Servers must accept the clients' keepalive pings (also on idle connections), or gRPC
#: answers GOAWAY "too_many_pings" and breaks long-lived streams such as heartbeats.
SERVER_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]


def server(**kwargs: object) -> grpc.aio.Server:
    """A gRPC asyncio server with Cloudless' keepalive policy."""
    return grpc.aio.server(options=SERVER_OPTIONS, **kwargs)  # type: ignore[arg-type]


def server_credentials(
    material: TLSMaterial, *, require_client_auth: bool
) -> grpc.ServerCredentials:
    """Server credentials trusting only the cluster CA for client certificates.

    With ``require_client_auth=False`` gRPC does not even request a client certificate
    (it cannot make one optional per method), which is why the coordinator serves
    enrollment and the authenticated agent endpoint on separate ports.
    """
    return grpc.ssl_server_credentials(
        [(material.key_pem, material.cert_pem)],
        root_certificates=material.ca_pem,
        require_client_auth=require_client_auth,
    )


def channel_credentials(
    ca_pem: bytes, client: TLSMaterial | None = None
) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem,
        private_key=client.key_pem,
        certificate_chain=client.cert_pem,
    )


def channel_options(server_name: str) -> list[tuple[str, int | str]]:
    """Options that authenticate the server by its identity rather than its address."""
    return [("grpc.ssl_target_name_override", server_name), *KEEPALIVE_OPTIONS]


def secure_channel(
    address: str, server_name: str, ca_pem: bytes, client: TLSMaterial | None = None
) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        address, channel_credentials(ca_pem, client), options=channel_options(server_name)
    )


#: Peer certificates (PEM bytes as TLS reported them) -> their identity; None: none.
_identities: dict[bytes, Identity | None] = {}
IDENTITY_CACHE_SIZE = 4096


def peer_certificate_pem(context: grpc.aio.ServicerContext[object, object]) -> bytes | None:
    """The peer's client certificate (PEM, as TLS verified it), if it sent one."""
    pem: bytes | None = next(iter(context.auth_context().get("x509_pem_cert") or ()), None)
    return pem


def peer_identity(context: grpc.aio.ServicerContext[object, object]) -> Identity | None:
    """The cluster identity of the peer's verified client certificate, if it sent one.

    Every RPC asks, and parsing the certificate costs about 20 µs, a noticeable share of
    a warm GetSecret. The identity is a pure function of the certificate's bytes, so it is
    cached (bounded, oldest evicted first). This skips only the re-parsing: the TLS
    handshake still verified this connection's chain and validity before any RPC ran.
    """
    pem = peer_certificate_pem(context)
    if pem is None:
        return None
    try:
        return _identities[pem]
    except KeyError:
        pass
    try:
        identity: Identity | None = identity_from_cert(pem)
    except PKIError:
        identity = None
    if len(_identities) >= IDENTITY_CACHE_SIZE:
        del _identities[next(iter(_identities))]
    _identities[pem] = identity
    return identity
