"""Temporal's gRPC API behind mutual TLS: the only way to Temporal that anyone is given.

Clients (the coordinator's own workers, ``cloudlessctl``, the ``temporal`` CLI) connect
with a certificate from the cluster CA. Each call is authenticated (the certificate's
cluster identity), authorized (:func:`policies.access.temporal_rpc`) and forwarded as
opaque bytes to Temporal's frontend (a Unix socket into the jail, or any address), with
its metadata and deadline; Temporal's answer, including its error details
(``grpc-status-details-bin``, which the SDKs decode into typed errors), goes back as is.

The proxy never parses a message: it costs one copy of each, and it cannot mis-handle a
field it does not know. Every method of Temporal's API is unary, so it forwards unary
calls only; a streaming call is refused.

The local coordinator has a door of its own (:class:`LocalKeyDoor`): a loopback listener
with TLS but no client certificate, where a random per-process API key stands for the
role ``coordinator``. The Temporal SDK cannot change a client's certificate after it
connected, so a coordinator whose certificate was renewed could not reconnect through the
mutual-TLS listener once the old one expired; through this door its client needs no
certificate at all (``docs/design/front.md``, "The coordinator's own door").
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Literal

import grpc
import structlog

from cloudless.model import AuditRecord
from cloudless.model.audit import UNAUTHENTICATED
from cloudless.pki import CertificateAuthority, Identity
from cloudless.revocation import RevocationList
from cloudless.revocation import reason as revocation_reason
from cloudless.tls import (
    GATEWAY_SERVER_NAME,
    GrpcLimits,
    RotatingServerCredentials,
    TLSMaterial,
    peer_certificate_pem,
    peer_identity,
    server_credentials,
)
from cloudless.tls import server as grpc_server
from policies.access import COORDINATOR, Call, is_read, temporal_rpc
from workers.front.calls import contract_grants, read_call

log = structlog.get_logger("cloudless.front")

#: Temporal's own limits: a 2 MB payload, history pages of several MB.
MAX_MESSAGE_BYTES = 128 * 2**20
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
#: A worker holds dozens of long polls (60 s each) on one connection: room for them.
FRONT_LIMITS = GrpcLimits(max_connections=1024, max_streams=2048)
#: Metadata gRPC sets per hop, never forwarded; nor the caller's credential (the front is
#: what authenticates: the local coordinator's API key never leaves this process).
_HOP_BY_HOP = frozenset(
    {"user-agent", "te", "content-type", "grpc-accept-encoding", "authorization"}
)
#: Where the local coordinator's door listens: loopback, a port the kernel picks.
LOCAL_LISTEN = "127.0.0.1:0"
#: The local door's certificate lives as long as any process could (its CA is in memory).
LOCAL_DOOR_VALIDITY = timedelta(days=3650)


#: The one ``grpc-`` key that goes through: Temporal's typed error details (e.g. "already
#: started"), without which an SDK sees a bare status and the caller mis-handles it.
STATUS_DETAILS = "grpc-status-details-bin"


def _forwardable(metadata: object) -> list[tuple[str, str | bytes]]:
    out: list[tuple[str, str | bytes]] = []
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key != STATUS_DETAILS and (key.startswith((":", "grpc-")) or key in _HOP_BY_HOP):
            continue
        out.append((key, value))
    return out


class TemporalProxy(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Authenticates, authorizes and forwards every call to ``upstream``.

    ``upstream``: a gRPC target (``unix:/path/frontend.sock`` or ``host:port``), reached
    in plaintext: it must be private (the jail's socket), never a network address.
    """

    def __init__(self, upstream: str, cluster: str) -> None:
        self.upstream = upstream
        self.cluster = cluster
        self.grants = contract_grants()
        self._channel = grpc.aio.insecure_channel(upstream, options=_CHANNEL_OPTIONS)
        #: method -> its callable on the channel (bytes in, bytes out), made once; only
        #: methods of the services the policy admits get here.
        self._upstream: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}
        #: Removed nodes' and revoked users' certificates; until the coordinator has
        #: loaded it (:meth:`attach`), only coordinators are let through.
        self.revocations: RevocationList | None = None
        #: Where each decision worth keeping goes (``workers.front.audit``).
        self.audit: Callable[[AuditRecord], None] | None = None
        self.forwarded = 0
        self.refused = 0

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method: str = handler_call_details.method

        async def forward(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return await self._forward(method, request, context)

        return grpc.unary_unary_rpc_method_handler(forward)  # bytes in, bytes out

    def _caller(
        self, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> tuple[Identity | None, str]:
        """The caller's identity, or None and why not."""
        identity = peer_identity(context)  # type: ignore[arg-type]
        if identity is None or identity.cluster != self.cluster:
            return None, f"a client certificate of cluster {self.cluster!r} is required"
        if identity.role == COORDINATOR:
            return identity, ""
        if self.revocations is None:
            return None, "the coordinator is starting; try again in a few seconds"
        pem = peer_certificate_pem(context)  # type: ignore[arg-type]
        whose = self.revocations.revoked(pem) if pem is not None else None
        if whose is not None:
            return None, revocation_reason(whose)
        return identity, ""

    async def _forward(
        self,
        method: str,
        request: bytes,
        context: grpc.aio.ServicerContext[bytes, bytes],
        authenticate: Callable[
            [grpc.aio.ServicerContext[bytes, bytes]], tuple[Identity | None, str]
        ]
        | None = None,
    ) -> bytes:
        caller, why = (authenticate or self._caller)(context)
        name = method.rpartition("/")[2]
        if caller is None:
            self._deny(method, Call(name), None, context, why)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
        assert caller is not None
        call = read_call(name, request)
        decision = temporal_rpc(caller.role, method, call, self.grants)
        if not decision.allowed:
            self._deny(method, call, caller, context, decision.reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, decision.reason)
        upstream = self._upstream.get(method)
        if upstream is None:  # one per method the front has seen (Temporal's API is finite)
            upstream = self._upstream[method] = self._channel.unary_unary(method, None, None)
        kept = caller.role != COORDINATOR and not is_read(name)
        try:
            response: bytes = await upstream(
                request,
                metadata=_forwardable(context.invocation_metadata()),
                timeout=context.time_remaining(),
            )
        except grpc.aio.AioRpcError as err:
            if kept:
                self._record(call, caller, context, "failed", f"{err.code().name}: {err.details()}")
            context.set_trailing_metadata(_forwardable(err.trailing_metadata()))
            await context.abort(err.code(), err.details() or "")
        if kept:
            self._record(call, caller, context, "allowed", "")
        self.forwarded += 1
        return response

    def _deny(
        self,
        method: str,
        call: Call,
        caller: Identity | None,
        context: grpc.aio.ServicerContext[bytes, bytes],
        reason: str,
    ) -> None:
        self.refused += 1
        who = caller.uri() if caller is not None else UNAUTHENTICATED
        log.warning("front.refused", method=method, who=who, peer=context.peer(), why=reason)
        self._record(call, caller, context, "denied", reason)

    def _record(
        self,
        call: Call,
        caller: Identity | None,
        context: grpc.aio.ServicerContext[bytes, bytes],
        outcome: Literal["allowed", "denied", "failed"],
        reason: str,
    ) -> None:
        if self.audit is None:
            return
        self.audit(
            AuditRecord(
                actor=caller.uri() if caller is not None else UNAUTHENTICATED,
                role=caller.role if caller is not None else "",
                source=context.peer(),
                action=call.method,
                target=call.workflow_id,
                message=",".join([*([call.starts] if call.starts else []), *call.messages]),
                outcome=outcome,
                reason=reason,  # clipped by the model
            )
        )

    async def close(self) -> None:
        await self._channel.close(None)


class LocalKeyDoor(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """The local coordinator's door to :class:`TemporalProxy`: a call that presents
    ``authorization: Bearer <key>`` (what the Temporal SDK sends for an API key) is the
    role ``coordinator``; any other call is ``UNAUTHENTICATED``.

    The key is random per process (:func:`secrets.token_urlsafe`, 256 bits), is compared
    in constant time, is never logged and is never forwarded to Temporal.
    """

    def __init__(self, proxy: TemporalProxy, cluster: str) -> None:
        self.proxy = proxy
        self.key = secrets.token_urlsafe(32)
        self._expected = f"Bearer {self.key}".encode()
        self._identity = Identity(cluster=cluster, role="coordinator", name="coordinator")

    def __repr__(self) -> str:  # never the key
        return f"LocalKeyDoor({self._identity.uri()})"

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method: str = handler_call_details.method

        async def forward(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return await self.proxy._forward(method, request, context, self._caller)

        return grpc.unary_unary_rpc_method_handler(forward)

    def _caller(
        self, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> tuple[Identity | None, str]:
        presented = next(
            (v for k, v in context.invocation_metadata() or () if k == "authorization"), None
        )
        if isinstance(presented, str):
            presented = presented.encode()
        if presented is not None and hmac.compare_digest(presented, self._expected):
            return self._identity, ""
        return None, (
            "this listener serves the local coordinator only, with its API key; clients "
            "use the front's mutual-TLS address (--front-listen) with a certificate"
        )


class TemporalFront:
    """The gRPC listeners serving :class:`TemporalProxy`: ``listen`` over mutual TLS for
    everyone, and ``local_listen`` (loopback; None: none) for this process's coordinator,
    TLS with its API key (:class:`LocalKeyDoor`). The first presents the coordinator's
    certificate, replaced while it runs by :meth:`update`; the local door a certificate of
    a CA that lives in this process only (:attr:`local_material`), which the process's own
    client trusts: neither a renewal nor a rotation of the cluster CA can ever cut the
    coordinator off from Temporal (its client's TLS settings are fixed at connect)."""

    def __init__(
        self,
        listen: str,
        upstream: str,
        material: TLSMaterial,
        cluster: str,
        *,
        local_listen: str | None = LOCAL_LISTEN,
    ) -> None:
        self.listen = listen
        self.local_listen = local_listen
        self.proxy = TemporalProxy(upstream, cluster)
        self.local = LocalKeyDoor(self.proxy, cluster) if local_listen is not None else None
        self.credentials = RotatingServerCredentials(material, require_client_auth=True)
        door_ca = CertificateAuthority.ephemeral(cluster)
        key_pem, cert_pem = door_ca.issue(
            Identity(cluster, "coordinator", "local-door"),
            dns_names=[GATEWAY_SERVER_NAME],
            validity=LOCAL_DOOR_VALIDITY,
        )
        #: What the local door presents, and the CA its one client trusts.
        self.local_material = TLSMaterial(key_pem, cert_pem, door_ca.cert_pem)
        self.local_credentials = server_credentials(self.local_material, require_client_auth=False)
        self._server: grpc.aio.Server | None = None
        self._local_server: grpc.aio.Server | None = None
        self.port = 0
        self.local_port = 0

    async def start(self) -> TemporalFront:
        server = grpc_server(FRONT_LIMITS, _CHANNEL_OPTIONS)
        server.add_generic_rpc_handlers([self.proxy])
        self.port = server.add_secure_port(self.listen, self.credentials.credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.listen} for the Temporal front")
        await server.start()
        self._server = server
        if self.local is not None and self.local_listen is not None:
            local = grpc_server(FRONT_LIMITS, _CHANNEL_OPTIONS)
            local.add_generic_rpc_handlers([self.local])
            self.local_port = local.add_secure_port(self.local_listen, self.local_credentials)
            if self.local_port == 0:
                await self.stop()
                raise OSError(f"cannot listen on {self.local_listen} for the coordinator's door")
            await local.start()
            self._local_server = local
        log.info(
            "front.temporal_listening",
            listen=self.listen,
            local_port=self.local_port,
            upstream=self.proxy.upstream,
        )
        return self

    def update(self, material: TLSMaterial) -> None:
        """Serve a renewed certificate from the next handshake on (both listeners)."""
        self.credentials.update(material)

    async def stop(self, grace: float = 5.0) -> None:
        for server in (self._local_server, self._server):
            if server is not None:
                await server.stop(grace)
        self._server = self._local_server = None
        await self.proxy.close()
