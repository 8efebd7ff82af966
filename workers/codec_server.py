"""The codec endpoint: Temporal's remote codec protocol, so the Temporal UI and the
``temporal`` CLI can show decrypted payloads to an authorized operator.

``POST /decode`` and ``POST /encode`` take and return ``{"payloads": [...]}`` in protobuf
JSON form. Every request needs the operator token, as ``Authorization: Bearer <token>``
or as the session cookie that ``GET /login?token=<token>`` sets for a browser. The token
lives in ``<coordinator dir>/codec-token`` (0600), made on first start. Design notes:
``docs/design/payload-codec.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import re
import secrets
import socket
import ssl
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from cloudless.codec import CODEC_TOKEN_FILE, PayloadCodecError
from cloudless.errors import ConfigError, PKIError
from cloudless.pki import read_private_file, write_private_file
from cloudless.http import is_loopback, tls_context

log = structlog.get_logger("cloudless.codec_server")

DEFAULT_LISTEN = "127.0.0.1:8234"
DEFAULT_ORIGINS = ("http://127.0.0.1:8233", "http://localhost:8233")
SESSION_COOKIE = "cloudless_codec_session"
SESSION_TTL_SECONDS = 12 * 3600
MAX_SESSIONS = 1024
MAX_BODY_BYTES = 8 * 2**20  # a few 2 MB Temporal payloads plus base64
CODEC_TIMEOUT_SECONDS = 60.0
IDLE_TIMEOUT_SECONDS = 30.0
ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization"
_SAFE_PATH = re.compile(r"[A-Za-z0-9/_.-]*")  # goes into the cookie's Path attribute


class ListenError(ConfigError):
    """The endpoint's address is taken: another coordinator on this host may serve it."""


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class CodecServerConfig:
    """How the coordinator serves the codec endpoint (``--codec-*`` flags)."""

    listen: str = DEFAULT_LISTEN
    origins: tuple[str, ...] = DEFAULT_ORIGINS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_plaintext: bool = False


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
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--codec-listen {value!r} must look like 127.0.0.1:8234")
    return host.strip("[]") or "0.0.0.0", int(port)


def check_listen(host: str, *, tls: bool, allow_plaintext: bool) -> None:
    """Plain HTTP would carry the operator token and decrypted payloads in clear."""
    if tls or allow_plaintext or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to serve the codec endpoint on {host!r} without TLS: the operator token "
        "and decrypted payloads would cross the network in clear. Give --codec-tls-cert/"
        "--codec-tls-key, listen on 127.0.0.1, or pass --codec-insecure-allow-plaintext if "
        "a TLS proxy or private link protects it"
    )


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class Sessions:
    """Browser sessions created by ``/login``; only their digests are kept."""

    def __init__(self, ttl: float = SESSION_TTL_SECONDS, limit: int = MAX_SESSIONS) -> None:
        self.ttl = ttl
        self._limit = limit
        self._expiry: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def create(self) -> str:
        session = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._expiry = {k: t for k, t in self._expiry.items() if t > now}
            while len(self._expiry) >= self._limit:  # oldest first (insertion order)
                del self._expiry[next(iter(self._expiry))]
            self._expiry[_digest(session)] = now + self.ttl
        return session

    def valid(self, session: str) -> bool:
        with self._lock:
            expiry = self._expiry.get(_digest(session))
        return expiry is not None and expiry > time.monotonic()


