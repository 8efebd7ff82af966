"""Command-line options for the gRPC listener limits (``cloudless.tls.GrpcLimits``),
declared once for every process that serves gRPC (the coordinator and the agent), so a
flag, its environment variable and its help read the same everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = [
    "GrpcHandshakeTimeout",
    "GrpcIdleTimeout",
    "GrpcMaxConnections",
    "GrpcMaxStreams",
]

GrpcMaxConnections = Annotated[
    int,
    typer.Option(
        envvar="CLOUDLESS_GRPC_MAX_CONNECTIONS",
        min=1,
        help="Connections each gRPC listener holds at most.",
    ),
]
GrpcMaxStreams = Annotated[
    int,
    typer.Option(
        envvar="CLOUDLESS_GRPC_MAX_STREAMS", min=1, help="Concurrent RPCs per gRPC connection."
    ),
]
GrpcHandshakeTimeout = Annotated[
    float,
    typer.Option(
        envvar="CLOUDLESS_GRPC_HANDSHAKE_TIMEOUT",
        help="Seconds a gRPC connection has to finish its TLS handshake.",
    ),
]
GrpcIdleTimeout = Annotated[
    float,
    typer.Option(
        envvar="CLOUDLESS_GRPC_IDLE_TIMEOUT",
        help="Seconds a gRPC connection without an RPC stays open.",
    ),
]
