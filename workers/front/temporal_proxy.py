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
"""

from __future__ import annotations

import grpc
import structlog

from cloudless.pki import Identity
from cloudless.tls import GrpcLimits, RotatingServerCredentials, TLSMaterial, peer_identity
from cloudless.tls import server as grpc_server
from policies.access import temporal_rpc

log = structlog.get_logger("cloudless.front")

#: Temporal's own limits: a 2 MB payload, history pages of several MB.
MAX_MESSAGE_BYTES = 128 * 2**20
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
#: A worker holds dozens of long polls (60 s each) on one connection: room for them.
FRONT_LIMITS = GrpcLimits(max_connections=1024, max_streams=2048)
#: Metadata gRPC sets per hop, never forwarded.
_HOP_BY_HOP = frozenset({"user-agent", "te", "content-type", "grpc-accept-encoding"})


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
        self._channel = grpc.aio.insecure_channel(upstream, options=_CHANNEL_OPTIONS)
        self.forwarded = 0
        self.refused = 0

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method: str = handler_call_details.method

        async def forward(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return await self._forward(method, request, context)

        return grpc.unary_unary_rpc_method_handler(forward)  # bytes in, bytes out

    def _caller(self, context: grpc.aio.ServicerContext[bytes, bytes]) -> Identity | None:
        identity = peer_identity(context)  # type: ignore[arg-type]
        if identity is None or identity.cluster != self.cluster:
            return None
        return identity

    async def _forward(
        self, method: str, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        caller = self._caller(context)
        if caller is None:
            self.refused += 1
            log.warning("front.refused", method=method, peer=context.peer(), why="identity")
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"a client certificate of cluster {self.cluster!r} is required",
            )
        assert caller is not None
        decision = temporal_rpc(caller.role, method)
        if not decision.allowed:
            self.refused += 1
            log.warning(
                "front.refused", method=method, who=caller.uri(), peer=context.peer(),
                why=decision.reason,
            )  # fmt: skip
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, decision.reason)
        call = self._channel.unary_unary(method, None, None)  # bytes in, bytes out
        try:
            response: bytes = await call(
                request,
                metadata=_forwardable(context.invocation_metadata()),
                timeout=context.time_remaining(),
            )
        except grpc.aio.AioRpcError as err:
            context.set_trailing_metadata(_forwardable(err.trailing_metadata()))
            await context.abort(err.code(), err.details() or "")
        self.forwarded += 1
        return response

    async def close(self) -> None:
        await self._channel.close(None)


class TemporalFront:
    """The gRPC listener serving :class:`TemporalProxy` over mutual TLS."""

    def __init__(self, listen: str, upstream: str, material: TLSMaterial, cluster: str) -> None:
        self.listen = listen
        self.proxy = TemporalProxy(upstream, cluster)
        self.credentials = RotatingServerCredentials(material, require_client_auth=True)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> TemporalFront:
        server = grpc_server(FRONT_LIMITS, _CHANNEL_OPTIONS)
        server.add_generic_rpc_handlers([self.proxy])
        self.port = server.add_secure_port(self.listen, self.credentials.credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.listen} for the Temporal front")
        await server.start()
        self._server = server
        log.info("front.temporal_listening", listen=self.listen, upstream=self.proxy.upstream)
        return self

    def update(self, material: TLSMaterial) -> None:
        """Serve a renewed certificate from the next handshake on."""
        self.credentials.update(material)

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self.proxy.close()
