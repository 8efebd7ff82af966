"""The codec endpoint over real HTTP on loopback: auth, CORS, body validation."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload

from cloudless.codec import ENCODING, META_ENCODING, TransitPayloadCodec
from cloudless.errors import ConfigError
from cloudless.http import ConnectionLimits
from tests.unit.test_codec import MemoryKeys
from workers.codec_server import (
    MAX_BODY_BYTES,
    SESSION_COOKIE,
    CodecServer,
    CodecServerConfig,
    load_or_create_token,
)

UI = "http://127.0.0.1:8233"
Response = tuple[int, http.client.HTTPMessage, str]


class Endpoint:
    def __init__(self, server: CodecServer, token: str) -> None:
        self.server, self.token = server, token

    async def request(
        self, method: str, path: str, body: bytes | None = None, **headers: str
    ) -> Response:
        return await asyncio.to_thread(self._request, method, path, body, headers)

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            names = {k.replace("_", "-"): v for k, v in headers.items()}
            conn.request(method, path, body=body, headers=names)
            response = conn.getresponse()
            return response.status, response.headers, response.read().decode()
        finally:
            conn.close()

    async def post(self, path: str, payloads: list[Payload], **headers: str) -> Response:
        body = json.dumps({"payloads": [json_format.MessageToDict(p) for p in payloads]})
        return await self.request(
            "POST", path, body.encode(), Content_Type="application/json", **headers
        )

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[Endpoint]:
    token = load_or_create_token(tmp_path)
    codec = TransitPayloadCodec(MemoryKeys())
    server = await CodecServer(codec, token, listen="127.0.0.1:0").start()
    yield Endpoint(server, token)
    await server.stop()


def plain(data: bytes) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=data)


def payloads_of(body: str) -> list[Payload]:
    return [json_format.ParseDict(p, Payload()) for p in json.loads(body)["payloads"]]


def test_token_file_is_private_and_stable(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path)
    mode = stat.S_IMODE((tmp_path / "codec-token").stat().st_mode)
    assert mode == 0o600
    assert load_or_create_token(tmp_path) == token
    assert len(token) > 40


async def test_no_auth_is_401(endpoint: Endpoint) -> None:
    status, _, body = await endpoint.post("/decode", [plain(b"1")])
    assert status == 401 and "unauthorized" in json.loads(body)["error"]
    status, _, _ = await endpoint.post("/decode", [plain(b"1")], Authorization="Bearer nope")
    assert status == 401
    cookie = f"{SESSION_COOKIE}=forged"
    status, _, _ = await endpoint.post("/decode", [plain(b"1")], Cookie=cookie)
    assert status == 401


async def test_encode_then_decode_with_bearer(endpoint: Endpoint) -> None:
    original = plain(b'{"v": "secret"}')
    status, _, body = await endpoint.post("/encode", [original], **endpoint.bearer())
    assert status == 200, body
    (sealed,) = payloads_of(body)
    assert sealed.metadata[META_ENCODING] == ENCODING and b"secret" not in sealed.data
    status, _, body = await endpoint.post("/decode", [sealed], **endpoint.bearer())
    assert status == 200, body
    assert payloads_of(body) == [original]


async def test_endpoint_under_a_prefix(endpoint: Endpoint) -> None:
    status, _, body = await endpoint.post("/ns/default/decode", [plain(b"1")], **endpoint.bearer())
    assert status == 200 and payloads_of(body) == [plain(b"1")]
    status, _, _ = await endpoint.post("/other", [plain(b"1")], **endpoint.bearer())
    assert status == 404


async def test_login_cookie_authorizes_the_browser(endpoint: Endpoint) -> None:
    status, _, _ = await endpoint.request("GET", "/login?token=wrong")
    assert status == 401
    status, headers, page = await endpoint.request("GET", f"/login?token={endpoint.token}")
    assert status == 200 and "Logged in" in page
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert endpoint.token not in cookie
    assert headers["Referrer-Policy"] == "no-referrer"
    session = cookie.split(";")[0]
    status, headers, body = await endpoint.post(
        "/decode", [plain(b"2")], Cookie=session, Origin=UI, X_Namespace="default"
    )
    assert status == 200, body
    assert headers["Access-Control-Allow-Origin"] == UI
    assert headers["Access-Control-Allow-Credentials"] == "true"


async def test_cors_preflight(endpoint: Endpoint) -> None:
    status, headers, _ = await endpoint.request(
        "OPTIONS",
        "/decode",
        Origin=UI,
        Access_Control_Request_Method="POST",
        Access_Control_Request_Headers="content-type,x-namespace",
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == UI
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    allowed = headers["Access-Control-Allow-Headers"].lower()
    assert "x-namespace" in allowed and "content-type" in allowed
    assert "Origin" in headers["Vary"]
    status, headers, _ = await endpoint.request(
        "OPTIONS", "/decode", Origin="https://evil.example", Access_Control_Request_Method="POST"
    )
    assert status == 403 and "Access-Control-Allow-Origin" not in headers


async def test_foreign_origin_is_refused_even_with_a_session(endpoint: Endpoint) -> None:
    _, headers, _ = await endpoint.request("GET", f"/login?token={endpoint.token}")
    session = headers["Set-Cookie"].split(";")[0]
    status, _, _ = await endpoint.post(
        "/decode", [plain(b"3")], Cookie=session, Origin="https://evil.example"
    )
    assert status == 403


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b'{"payloads": "x"}', "application/json", 400, "payloads"),
        (b"[]", "application/json", 400, "payloads"),
        (b'{"payloads": [{"nope": 5}]}', "application/json", 400, "Temporal payloads"),
        (b'{"payloads": []}', "text/plain", 415, "application/json"),
    ],
)
async def test_bad_bodies(
    endpoint: Endpoint, body: bytes, content_type: str, status: int, message: str
) -> None:
    got, _, answer = await endpoint.request(
        "POST", "/decode", body, Content_Type=content_type, **endpoint.bearer()
    )
    assert got == status and message in json.loads(answer)["error"]


async def test_oversized_body_is_413_without_reading_it(endpoint: Endpoint) -> None:
    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", endpoint.server.port), timeout=10) as s:
            s.sendall(
                b"POST /decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {endpoint.token}\r\n".encode()
                + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
            )
            return s.recv(4096)

    answer = await asyncio.to_thread(send)
    assert answer.startswith(b"HTTP/1.1 413")


async def test_tampered_payload_is_422(endpoint: Endpoint) -> None:
    _, _, body = await endpoint.post("/encode", [plain(b"x")], **endpoint.bearer())
    (sealed,) = payloads_of(body)
    sealed.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    status, _, answer = await endpoint.post("/decode", [sealed], **endpoint.bearer())
    assert status == 422 and "authentication" in json.loads(answer)["error"]


async def test_plaintext_listen_off_loopback_is_refused(tmp_path: Path) -> None:
    codec: Any = TransitPayloadCodec(MemoryKeys())
    with pytest.raises(ConfigError, match="without TLS"):
        CodecServer.from_config(CodecServerConfig(listen="0.0.0.0:0"), codec, tmp_path)
    assert not (tmp_path / "codec-token").exists()  # refused before touching any file
    with pytest.raises(ConfigError, match="go together"):
        CodecServer.from_config(
            CodecServerConfig(listen="127.0.0.1:0", tls_cert=tmp_path / "c.pem"), codec, tmp_path
        )


async def test_authorized_connections_outlast_the_header_deadline(tmp_path: Path) -> None:
    """The operator token marks a connection authenticated (cloudless.http): it may idle
    for the idle timeout; a refused caller's connection gets only the header deadline."""
    limits = ConnectionLimits(header_timeout=0.5, idle_timeout=30)
    server = await CodecServer(
        TransitPayloadCodec(MemoryKeys()), "op-token", listen="127.0.0.1:0", limits=limits
    ).start()
    body = json.dumps({"payloads": [json_format.MessageToDict(plain(b'"x"'))]}).encode()

    async def encode(token: str) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await asyncio.wait_for(reader.readexactly(length), 5)
        return head.split(b"\r\n")[0], reader, writer

    try:
        status, known, known_writer = await encode("op-token")
        assert status == b"HTTP/1.1 200 OK"
        status, stranger, stranger_writer = await encode("wrong")
        assert status == b"HTTP/1.1 401 Unauthorized"
        try:
            assert await asyncio.wait_for(stranger.read(), 5) == b""  # the header deadline
            assert not known.at_eof()
            assert server.listener.connections == 1  # the authorized one, still held
        finally:
            known_writer.transport.abort()
            stranger_writer.transport.abort()
    finally:
        await server.stop()
