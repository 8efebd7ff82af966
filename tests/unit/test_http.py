"""The kernel's HTTP pieces (cloudless.http) on their own, over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from cloudless.errors import ConfigError
from cloudless.http import (
    BodyRules,
    ConnectionLimits,
    Listener,
    ListenError,
    RequestRefused,
    SecretToken,
    authenticated,
    bearer_token,
    check_listen,
    is_loopback,
    json_bytes,
    parse_listen,
    read_json_object,
    tls_context,
)
from cloudless.pki import CertificateAuthority, Identity

RULES = BodyRules(64, too_large="too big", not_json="bad json: {error}", not_object="no object")


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8200", flag="--listen", example="x") == ("127.0.0.1", 8200)
    assert parse_listen("[::1]:1", flag="--listen", example="x") == ("::1", 1)
    assert parse_listen(":80", flag="--listen", example="x") == ("0.0.0.0", 80)
    for bad in ("8200", "host:", "h:99999", "h:x"):
        message = re.escape(f"--flag {bad!r} must look like 1.2.3.4:5")
        with pytest.raises(ConfigError, match=message):
            parse_listen(bad, flag="--flag", example="1.2.3.4:5")
    assert is_loopback("127.0.0.1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    check_listen("127.0.0.1", tls=False, allow_plaintext=False, refusal="no")
    check_listen("0.0.0.0", tls=True, allow_plaintext=False, refusal="no")
    check_listen("0.0.0.0", tls=False, allow_plaintext=True, refusal="no")
    with pytest.raises(ConfigError, match=r"^use TLS$"):
        check_listen("0.0.0.0", tls=False, allow_plaintext=False, refusal="use TLS")


def test_tokens() -> None:
    token = SecretToken("s3cret")
    assert token.matches("s3cret")
    assert not token.matches("s3cre") and not token.matches("") and not token.matches(None)
    assert "s3cret" not in repr(token)
    with pytest.raises(ConfigError):
        SecretToken("")
    assert bearer_token({"Authorization": "Bearer  abc "}) == "abc"
    assert bearer_token({"Authorization": "bearer abc"}) == "abc"
    assert bearer_token({"Authorization": "Basic abc"}) is None
    assert bearer_token({"Authorization": "Bearer "}) is None
    assert bearer_token({}) is None


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=json_bytes({"oops": message}))


async def _echo(request: web.BaseRequest) -> web.StreamResponse:
    if request.path == "/ignore":
        return web.Response(text="not reading your body")
    try:
        data = await read_json_object(request, RULES)
    except RequestRefused as err:
        response = _error(err.status, err.message)
        if err.close:
            response.force_close()
        return response
    return web.Response(body=json_bytes({"method": request.method, "got": data}))


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    served = Listener("127.0.0.1", 0, limits=ConnectionLimits(idle_timeout=5))
    await served.start(_echo, render_error=_error, any_method=True)
    yield served
    await served.stop()


def _exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes; everything the server answers until it closes (or goes quiet)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(data)
        conn.settimeout(1)
        out = b""
        try:
            while chunk := conn.recv(65536):
                out += chunk
        except TimeoutError:
            return out + b"<still open>"
    return out + b"<closed>"


async def _send(served: Listener, data: bytes) -> bytes:
    return await asyncio.to_thread(_exchange, served.address[1], data)


async def test_bodies_are_bounded_and_json(listener: Listener) -> None:
    ok = await _send(listener, b'LIST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n{"a": 1}')
    assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b"<still open>")
    assert json.loads(ok.split(b"\r\n\r\n", 1)[1].split(b"<")[0]) == {
        "method": "LIST",  # an extension method, as Vault's API uses
        "got": {"a": 1},
    }
    big = await _send(listener, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 413") and b'"too big"' in big
    assert big.endswith(b"<closed>")  # answered without waiting for (or reading) the body
    chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert (await _send(listener, chunked)).startswith(b"HTTP/1.1 411")
    bad = await _send(listener, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{x")
    assert bad.startswith(b"HTTP/1.1 400") and b"bad json" in bad
    array = await _send(listener, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]")
    assert array.startswith(b"HTTP/1.1 400") and b"no object" in array


async def test_an_unread_body_closes_the_connection(listener: Listener) -> None:
    head = b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n"
    answer = await _send(listener, head + b"partial")
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer
    assert answer.endswith(b"<closed>")


async def test_malformed_requests_get_the_servers_error_shape(listener: Listener) -> None:
    answer = await _send(listener, b"NOT HTTP AT ALL\r\n\r\n")
    assert b" 400 " in answer.split(b"\r\n")[0] and b'"oops"' in answer
    assert answer.endswith(b"<closed>")


async def test_a_taken_port_is_a_listen_error(listener: Listener) -> None:
    second = Listener("127.0.0.1", listener.address[1])
    with pytest.raises(ListenError, match=r"cannot listen on 127\.0\.0\.1:"):
        await second.start(_echo, render_error=_error)
    assert listener.url == f"http://127.0.0.1:{listener.address[1]}"
    with pytest.raises(RuntimeError, match="not started"):
        _ = second.address


# --------------------------------------------------------------------------- limits
#
# Every socket here is an asyncio stream on the test's own loop, which also runs the
# listener: "the server has seen it" is awaited through a request on a later connection
# (the kernel hands connections over in order), closes are awaited as EOF, with a bound.

GOOD = "good-token"
#: Seconds a deadline may be seen late on a loaded (shared) machine.
SLACK = 2.0
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _guarded(request: web.BaseRequest) -> web.StreamResponse:
    """200 for anyone; ``Authorization: Bearer good-token`` marks the connection as an
    authenticated client's; ``/hold`` answers once :data:`HOLD` is set."""
    if bearer_token(request.headers) == GOOD:
        authenticated(request)
    if request.path == "/hold":
        await HOLD.wait()
    return web.Response(text="ok")


