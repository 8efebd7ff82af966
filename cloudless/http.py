"""The one HTTP stack Cloudless serves with: aiohttp on the process's own event loop.

Two processes serve HTTP, and both build on this module: the embedded transit server
(``transit/server.py``, Vault's API) and the coordinator's payload-codec endpoint
(``workers/codec_server.py``, Temporal's remote-codec protocol). What they share lives here,
once:

- where a server may listen: ``host:port`` parsing, the loopback rule for plain HTTP
  (:func:`parse_listen`, :func:`is_loopback`, :func:`check_listen`) and the server-side
  TLS context (:func:`tls_context`);
- who may call: bearer tokens from ``Authorization`` (:func:`bearer_token`) and secrets kept
  only as digests and compared in constant time (:class:`SecretToken`);
- what a request may carry: bounded bodies and JSON objects with a clear 4xx, never a read
  of an oversized or chunked body (:class:`BodyRules`, :func:`read_body`,
  :func:`read_json_object`), and one refusal type (:class:`RequestRefused`) that each
  server renders in its own JSON error shape;
- how a server runs: :class:`Listener` serves a server's request handler with aiohttp's
  low-level server on one resolved address, optionally with TLS, on the running loop
  (idle keep-alive timeout, an unread body closes the connection, malformed requests in
  the server's error shape), and stops it with a bounded grace period.

aiohttp owns the protocol: request parsing, keep-alive, TLS, flow control and response
framing. Each server keeps only its own semantics (routes, auth rules, error shapes).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_parser import HttpRequestParserPy

from cloudless.errors import ConfigError

__all__ = [
    "BodyRules",
    "ErrorRenderer",
    "ListenError",
    "Listener",
    "RequestRefused",
    "SecretToken",
    "bearer_token",
    "check_listen",
    "is_loopback",
    "json_bytes",
    "parse_listen",
    "read_body",
    "read_json_object",
    "tls_context",
]

#: How long a stopping server lets in-flight requests finish before closing them.
SHUTDOWN_GRACE_SECONDS = 5.0


class ListenError(ConfigError):
    """The address cannot be resolved or bound (taken, not local, no permission)."""


class RequestRefused(Exception):
    """A request answered with ``status`` and ``message`` instead of being served.

    ``close`` drops the connection after the answer: set it when the request's body may
    still be on the wire, so it is never parsed as the next request.
    """

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


# --------------------------------------------------------------------------- listening


def is_loopback(host: str) -> bool:
    """True if every address ``host`` names is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if host == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def parse_listen(value: str, *, flag: str, example: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; an empty host means every interface.

    ``flag`` and ``example`` name the option in the error, e.g. ``--listen`` and
    ``127.0.0.1:8200``.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"{flag} {value!r} must look like {example}")
    return host.strip("[]") or "0.0.0.0", int(port_text)


def check_listen(host: str, *, tls: bool, allow_plaintext: bool, refusal: str) -> None:
    """Plain HTTP carries tokens and plaintexts in clear: keep it on loopback.

    Raises :class:`ConfigError` with the server's own ``refusal`` (which says what to pass
    instead) unless TLS is on, plaintext was explicitly allowed, or ``host`` is loopback.
    """
    if tls or allow_plaintext or is_loopback(host):
        return
    raise ConfigError(refusal)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 or later, the given PEM certificate chain and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {err}") from err
    return context


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: Renders a refusal in a server's own error shape: ``(status, message) -> response``.
ErrorRenderer = Callable[[int, str], web.Response]


class _Connection(web.RequestHandler):
    """aiohttp's connection handler with two of a server's choices applied.

    - Requests aiohttp itself refuses (malformed request line or headers, an invalid
      ``Content-Length``) are answered in the server's error shape, like every other
      refusal, and logged at debug level: they are the client's business, and an open port
      meets plenty of them. Failures of the server's own handler still log as errors.
    - ``any_method``: aiohttp's C parser (llhttp) knows a fixed table of methods and
      answers any other with 400, although RFC 9110 allows any token. Vault's API has
      ``LIST``, which hvac sends by default, so the transit server parses with aiohttp's
      own pure-Python parser (``HttpRequestParserPy``, what aiohttp uses when built
      without extensions), which takes any token. It costs ~20 us of CPU a request.
    """

    def __init__(
        self,
        manager: _Server,
        *,
        loop: asyncio.AbstractEventLoop,
        read_bufsize: int = 2**16,
        auto_decompress: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            manager,
            loop=loop,
            read_bufsize=read_bufsize,
            auto_decompress=auto_decompress,
            **kwargs,
        )
        self._render_error = manager.render_error
        if manager.any_method:
            self._parser = HttpRequestParserPy(
                self,
                loop,
                read_bufsize,
                max_line_size=self.max_line_size,
                max_field_size=self.max_field_size,
                max_headers=self.max_headers,
                payload_exception=web.RequestPayloadError,
                auto_decompress=auto_decompress,
                max_msg_queue_size=web_protocol.MAX_MSG_QUEUE_SIZE,
            )

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            self.logger.debug("Refused a malformed request from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response was partly sent; cannot send an error instead")
        if status >= 500:
            message = "internal error"
        response = self._render_error(status, message or HTTPStatus(status).phrase)
        response.force_close()
        return response


