"""The limits every Cloudless gRPC server runs with (cloudless.tls.GrpcLimits), checked
against a real gRPC server on loopback: that gRPC enforces what the options say."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from cloudless import tls
from cloudless.errors import ConfigError
from cloudless.tls import GrpcLimits

ECHO = "/cloudless.test.Echo/Echo"


def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _serve(limits: GrpcLimits) -> tuple[grpc.aio.Server, int]:
    server = tls.server(limits)
    handler = grpc.method_handlers_generic_handler(
        "cloudless.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _call(channel: grpc.aio.Channel) -> bytes:
    echo = channel.unary_unary(ECHO, request_serializer=None, response_deserializer=None)
    answer: bytes = await echo(b"hi", timeout=5)
    return answer


async def _closed(reader: asyncio.StreamReader, within: float) -> bool:
    """True once the server has closed the connection (whatever it sent first)."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


@pytest.fixture
async def streams() -> AsyncIterator[list[asyncio.StreamWriter]]:
    opened: list[asyncio.StreamWriter] = []
    yield opened
    for writer in opened:
        writer.transport.abort()


def test_options_say_what_the_limits_say() -> None:
    limits = GrpcLimits(max_connections=100, max_streams=7, handshake_timeout=2.5)
    assert dict(limits.options(open_files=20_000)) == {
        "grpc.max_allowed_incoming_connections": 100,
        "grpc.max_concurrent_streams": 7,
        "grpc.server_handshake_timeout_ms": 2500,
        "grpc.max_connection_idle_ms": 300_000,
    }
    # Capped at half the descriptor limit; an age limit only where asked for.
    aged = dict(GrpcLimits(max_age=60, age_grace=5).options(open_files=1000))
    assert aged["grpc.max_allowed_incoming_connections"] == 500
    assert aged["grpc.max_connection_age_ms"] == 60_000
    assert aged["grpc.max_connection_age_grace_ms"] == 5000
    with pytest.raises(ConfigError, match="gRPC max_streams must be a whole number"):
        GrpcLimits(max_streams=0)
    with pytest.raises(ConfigError, match="gRPC handshake_timeout must be a positive number"):
        GrpcLimits(handshake_timeout=0)
    with pytest.raises(ConfigError, match="gRPC max_age must be a positive number"):
        GrpcLimits(max_age=-1)


async def test_connections_over_the_cap_are_closed_at_once_and_silent_ones_in_time(
    streams: list[asyncio.StreamWriter],
) -> None:
    server, port = await _serve(GrpcLimits(max_connections=3, handshake_timeout=3.0))
    try:
        readers = []
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            readers.append(reader)
            streams.append(writer)
        started = time.monotonic()
        # The last two are over the cap: closed at accept, long before the deadline.
        assert await _closed(readers[3], 2) and await _closed(readers[4], 2)
        # The three held never sent an HTTP/2 preface: closed at the handshake deadline
        # (with slack for a loaded machine).
        assert all([await _closed(r, 6) for r in readers[:3]])
        assert 2.9 < time.monotonic() - started < 3.0 + 2.0
        # And the slots are free again.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await _call(channel) == b"hi"
    finally:
        await server.stop(None)


async def test_a_peer_that_pings_too_often_is_sent_away() -> None:
    """Keepalive is enforced: our clients ping every 20 s (KEEPALIVE_OPTIONS), more than
    the 10 s the servers accept; one pinging every 0.5 s gets a GOAWAY after two strikes."""
    server, port = await _serve(GrpcLimits())
    abusive = [
        ("grpc.keepalive_time_ms", 500),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=abusive) as channel:
            assert await _call(channel) == b"hi"
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            async with asyncio.timeout(10):
                await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
            assert channel.get_state() != grpc.ChannelConnectivity.READY
    finally:
        await server.stop(None)
