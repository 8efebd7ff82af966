"""The codec endpoint: Temporal's remote codec protocol, so the Temporal UI and the
``temporal`` CLI can show decrypted payloads to an authorized operator.

``POST /decode`` and ``POST /encode`` take and return ``{"payloads": [...]}`` in protobuf
JSON form. Every request needs the operator token, as ``Authorization: Bearer <token>``
or as the session cookie that ``GET /login?token=<token>`` sets for a browser. The token
lives in ``<coordinator dir>/codec-token`` (0600), made on first start.

It is served with the kernel's HTTP stack (:mod:`cloudless.http`, aiohttp) on the
coordinator's own event loop, where the codec and its key cache live: a request awaits
the codec directly. Design notes: ``docs/design/payload-codec.md``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import html
import re
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs, urlsplit

import structlog
from aiohttp import web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from cloudless.codec import CODEC_TOKEN_FILE, PayloadCodecError, TransitPayloadCodec
from cloudless.errors import ConfigError, PKIError
from cloudless.http import (
    BodyRules,
    ConnectionLimits,
    Listener,
    ListenError,
    RequestRefused,
    SecretToken,
    authenticated,
    bearer_token,
    json_bytes,
    read_json_object,
    tls_context,
)
from cloudless.http import check_listen as check_listen_rule
from cloudless.http import parse_listen as parse_listen_rule
from cloudless.pki import read_private_file, write_private_file

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_ORIGINS",
    "MAX_BODY_BYTES",
    "SESSION_COOKIE",
    "CodecServer",
    "CodecServerConfig",
    "ListenError",
    "Sessions",
    "check_listen",
    "cookie",
    "load_or_create_token",
    "parse_listen",
    "read_payloads",
]

log = structlog.get_logger("cloudless.codec_server")
T = TypeVar("T")

DEFAULT_LISTEN = "127.0.0.1:8234"
DEFAULT_ORIGINS = ("http://127.0.0.1:8233", "http://localhost:8233")
SESSION_COOKIE = "cloudless_codec_session"
SESSION_TTL_SECONDS = 12 * 3600
MAX_SESSIONS = 1024
MAX_BODY_BYTES = 8 * 2**20  # a few 2 MB Temporal payloads plus base64
CODEC_TIMEOUT_SECONDS = 60.0
#: Connection limits (see docs/operations.md#limits).
LIMITS = ConnectionLimits(body_timeout=30.0, idle_timeout=30.0)
ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization"
SERVER_HEADER = "cloudless-codec"
_SAFE_PATH = re.compile(r"[A-Za-z0-9/_.-]*")  # goes into the cookie's Path attribute

_BODY = BodyRules(
    MAX_BODY_BYTES,
    too_large=f"body over {MAX_BODY_BYTES} bytes",
    length_required="Content-Length is required",
    chunked="chunked bodies are not supported; send Content-Length",
    not_json="body is not valid JSON: {error}",
    not_object='body must be a JSON object {"payloads": [...]}',
    read_timeout=LIMITS.body_timeout,
)


@dataclass(frozen=True)
class CodecServerConfig:
    """How the coordinator serves the codec endpoint (``--codec-*`` flags)."""

    listen: str = DEFAULT_LISTEN
    origins: tuple[str, ...] = DEFAULT_ORIGINS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_plaintext: bool = False
    limits: ConnectionLimits = LIMITS


def load_or_create_token(directory: Path) -> str:
    """The operator token in ``directory/codec-token``, created 0600 on first use."""
    path = directory / CODEC_TOKEN_FILE
    if not path.exists():
        token = "clc." + secrets.token_urlsafe(32)
        try:
            write_private_file(path, token.encode() + b"\n", overwrite=False)
            log.info("codec.token_created", path=str(path))  # the path, never the token
            return token
        except FileExistsError:
            pass  # another coordinator on this state dir won the race
        except PKIError as err:
            raise ConfigError(str(err)) from err
    try:
        token = read_private_file(path).decode().strip()
    except (PKIError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot use codec token file {path}: {err}") from err
    if not token:
        raise ConfigError(f"codec token file {path} is empty")
    return token


def parse_listen(value: str) -> tuple[str, int]:
    return parse_listen_rule(value, flag="--codec-listen", example="127.0.0.1:8234")


def check_listen(host: str, *, tls: bool, allow_plaintext: bool) -> None:
    """Plain HTTP would carry the operator token and decrypted payloads in clear."""
    check_listen_rule(
        host,
        tls=tls,
        allow_plaintext=allow_plaintext,
        refusal=f"refusing to serve the codec endpoint on {host!r} without TLS: the operator "
        "token and decrypted payloads would cross the network in clear. Give --codec-tls-cert/"
        "--codec-tls-key, listen on 127.0.0.1, or pass --codec-insecure-allow-plaintext if "
        "a TLS proxy or private link protects it",
    )


class Sessions(Generic[T]):
    """Browser sessions, each holding a value (who logged in); only the sessions'
    digests are kept. Used from one event loop only, so it needs no lock."""

    def __init__(self, ttl: float = SESSION_TTL_SECONDS, limit: int = MAX_SESSIONS) -> None:
        self.ttl = ttl
        self._limit = limit
        self._entries: dict[bytes, tuple[float, T]] = {}

    @staticmethod
    def _key(session: str) -> bytes:
        return hashlib.sha256(session.encode()).digest()

    def create(self, value: T) -> str:
        session = secrets.token_urlsafe(32)
        now = time.monotonic()
        self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
        while len(self._entries) >= self._limit:  # oldest first (insertion order)
            del self._entries[next(iter(self._entries))]
        self._entries[self._key(session)] = (now + self.ttl, value)
        return session

    def get(self, session: str | None) -> T | None:
        if not session:
            return None
        entry = self._entries.get(self._key(session))
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def valid(self, session: str) -> bool:
        return self.get(session) is not None

    def end(self, session: str | None) -> None:
        if session:
            self._entries.pop(self._key(session), None)

    def end_where(self, match: Callable[[T], bool]) -> int:
        """End every session whose value matches (a revoked user's); how many ended."""
        doomed = [k for k, (_, value) in self._entries.items() if match(value)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)


Handler = Callable[[web.BaseRequest, str], Awaitable[web.Response]]


class CodecServer:
    """Serves the codec over HTTP(S) on the running event loop (the coordinator's).

    ``await start()`` binds (:class:`ListenError` if the port is taken) and ``await
    stop()`` closes it.
    """

    def __init__(
        self,
        codec: PayloadCodec,
        token: str,
        *,
        listen: str = DEFAULT_LISTEN,
        origins: Sequence[str] = DEFAULT_ORIGINS,
        ssl_context: ssl.SSLContext | None = None,
        allow_plaintext: bool = False,
        limits: ConnectionLimits = LIMITS,
    ) -> None:
        host, port = parse_listen(listen)
        check_listen(host, tls=ssl_context is not None, allow_plaintext=allow_plaintext)
        # It shows history, never feeds a workflow: plaintext shows as it is, and a
        # payload this cluster's key did not seal answers 422 (not a refusal marker).
        self.codec = codec.for_display() if isinstance(codec, TransitPayloadCodec) else codec
        self.origins = frozenset(o.rstrip("/") for o in origins)
        self.sessions: Sessions[bool] = Sessions()
        self._token = SecretToken(token)
        self._listener = Listener(host, port, ssl_context=ssl_context, limits=limits)
        self._body = dataclasses.replace(_BODY, read_timeout=self._listener.limits.body_timeout)
        self._routes: dict[str, Handler] = {
            "OPTIONS": self._preflight,
            "POST": self._codec,
            "GET": self._login,
        }

    @classmethod
    def from_config(
        cls, config: CodecServerConfig, codec: PayloadCodec, token_dir: Path
    ) -> CodecServer:
        """Build from flags, checking the address before any file is touched."""
        host, _ = parse_listen(config.listen)
        if (config.tls_cert is None) != (config.tls_key is None):
            raise ConfigError("--codec-tls-cert and --codec-tls-key go together")
        check_listen(host, tls=config.tls_cert is not None, allow_plaintext=config.allow_plaintext)
        context = None
        if config.tls_cert is not None and config.tls_key is not None:
            context = tls_context(config.tls_cert, config.tls_key)
        return cls(
            codec,
            load_or_create_token(token_dir),
            listen=config.listen,
            origins=config.origins,
            ssl_context=context,
            allow_plaintext=config.allow_plaintext,
            limits=config.limits,
        )

    @property
    def tls(self) -> bool:
        return self._listener.tls

    @property
    def port(self) -> int:
        return self._listener.address[1]

    @property
    def url(self) -> str:
        return self._listener.url

    @property
    def listener(self) -> Listener:
        """The HTTP listener (its limits, how many connections it holds)."""
        return self._listener

    def check_token(self, token: str) -> bool:
        """Compare digests in constant time: neither content nor length leaks."""
        return self._token.matches(token)

    def authorized(self, token: str | None, session: str | None) -> bool:
        if self._token.matches(token):
            return True
        return session is not None and self.sessions.valid(session)

    async def run_codec(self, operation: str, payloads: list[Payload]) -> list[Payload]:
        """Encode or decode with the coordinator's codec (its key cache is shared)."""
        coro = self.codec.encode(payloads) if operation == "encode" else self.codec.decode(payloads)
        return await asyncio.wait_for(coro, CODEC_TIMEOUT_SECONDS)

    async def start(self) -> CodecServer:
        await self._listener.start(self._serve, render_error=_error_response)
        log.info("codec.listening", url=self.url, origins=sorted(self.origins))
        return self

    async def stop(self) -> None:
        await self._listener.stop()

    # ------------------------------------------------------------------ routing

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        path = urlsplit(request.raw_path).path
        handler = self._routes.get(request.method)
        try:
            if handler is None:
                raise RequestRefused(501, f"Unsupported method ({request.method!r})", close=True)
            response = await handler(request, path)
        except RequestRefused as err:
            response = self._json(request, err.status, {"error": err.message})
            if err.close:
                response.force_close()
        except Exception:
            log.exception("codec.request_failed", method=request.method, path=path)
            response = self._json(
                request, 500, {"error": "internal error; see the coordinator log"}
            )
        log.debug(
            "codec.request",
            method=request.method,
            path=path,
            status=response.status,
            ms=round((time.monotonic() - started) * 1000, 3),
        )
        return response

    async def _preflight(self, request: web.BaseRequest, path: str) -> web.Response:
        _operation(path)
        self._origin_allowed(request, required=True)
        extra = []
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            extra.append(("Access-Control-Allow-Private-Network", "true"))  # Chrome's PNA
        return self._respond(request, 204, b"", "text/plain", extra)

    async def _codec(self, request: web.BaseRequest, path: str) -> web.Response:
        operation = _operation(path)
        self._origin_allowed(request, required=False)
        if not self.authorized(bearer_token(request.headers), cookie(request, SESSION_COOKIE)):
            raise RequestRefused(
                401,
                "unauthorized: send Authorization: Bearer <codec token> or log in at /login",
            )
        authenticated(request)  # its connection outranks strangers' (cloudless.http)
        payloads = await read_payloads(request, self._body)
        try:
            result = await self.run_codec(operation, payloads)
        except PayloadCodecError as err:
            raise RequestRefused(422, str(err)) from err
        return self._json(
            request, 200, {"payloads": [json_format.MessageToDict(p) for p in result]}
        )

    async def _login(self, request: web.BaseRequest, path: str) -> web.Response:
        prefix, _, last = path.rpartition("/")
        if last != "login":
            raise RequestRefused(404, f"no such path {path}; use /login, /encode or /decode")
        if not _SAFE_PATH.fullmatch(prefix):
            raise RequestRefused(400, "the login path may only hold letters, digits and /_.-")
        token = (parse_qs(urlsplit(request.raw_path).query).get("token") or [""])[0]
        if not token or not self.check_token(token):
            raise RequestRefused(401, "unauthorized: /login needs ?token=<codec token>")
        authenticated(request)
        session = self.sessions.create(True)
        cookie = "; ".join(
            [
                f"{SESSION_COOKIE}={session}",
                f"Path={prefix or '/'}",  # only where /encode and /decode live
                f"Max-Age={SESSION_TTL_SECONDS}",
                "HttpOnly",
                "SameSite=None; Secure" if self.tls else "SameSite=Strict",
            ]
        )
        origins = "".join(
            f'<li><a href="{html.escape(o)}">{html.escape(o)}</a></li>'
            for o in sorted(self.origins)
        )
        page = (
            "<!doctype html><title>Cloudless codec</title><p>Logged in to the Cloudless "
            "codec endpoint. The Temporal UI can now decode payloads when its codec "
            "endpoint is this server and <em>Include cross-origin credentials</em> is on."
            f"<ul>{origins}</ul>"
        ).encode()
        return self._respond(
            request, 200, page, "text/html; charset=utf-8", [("Set-Cookie", cookie)]
        )

    # ------------------------------------------------------------------ helpers

    def _origin_allowed(self, request: web.BaseRequest, *, required: bool) -> None:
        origin = request.headers.get("Origin")
        if origin is None and not required:
            return  # not a browser (the temporal CLI, curl)
        if origin is None or origin.rstrip("/") not in self.origins:
            raise RequestRefused(403, f"origin {origin!r} is not allowed; see --codec-allow-origin")

    def _cors_headers(self, request: web.BaseRequest) -> list[tuple[str, str]]:
        origin = (request.headers.get("Origin") or "").rstrip("/")
        if origin not in self.origins:
            return [("Vary", "Origin")]
        return [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Allow-Methods", "POST, OPTIONS"),
            ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
            ("Access-Control-Max-Age", "600"),
            ("Vary", "Origin"),
        ]

    def _json(self, request: web.BaseRequest, status: int, body: dict[str, Any]) -> web.Response:
        return self._respond(request, status, json_bytes(body), "application/json")

    def _respond(
        self,
        request: web.BaseRequest,
        status: int,
        body: bytes,
        content_type: str,
        extra: Sequence[tuple[str, str]] = (),
    ) -> web.Response:
        return _response(status, body, content_type, [*self._cors_headers(request), *extra])


def _response(
    status: int, body: bytes, content_type: str, extra: Sequence[tuple[str, str]] = ()
) -> web.Response:
    headers = [
        *extra,
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Content-Type-Options", "nosniff"),
        ("Server", SERVER_HEADER),
    ]
    return web.Response(status=status, body=body, headers=headers)


def _error_response(status: int, message: str) -> web.Response:
    """The endpoint's error shape for requests aiohttp refuses before they reach it."""
    return _response(status, json_bytes({"error": message}), "application/json")


def cookie(request: web.BaseRequest, name: str) -> str | None:
    """The value of cookie ``name`` in the request, if any."""
    for part in (request.headers.get("Cookie") or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


async def read_payloads(request: web.BaseRequest, rules: BodyRules) -> list[Payload]:
    """The ``{\"payloads\": [...]}`` body of a codec request (protobuf JSON form)."""
    content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise RequestRefused(415, "send Content-Type: application/json")
    data = await read_json_object(request, rules)
    if not isinstance(data.get("payloads"), list):
        raise RequestRefused(400, rules.not_object)
    try:
        parsed = json_format.ParseDict({"payloads": data["payloads"]}, Payloads())
    except json_format.ParseError as err:
        raise RequestRefused(
            400, f"payloads are not Temporal payloads in JSON form: {err}"
        ) from err
    return list(parsed.payloads)


def _operation(path: str) -> str:
    """``encode`` or ``decode``: only the last segment counts (the protocol lets the
    endpoint be mounted under any prefix, e.g. behind a proxy)."""
    last = path.rpartition("/")[2]
    if last not in ("encode", "decode"):
        raise RequestRefused(404, f"no such path {path}; use /encode or /decode")
    return last