class _Server(web.Server):
    """aiohttp's low-level server, handing out :class:`_Connection` handlers."""

    def __init__(
        self, handler: Any, *, render_error: ErrorRenderer, any_method: bool, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self.render_error = render_error
        self.any_method = any_method

    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class Listener:
    """Serves one aiohttp runner on one address, optionally over TLS, on the running loop.

    The host is resolved to one address before binding (``localhost`` binds one socket,
    not one per address family), so ``port=0`` yields one port that :attr:`url` names.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self._backlog = backlog
        self._runner: web.BaseRunner | None = None
        self._address: tuple[str, int] | None = None

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``; only after :meth:`start`."""
        if self._address is None:
            raise RuntimeError("the listener is not started")
        return self._address

    @property
    def url(self) -> str:
        host, port = self.address
        return f"{'https' if self.tls else 'http'}://{_host_port(host, port)}"

    async def start(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        render_error: ErrorRenderer,
        idle_timeout: float,
        any_method: bool = False,
    ) -> None:
        """Serve ``handler`` here; :class:`ListenError` if the address is unusable.

        Every request goes to ``handler`` (the server does its own routing).
        ``render_error`` shapes the refusals aiohttp makes itself; ``idle_timeout`` closes
        keep-alive connections idle that long; ``any_method`` accepts extension methods
        such as ``LIST``. A response sent before the request body arrived closes the
        connection instead of reading the rest of the body to keep it.
        """
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as err:
            raise ListenError(f"cannot resolve listen address {self.host!r}: {err}") from err
        host = str(infos[0][4][0])

        async def serve(request: web.BaseRequest) -> web.StreamResponse:
            response = await handler(request)
            if request.body_exists and not request.content.is_eof():
                # Answered before the body was read: the connection closes (it is not
                # drained), and the response says so.
                response.force_close()
            return response

        server = _Server(
            serve,
            render_error=render_error,
            any_method=any_method,
            keepalive_timeout=idle_timeout,
            lingering_time=0,  # an unread body closes the connection, it is not drained
            access_log=None,  # each server logs its requests itself, without query strings
        )
        runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
        await runner.setup()
        site = web.TCPSite(
            runner,
            host,
            self.port,
            ssl_context=self.ssl_context,
            backlog=self._backlog,
            reuse_address=True,
        )
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            where = _host_port(self.host, self.port)
            raise ListenError(f"cannot listen on {where}: {err.strerror or err}") from err
        self._runner = runner
        bound = runner.addresses[0]
        self._address = (str(bound[0]), int(bound[1]))

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close the rest."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


# --------------------------------------------------------------------------- auth


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None (other schemes, empty)."""
    scheme, _, value = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class SecretToken:
    """A bearer secret kept only as its SHA-256 digest.

    Candidates are compared as fixed-length digests in constant time, so neither the
    token's content nor its length leaks through timing.
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise ConfigError("a token must not be empty")
        self._digest = _digest(token)

    def __repr__(self) -> str:
        return "SecretToken(<redacted>)"

    def matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(_digest(candidate), self._digest)


# --------------------------------------------------------------------------- bodies


@dataclass(frozen=True)
class BodyRules:
    """How much body a server accepts, and what it answers when a body is refused.

    The messages are the server's own (each keeps its clients' wording); the statuses are
    common: 411 for chunked bodies (and for a missing ``Content-Length`` when one is
    required), 413 over ``max_bytes`` (answered without reading the body), 400 for a body
    that cannot be read or is not a JSON object.
    """

    max_bytes: int
    too_large: str
    #: The 411 message when ``Content-Length`` is missing; None: no length means no body.
    length_required: str | None = None
    chunked: str = "chunked request bodies are not supported; send Content-Length"
    unreadable: str = "could not read the request body"
    incomplete: str = "request body ended early"
    #: ``{error}`` is replaced by the JSON decoder's explanation.
    not_json: str = "body is not valid JSON: {error}"
    not_object: str = "body must be a JSON object"
    #: An empty body reads as ``{}`` (Vault's behaviour) instead of being invalid JSON.
    empty_is_object: bool = False
    #: Seconds a client may take to send the whole body.
    read_timeout: float = 60.0


async def read_body(request: web.BaseRequest, rules: BodyRules) -> bytes:
    """The request body, at most ``rules.max_bytes``; :class:`RequestRefused` otherwise.

    The declared length is checked before anything is read, so an oversized body costs
    nothing but the refusal (which closes the connection).
    """
    encoding = (request.headers.get("Transfer-Encoding") or "").strip().lower()
    if encoding not in ("", "identity"):
        raise RequestRefused(411, rules.chunked, close=True)
    length = request.content_length
    if length is None and rules.length_required is not None:
        raise RequestRefused(411, rules.length_required, close=True)
    if not length:
        return b""
    if length > rules.max_bytes:
        raise RequestRefused(413, rules.too_large, close=True)
    content = request.content
    try:
        if content.is_eof():  # all of it has arrived (small bodies): no timer to arm
            data = await content.readexactly(length)
        else:
            async with asyncio.timeout(rules.read_timeout):
                data = await content.readexactly(length)
    except asyncio.IncompleteReadError:
        raise RequestRefused(400, rules.incomplete, close=True) from None
    except (OSError, TimeoutError, web.RequestPayloadError):
        raise RequestRefused(400, rules.unreadable, close=True) from None
    return data


async def read_json_object(request: web.BaseRequest, rules: BodyRules) -> dict[str, Any]:
    """The body as a JSON object, bounded as :func:`read_body`; 400 if it is not one."""
    raw = await read_body(request, rules)
    if rules.empty_is_object and not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise RequestRefused(400, rules.not_json.format(error=err)) from None
    if not isinstance(data, dict):
        raise RequestRefused(400, rules.not_object)
    return data


def json_bytes(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body).encode()
