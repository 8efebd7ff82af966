"""gRPC over mutual TLS with certificates from the cluster CA.

Servers present a certificate whose DNS SAN is their identity (node id, coordinator
name); clients dial with ``grpc.ssl_target_name_override`` set to that identity, so the
peer is authenticated by name, not by whichever address it happens to have today.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization

from cloudless.errors import ConfigError, PKIError
from cloudless.pki import (
    Identity,
    cert_key_id,
    cert_not_after,
    cert_not_before,
    identity_from_cert,
    public_key_id,
    read_private_file,
    write_private_file,
    write_public_file,
)
from cloudless.pki.authority import CLOCK_SKEW
from cloudless.pki.rotation import TRUST_FILE
from cloudless.process import open_files_limit
from policies.renewal import Lifetime

#: The DNS name every coordinator certificate carries; clients verify the gateway by it.
GATEWAY_SERVER_NAME = "cloudless-gateway"
KEY_FILE = "tls.key"
CERT_FILE = "tls.crt"
CA_FILE = "ca.crt"
#: A renewed key and certificate are written here first, then renamed over
#: ``tls.key``/``tls.crt``; a start after a crash in between completes the switch.
RENEW_KEY_FILE = "renew.key"
RENEW_CERT_FILE = "renew.crt"

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

    key_pem: bytes = field(repr=False)  # never in a log line or a traceback
    cert_pem: bytes
    ca_pem: bytes

    @classmethod
    def load(cls, directory: Path) -> TLSMaterial:
        try:
            return cls(
                key_pem=read_private_file(directory / KEY_FILE),
                cert_pem=(directory / CERT_FILE).read_bytes(),
                # A coordinator's directory holds the CA, and while the CA rotates the
                # bundle of both (an agent's ca.crt is its bundle already).
                ca_pem=(
                    directory / (TRUST_FILE if (directory / TRUST_FILE).exists() else CA_FILE)
                ).read_bytes(),
            )
        except FileNotFoundError as err:
            raise PKIError(
                f"TLS material missing: {err.filename}; enroll this node or bootstrap the "
                "coordinator first"
            ) from err

    @property
    def identity(self) -> Identity:
        return identity_from_cert(self.cert_pem)


def certificate_lifetime(cert_pem: bytes) -> Lifetime:
    """The lifetime of a cluster certificate, from its issue (not its backdated start)."""
    return Lifetime.of(cert_not_before(cert_pem), cert_not_after(cert_pem), CLOCK_SKEW)


def _fsync_dir(directory: Path) -> None:
    """Persist the renames (a power loss could otherwise forget them)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def key_matches(key_pem: bytes, cert_pem: bytes) -> bool:
    """Whether ``cert_pem`` certifies the public half of ``key_pem``."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        return public_key_id(key.public_key()) == cert_key_id(cert_pem)
    except (ValueError, TypeError, PKIError):
        return False


def save_material(directory: Path, key_pem: bytes, cert_pem: bytes) -> None:
    """Commit a renewed key and certificate: both are written and fsynced beside the live
    ones (key 0600), then renamed over ``tls.key`` and ``tls.crt``, the key first. A crash
    at any point leaves either the old pair or what :func:`finish_interrupted_renewal`
    completes into the new one. (A reader between the two renames sees the new key with
    the old certificate for that instant; the processes that own the pair keep it in
    memory.)"""
    write_private_file(directory / RENEW_KEY_FILE, key_pem)
    write_public_file(directory / RENEW_CERT_FILE, cert_pem)
    try:
        os.replace(directory / RENEW_KEY_FILE, directory / KEY_FILE)
        os.replace(directory / RENEW_CERT_FILE, directory / CERT_FILE)
    except OSError as err:
        raise PKIError(f"cannot install the renewed certificate in {directory}: {err}") from err
    _fsync_dir(directory)


def finish_interrupted_renewal(directory: Path) -> str | None:
    """Complete (or discard) a renewal a crash interrupted in :func:`save_material`; what
    was done, or None if there was nothing to do. Run before loading ``tls.key``."""
    pending_key, pending_cert = directory / RENEW_KEY_FILE, directory / RENEW_CERT_FILE
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    if not pending_key.exists() and not pending_cert.exists():
        return None
    outcome = "discarded an incomplete renewal"
    if pending_cert.exists():
        cert = pending_cert.read_bytes()
        if pending_key.exists() and key_matches(read_private_file(pending_key), cert):
            os.replace(pending_key, key_path)  # crashed before the renames
            os.replace(pending_cert, cert_path)
            outcome = "completed a renewal interrupted before its files were renamed"
        elif key_path.exists() and key_matches(read_private_file(key_path), cert):
            os.replace(pending_cert, cert_path)  # crashed between the two renames
            outcome = "completed a renewal interrupted between its renames"
    for leftover in (pending_key, pending_cert):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    _fsync_dir(directory)
    return outcome


#: Keepalive, as servers enforce it. They accept the clients' pings (:data:`KEEPALIVE_OPTIONS`:
#: every 20 s, also on connections without a call, which long-lived streams such as
#: heartbeats need) down to one every 10 s without data; a peer that pings more often
#: gets two strikes and then a GOAWAY (ENHANCE_YOUR_CALM, "too_many_pings"), gRPC's own
#: defence against ping floods.
SERVER_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
]


@dataclass(frozen=True)
class GrpcLimits:
    """What one gRPC server lets clients hold (``docs/operations.md#limits``).

    gRPC's C core enforces each of these itself. It has no per-address count and cannot
    push out an idle connection for a new one (what the HTTP listeners do, see
    :class:`cloudless.http.ConnectionLimits`), so the bounds are in time and in total: a
    connection has ``handshake_timeout`` from its accept to its TLS handshake and its
    first HTTP/2 SETTINGS (gRPC's default is 120 s), then is closed (GOAWAY) once it has
    carried no RPC for ``idle_timeout``, and, where ``max_age`` is set, once it is that
    old (in-flight RPCs get ``age_grace`` to finish). ``max_connections`` caps what all
    of that can add up to, well below the process's descriptor limit. Why this is enough
    for the ports that take strangers: ``docs/design/enrollment-and-pki.md`` ("Floods").
    """

    #: Connections at most, counted from the TCP accept (so handshaking ones too);
    #: gRPC closes any beyond at once. At most half the open-files limit (:meth:`options`).
    max_connections: int = 8192
    #: Concurrent RPCs (HTTP/2 streams) one connection may carry; more wait client-side.
    max_streams: int = 256
    #: Seconds a new connection has to finish its TLS handshake (and send HTTP/2 SETTINGS).
    handshake_timeout: float = 10.0
    #: Seconds a connection with no RPC in flight stays open (heartbeat streams are RPCs).
    idle_timeout: float = 300.0
    #: Seconds a connection lives at most (gRPC adds +-10% jitter); None: no limit.
    max_age: float | None = None
    #: Seconds the RPCs of a connection past ``max_age`` get to finish.
    age_grace: float = 180.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_streams"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"gRPC {name} must be a whole number of at least 1, not {value!r}"
                )
        for name in ("handshake_timeout", "idle_timeout", "max_age", "age_grace"):
            value = getattr(self, name)
            if value is None and name == "max_age":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(
                    f"gRPC {name} must be a positive number of seconds, not {value!r}"
                )

    def options(self, open_files: int | None = None) -> list[tuple[str, int | str]]:
        """gRPC channel arguments for a server; ``open_files``: the descriptor limit
        (default: this process's soft ``RLIMIT_NOFILE``)."""
        if open_files is None:
            open_files = open_files_limit()
        ceiling = max(1, open_files // 2)
        options: list[tuple[str, int | str]] = [
            ("grpc.max_allowed_incoming_connections", min(self.max_connections, ceiling)),
            ("grpc.max_concurrent_streams", self.max_streams),
            ("grpc.server_handshake_timeout_ms", _ms(self.handshake_timeout)),
            ("grpc.max_connection_idle_ms", _ms(self.idle_timeout)),
        ]
        if self.max_age is not None:
            options += [
                ("grpc.max_connection_age_ms", _ms(self.max_age)),
                ("grpc.max_connection_age_grace_ms", _ms(self.age_grace)),
            ]
        return options


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


DEFAULT_GRPC_LIMITS = GrpcLimits()


def server(
    limits: GrpcLimits = DEFAULT_GRPC_LIMITS,
    extra_options: list[tuple[str, int | str]] | None = None,
    **kwargs: object,
) -> grpc.aio.Server:
    """A gRPC asyncio server with Cloudless' keepalive policy and connection limits
    (``extra_options``: more channel arguments, e.g. message size limits)."""
    options = [*SERVER_OPTIONS, *limits.options(), *(extra_options or ())]
    return grpc.aio.server(options=options, **kwargs)  # type: ignore[arg-type]


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


class RotatingServerCredentials:
    """Server credentials whose certificate can be replaced while the server runs.

    gRPC asks :meth:`_fetch` at every new handshake (``dynamic_ssl_server_credentials``),
    so after :meth:`update` new connections get the new certificate while established
    ones (and their calls) go on undisturbed. Client certificates are verified against
    the material's CA, as with :func:`server_credentials`.
    """

    def __init__(self, material: TLSMaterial, *, require_client_auth: bool) -> None:
        self._material = material
        self._served = material
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(material),
            self._fetch,
            require_client_authentication=require_client_auth,
        )

    @staticmethod
    def _configuration(material: TLSMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.key_pem, material.cert_pem)], root_certificates=material.ca_pem
        )

    def update(self, material: TLSMaterial) -> None:
        """Serve ``material`` from the next handshake on."""
        self._material = material

    @property
    def material(self) -> TLSMaterial:
        """What new handshakes get."""
        return self._material

    def _fetch(self) -> grpc.ServerCertificateConfiguration:
        # Runs in a gRPC core thread; attribute reads and writes are atomic under the GIL.
        # None keeps the configuration gRPC already has (the stubs do not say so).
        material = self._material
        if material is self._served:
            return None  # type: ignore[return-value]
        self._served = material
        return self._configuration(material)


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
