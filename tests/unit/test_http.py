"""The kernel's HTTP pieces (cloudless.http) on their own, over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from cloudless.errors import ConfigError
from cloudless.http import (
    BodyRules,
    Listener,
    ListenError,
    RequestRefused,
    SecretToken,
    bearer_token,
    check_listen,
    is_loopback,
    json_bytes,
    parse_listen,
    read_json_object,
)

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
    served = Listener("127.0.0.1", 0)
    await served.start(_echo, render_error=_error, idle_timeout=5, any_method=True)
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
        await second.start(_echo, render_error=_error, idle_timeout=5)
    assert listener.url == f"http://127.0.0.1:{listener.address[1]}"
    with pytest.raises(RuntimeError, match="not started"):
        _ = second.address