HOLD = asyncio.Event()
HOLD_AUTHENTICATED = (
    f"GET /hold HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {GOOD}\r\n\r\n".encode()
)


@contextlib.asynccontextmanager
async def _limited(
    limits: ConnectionLimits, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Listener]:
    global HOLD  # an event of this test's loop
    HOLD = asyncio.Event()
    served = Listener("127.0.0.1", 0, limits=limits, ssl_context=tls)
    await served.start(_guarded, render_error=_error)
    try:
        yield served
    finally:
        HOLD.set()
        await served.stop()


@contextlib.asynccontextmanager
async def _streams(
    served: Listener, count: int, *, source: str = "127.0.0.1", tls: ssl.SSLContext | None = None
) -> AsyncIterator[list[Stream]]:
    opened: list[Stream] = []
    try:
        for _ in range(count):
            opened.append(
                await asyncio.open_connection(
                    "127.0.0.1", served.address[1], local_addr=(source, 0), ssl=tls
                )
            )
        yield opened
    finally:
        for _, writer in opened:
            writer.transport.abort()


async def _ask(stream: Stream, path: str = "/", token: str | None = None) -> bytes:
    """One request on a kept-alive stream; the status line and body."""
    reader, writer = stream
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        body = await reader.readexactly(length)
    return head.split(b"\r\n", 1)[0] + b" " + body


async def _closed(stream: Stream, within: float) -> bool:
    """True once the server has closed ``stream`` (whatever it said first)."""
    try:
        async with asyncio.timeout(within):
            await stream[0].read()
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        pass
    return True


def test_limits_are_checked_and_fitted_to_the_descriptor_limit() -> None:
    with pytest.raises(ConfigError, match="max_per_peer must be a whole number of at least 1"):
        ConnectionLimits(max_per_peer=0)
    with pytest.raises(ConfigError, match="header_timeout must be a positive number"):
        ConnectionLimits(header_timeout=0)
    limits = ConnectionLimits(max_connections=1024, max_per_peer=256)
    assert limits.fitted(20_000) is limits
    assert limits.fitted(1024) == ConnectionLimits(max_connections=512, max_per_peer=256)
    assert limits.fitted(300) == ConnectionLimits(max_connections=150, max_per_peer=150)


async def test_an_address_over_its_limit_pushes_out_its_own_oldest_strangers() -> None:
    async with (
        _limited(ConnectionLimits(max_connections=100, max_per_peer=3)) as served,
        _streams(served, 10) as flood,
    ):
        assert all([await _closed(s, 2) for s in flood[:7]])  # at once, oldest first
        async with _streams(served, 1) as (client,):
            assert await _ask(client) == b"HTTP/1.1 200 OK ok"
            assert await _closed(flood[7], 2)  # the client's connection pushed it out
            assert served.connections_from("127.0.0.1") == 3


async def test_a_full_listener_pushes_out_the_largest_addresss_strangers() -> None:
    limits = ConnectionLimits(max_connections=4, max_per_peer=100)
    async with (
        _limited(limits) as served,
        _streams(served, 1) as (neighbour,),
        _streams(served, 3, source="127.0.0.2") as flood,
        _streams(served, 1) as (client,),
    ):
        assert await _ask(client) == b"HTTP/1.1 200 OK ok"
        assert await _closed(flood[0], 2)
        # The neighbour, older than every flood socket, was left alone.
        assert await _ask(neighbour) == b"HTTP/1.1 200 OK ok"
        assert served.connections_from("127.0.0.2") == 2