class CodecServer:
    """Serves the codec over HTTP(S) in threads; the codec runs on the caller's loop."""

    def __init__(
        self,
        codec: PayloadCodec,
        token: str,
        loop: asyncio.AbstractEventLoop,
        *,
        listen: str = DEFAULT_LISTEN,
        origins: Sequence[str] = DEFAULT_ORIGINS,
        ssl_context: ssl.SSLContext | None = None,
        allow_plaintext: bool = False,
    ) -> None:
        host, port = parse_listen(listen)
        check_listen(host, tls=ssl_context is not None, allow_plaintext=allow_plaintext)
        self.codec = codec
        self.loop = loop
        self.origins = frozenset(o.rstrip("/") for o in origins)
        self.tls = ssl_context is not None
        self.sessions = Sessions()
        self._token_digest = _digest(token)
        try:
            self._httpd = _HTTPServer((host, port), self, ssl_context)
        except OSError as err:
            raise ListenError(f"cannot listen on {listen}: {err.strerror or err}") from err
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(
        cls, config: CodecServerConfig, codec: PayloadCodec, token_dir: Path
    ) -> CodecServer:
        """Build from flags on the running loop, checking the address before any file."""
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
            asyncio.get_running_loop(),
            listen=config.listen,
            origins=config.origins,
            ssl_context=context,
            allow_plaintext=config.allow_plaintext,
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._httpd.server_address[0])
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def check_token(self, token: str) -> bool:
        """Compare digests in constant time: neither content nor length leaks."""
        return hmac.compare_digest(_digest(token), self._token_digest)

    def authorized(self, token: str | None, session: str | None) -> bool:
        if token is not None and self.check_token(token):
            return True
        return session is not None and self.sessions.valid(session)

    def run_codec(self, operation: str, payloads: list[Payload]) -> list[Payload]:
        """Run encode/decode on the coordinator's loop (the codec's caches live there)."""
        coro: Coroutine[Any, Any, list[Payload]] = (
            self.codec.encode(payloads) if operation == "encode" else self.codec.decode(payloads)
        )
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=CODEC_TIMEOUT_SECONDS)

    def start(self) -> CodecServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="codec-http",
            daemon=True,
        )
        self._thread.start()
        log.info("codec.listening", url=self.url, origins=sorted(self.origins))
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], app: CodecServer, ssl_context: ssl.SSLContext | None
    ) -> None:
        self.app = app
        self.address_family = socket.getaddrinfo(address[0], address[1])[0][0]
        super().__init__(address, _Handler)
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def handle_error(self, request: Any, client_address: Any) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, OSError | ssl.SSLError | TimeoutError):
            return  # resets and failed handshakes are the client's business
        log.exception("codec.connection_error")


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "cloudless-codec"
    sys_version = ""
    timeout = IDLE_TIMEOUT_SECONDS

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()  # in this connection's thread, not the accept loop
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # logged by _dispatch without query strings, tokens or bodies

    @property
    def app(self) -> CodecServer:
        return self.server.app

    # ------------------------------------------------------------------ routing

    def do_OPTIONS(self) -> None:
        self._dispatch(self._preflight)

    def do_POST(self) -> None:
        self._dispatch(self._codec)

    def do_GET(self) -> None:
        self._dispatch(self._login)

    def _dispatch(self, handler: Any) -> None:
        started = time.monotonic()
        path = urlsplit(self.path).path
        self._body_read = False
        try:
            status = handler(path)
        except HTTPError as err:
            status = err.status
            if self.command == "POST" and not self._body_read:
                self.close_connection = True  # an unread body must not be parsed as a request
            self._json(err.status, {"error": err.message})
        except Exception:
            log.exception("codec.request_failed", method=self.command, path=path)
            status = 500
            self._json(500, {"error": "internal error; see the coordinator log"})
        log.debug(
            "codec.request",
            method=self.command,
            path=path,
            status=status,
            ms=round((time.monotonic() - started) * 1000, 3),
        )

    def _preflight(self, path: str) -> int:
        _operation(path)
        self._origin_allowed(required=True)
        extra = []
        if self.headers.get("Access-Control-Request-Private-Network") == "true":
            extra.append(("Access-Control-Allow-Private-Network", "true"))  # Chrome's PNA
        self._respond(204, b"", "text/plain", extra)
        return 204

    def _codec(self, path: str) -> int:
        operation = _operation(path)
        self._origin_allowed(required=False)
        if not self.app.authorized(self._bearer(), self._cookie()):
            raise HTTPError(
                401,
                "unauthorized: send Authorization: Bearer <codec token> or log in at /login",
            )
        payloads = self._payloads()
        try:
            result = self.app.run_codec(operation, payloads)
        except PayloadCodecError as err:
            raise HTTPError(422, str(err)) from err
        self._json(200, {"payloads": [json_format.MessageToDict(p) for p in result]})
        return 200

    def _login(self, path: str) -> int:
        prefix, _, last = path.rpartition("/")
        if last != "login":
            raise HTTPError(404, f"no such path {path}; use /login, /encode or /decode")
        if not _SAFE_PATH.fullmatch(prefix):
            raise HTTPError(400, "the login path may only hold letters, digits and /_.-")
        token = (parse_qs(urlsplit(self.path).query).get("token") or [""])[0]
        if not token or not self.app.check_token(token):
            raise HTTPError(401, "unauthorized: /login needs ?token=<codec token>")
        session = self.app.sessions.create()
        cookie = "; ".join(
            [
                f"{SESSION_COOKIE}={session}",
                f"Path={prefix or '/'}",  # only where /encode and /decode live
                f"Max-Age={SESSION_TTL_SECONDS}",
                "HttpOnly",
                "SameSite=None; Secure" if self.app.tls else "SameSite=Strict",
            ]
        )
        origins = "".join(
            f'<li><a href="{html.escape(o)}">{html.escape(o)}</a></li>'
            for o in sorted(self.app.origins)
        )
        page = (
            "<!doctype html><title>Cloudless codec</title><p>Logged in to the Cloudless "
            "codec endpoint. The Temporal UI can now decode payloads when its codec "
            "endpoint is this server and <em>Include cross-origin credentials</em> is on."
            f"<ul>{origins}</ul>"
        ).encode()
        self._respond(200, page, "text/html; charset=utf-8", [("Set-Cookie", cookie)])
        return 200

    # ------------------------------------------------------------------ helpers

    def _origin_allowed(self, *, required: bool) -> None:
        origin = self.headers.get("Origin")
        if origin is None and not required:
            return  # not a browser (the temporal CLI, curl)
        if origin is None or origin.rstrip("/") not in self.app.origins:
            raise HTTPError(403, f"origin {origin!r} is not allowed; see --codec-allow-origin")

    def _bearer(self) -> str | None:
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return value.strip() or None

    def _cookie(self) -> str | None:
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == SESSION_COOKIE and value:
                return value
        return None

    def _payloads(self) -> list[Payload]:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise HTTPError(415, "send Content-Type: application/json")
        body = self._body()
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise HTTPError(400, f"body is not valid JSON: {err}") from err
        if not isinstance(data, dict) or not isinstance(data.get("payloads"), list):
            raise HTTPError(400, 'body must be a JSON object {"payloads": [...]}')
        try:
            parsed = json_format.ParseDict({"payloads": data["payloads"]}, Payloads())
        except json_format.ParseError as err:
            raise HTTPError(400, f"payloads are not Temporal payloads in JSON form: {err}") from err
        return list(parsed.payloads)

    def _body(self) -> bytes:
        if (self.headers.get("Transfer-Encoding") or "").strip().lower() not in ("", "identity"):
            raise HTTPError(411, "chunked bodies are not supported; send Content-Length")
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            raise HTTPError(411, "Content-Length is required")
        if int(length) > MAX_BODY_BYTES:
            raise HTTPError(413, f"body over {MAX_BODY_BYTES} bytes")
        self._body_read = True
        return self.rfile.read(int(length))

    def _cors_headers(self) -> list[tuple[str, str]]:
        origin = (self.headers.get("Origin") or "").rstrip("/")
        if origin not in self.app.origins:
            return [("Vary", "Origin")]
        return [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Allow-Methods", "POST, OPTIONS"),
            ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
            ("Access-Control-Max-Age", "600"),
            ("Vary", "Origin"),
        ]

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._respond(status, json.dumps(body).encode(), "application/json")

    def _respond(
        self,
        status: int,
        body: bytes,
        content_type: str,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.send_response(status)
        for name, value in [*self._cors_headers(), *extra]:
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def _operation(path: str) -> str:
    """``encode`` or ``decode``: only the last segment counts (the protocol lets the
    endpoint be mounted under any prefix, e.g. behind a proxy)."""
    last = path.rpartition("/")[2]
    if last not in ("encode", "decode"):
        raise HTTPError(404, f"no such path {path}; use /encode or /decode")
    return last