async def test_authenticated_clients_are_pushed_out_after_strangers_and_never_mid_request() -> None:
    async with (
        _limited(ConnectionLimits(max_connections=3, max_per_peer=100)) as served,
        _streams(served, 1) as (known,),
    ):
        assert await _ask(known, token=GOOD) == b"HTTP/1.1 200 OK ok"
        async with _streams(served, 3) as strangers:
            assert await _ask(strangers[2]) == b"HTTP/1.1 200 OK ok"
            assert await _closed(strangers[0], 2)  # a stranger gave way, not the client
            assert await _ask(known, token=GOOD) == b"HTTP/1.1 200 OK ok"
            # A stranger's request in progress may be cut short ...
            strangers[1][1].write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            strangers[2][1].write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            async with _streams(served, 2) as more:
                assert await _closed(strangers[1], 2) and await _closed(strangers[2], 2)
                # ... an authenticated one's never: with all three busy, a newcomer is
                # refused at once.
                for stream in (known, *more):
                    stream[1].write(HOLD_AUTHENTICATED)
                async with _streams(served, 1) as (late,):
                    refusal = await asyncio.wait_for(late[0].read(), 5)
                assert refusal.startswith(b"HTTP/1.1 503") and b'"oops"' in refusal
                assert b"Connection: close" in refusal
                assert served.connections == 3
                HOLD.set()
                for stream in (known, *more):
                    async with asyncio.timeout(5):
                        assert (await stream[0].readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
                # Now idle, the oldest authenticated connection gives way to a newcomer.
                async with _streams(served, 1) as (newcomer,):
                    assert await _ask(newcomer) == b"HTTP/1.1 200 OK ok"
                    assert await _closed(known, 2)


async def test_a_request_head_is_due_within_the_header_timeout() -> None:
    limits = ConnectionLimits(header_timeout=0.5, idle_timeout=30)
    async with _limited(limits) as served, _streams(served, 4) as (silent, slow, stranger, known):
        started = time.monotonic()
        assert await _ask(known, token=GOOD) == b"HTTP/1.1 200 OK ok"
        assert await _ask(stranger) == b"HTTP/1.1 200 OK ok"
        slow[1].write(b"GET / HTTP/1.1\r\nHost: x\r\n")

        async def drip() -> None:  # a header byte every 50 ms: never a whole head
            while True:
                slow[1].write(b"X")
                await asyncio.sleep(0.05)

        dripping = asyncio.create_task(drip())
        try:
            assert await _closed(slow, 2)
        finally:
            dripping.cancel()
        assert await _closed(silent, 2) and await _closed(stranger, 2)
        assert time.monotonic() - started < 0.5 + SLACK
        # The authenticated client gets the idle timeout instead, and is still served.
        assert await _ask(known, token=GOOD) == b"HTTP/1.1 200 OK ok"
        assert served.connections == 1


async def test_an_authenticated_connection_idles_for_the_idle_timeout() -> None:
    limits = ConnectionLimits(header_timeout=0.3, idle_timeout=1.0)
    async with _limited(limits) as served, _streams(served, 1) as (known,):
        assert await _ask(known, token=GOOD) == b"HTTP/1.1 200 OK ok"
        assert not await _closed(known, 0.6)  # past the header timeout
        assert await _ask(known, token=GOOD) == b"HTTP/1.1 200 OK ok"
        started = time.monotonic()
        assert await _closed(known, 3)
        assert 0.8 < time.monotonic() - started < 1.0 + SLACK
        assert served.connections == 0


def _certificate(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts: a cluster CA's certificate for 127.0.0.1."""
    ca = CertificateAuthority.bootstrap(directory, "t")
    key, cert = ca.issue(Identity("t", "coordinator", "srv"), ip_addresses=["127.0.0.1"])
    (directory / "s.key").write_bytes(key)
    (directory / "s.crt").write_bytes(cert)
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    return tls_context(directory / "s.crt", directory / "s.key"), client


async def test_tls_handshakes_are_counted_and_timed_out_like_request_heads(
    tmp_path: Path,
) -> None:
    server_tls, client_tls = _certificate(tmp_path)
    limits = ConnectionLimits(max_connections=100, max_per_peer=5, header_timeout=1.0)
    async with _limited(limits, server_tls) as served, _streams(served, 8) as silent:
        # Plain TCP, never a ClientHello: counted at accept, the oldest three pushed out.
        assert all([await _closed(s, 2) for s in silent[:3]])
        async with _streams(served, 1, tls=client_tls) as (client,):
            assert await _ask(client, token=GOOD) == b"HTTP/1.1 200 OK ok"
            assert await _closed(silent[3], 2)
            started = time.monotonic()
            assert all([await _closed(s, 2) for s in silent[4:]])  # the handshake deadline
            assert time.monotonic() - started < 1.0 + SLACK
            assert await _ask(client, token=GOOD) == b"HTTP/1.1 200 OK ok"
            assert served.connections == 1
