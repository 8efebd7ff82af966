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
  low-level server on one resolved address, optionally with TLS, on the running loop (an
  unread body closes the connection, malformed requests in the server's error shape), and
  stops it with a bounded grace period;
- what a client may hold: :class:`ConnectionLimits`, enforced per listener: connections
  per client address and in total, counted from the TCP accept, and deadlines for a
  request head, a body and an idle keep-alive connection. A server marks requests that
  showed its credentials (:func:`authenticated`); the others' connections give way first.

aiohttp owns the protocol: request parsing, keep-alive, flow control and response framing.
The listener starts TLS on each connection itself, once it is counted in. Each server
keeps only its own semantics (routes, auth rules, error shapes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast

import structlog
from aiohttp import web, web_protocol
from aiohttp.http_parser import HttpRequestParserPy

from cloudless.errors import ConfigError
from cloudless.pki import write_private_file
from cloudless.process import open_files_limit

__all__ = [
    "BodyRules",
    "ConnectionLimits",
    "ErrorRenderer",
    "ListenError",
    "Listener",
    "RequestRefused",
    "SecretToken",
    "authenticated",
    "bearer_token",
    "check_listen",
    "is_loopback",
    "json_bytes",
    "load_chain",
    "parse_listen",
    "read_body",
    "read_json_object",
    "tls_context",
]

log = structlog.get_logger("cloudless.http")

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


def load_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes, scratch: Path) -> None:
    """Serve ``cert_pem`` with ``key_pem`` on ``context`` from its next handshake on
    (connections already up keep theirs). ``ssl`` loads a chain from files only: both
    are written to ``scratch`` (a private directory; the key ``0600``) for the call and
    removed after it."""
    stem = f".chain-{secrets.token_hex(8)}"
    cert, key = scratch / f"{stem}.crt", scratch / f"{stem}.key"
    try:
        write_private_file(key, key_pem)
        write_private_file(cert, cert_pem)
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"cannot load the renewed TLS certificate: {err}") from err
    finally:
        for path in (cert, key):
            path.unlink(missing_ok=True)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: Renders a refusal in a server's own error shape: ``(status, message) -> response``.
ErrorRenderer = Callable[[int, str], web.Response]


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class ConnectionLimits:
    """What one listener lets clients hold: connections, and how long they may dawdle.

    aiohttp has neither a connection cap nor a deadline for a request head, so these are
    the listener's own (:class:`_Table`, :class:`_Connection`). How they combine under a
    flood: ``docs/design/transit.md`` ("Floods"); the flags: ``docs/operations.md#limits``.
    """

    #: Open connections the listener holds at most, counted from the TCP accept (so
    #: those still in their TLS handshake too). At most half the process's open-files
    #: limit (:meth:`fitted`).
    max_connections: int = 1024
    #: Open connections one client address holds at most.
    max_per_peer: int = 256
    #: Seconds a connection has to deliver a complete request head: from its accept
    #: (TLS handshake included), from the end of an unauthenticated exchange, or from
    #: the first byte of a later request on an authenticated kept-alive connection.
    header_timeout: float = 10.0
    #: Seconds a client may take to send a request body (see :class:`BodyRules`).
    body_timeout: float = 30.0
    #: Seconds an authenticated kept-alive connection may sit silent between requests.
    idle_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_per_peer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, not {value!r}")
        for name in ("header_timeout", "body_timeout", "idle_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")

    def fitted(self, open_files: int) -> ConnectionLimits:
        """These limits with ``max_connections`` (and ``max_per_peer``) at most half of
        ``open_files``, the process's descriptor limit: the other half is for everything
        else it opens (its files, its own clients, the sockets a refusal needs)."""
        ceiling = max(1, open_files // 2)
        if self.max_connections <= ceiling and self.max_per_peer <= ceiling:
            return self
        log.warning(
            "http.max_connections_lowered",
            wanted=self.max_connections,
            max_connections=min(self.max_connections, ceiling),
            open_files_limit=open_files,
        )
        return dataclasses.replace(
            self,
            max_connections=min(self.max_connections, ceiling),
            max_per_peer=min(self.max_per_peer, ceiling),
        )


class _Alarm:
    """Logs one kind of limit event at most once per ``interval`` seconds, with how many
    happened since, so a flood costs a log line every few seconds, not one per socket."""

    def __init__(self, event: str, interval: float = 10.0) -> None:
        self.event = event
        self._interval = interval
        self._count = 0
        self._last = -interval

    def __call__(self, peer: str, **fields: object) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        log.warning(self.event, peer=peer, count=self._count, **fields)
        self._count = 0
        self._last = now


class _Peer:
    """One client address's connections in a :class:`_Table`."""

    __slots__ = ("count", "idle", "strangers")

    def __init__(self) -> None:
        self.count = 0
        #: Not (yet) authenticated, oldest first: handshaking, silent, dawdling, or in
        #: an unauthenticated request. Any of them may be pushed out.
        self.strangers: dict[_Connection, None] = {}
        #: Authenticated and between requests, longest idle first.
        self.idle: dict[_Connection, None] = {}

    def victim(self) -> _Connection | None:
        """The connection to push out for a newcomer: the oldest stranger, else the
        longest-idle authenticated one; None if every one serves an authenticated request."""
        for pool in (self.strangers, self.idle):
            for conn in pool:
                return conn
        return None


class _Table:
    """A listener's open connections, by client address, and who gives way to whom.

    A newcomer over a limit (its address's, or the listener's) pushes out the oldest
    connection that is not serving an authenticated request: a stranger's first (one
    that has not shown the server's credentials: a flood's idle sockets, a slowloris, a
    probe), then an authenticated one idling between requests (it reconnects when it next
    needs to). For the listener's limit the address holding the most connections gives
    way first, so a flood from one address pushes out its own sockets, not its
    neighbours'. Only when every connection serves an authenticated request is the
    newcomer refused, at once (HTTP 503 on plain HTTP; closed before TLS).
    """

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.peers: dict[str, _Peer] = {}
        self.count = 0
        self.evicted = _Alarm("http.connection_evicted")
        self.refused = _Alarm("http.connection_refused")
        self.timed_out = _Alarm("http.connection_timed_out")

    def admit(self, conn: _Connection) -> bool:
        """Count ``conn`` in (as a stranger), pushing out another if a limit requires it."""
        held = self.peers.get(conn.peer)
        if (
            held is not None
            and held.count >= self.limits.max_per_peer
            and not self._push_out(held.victim(), conn.peer, "max_per_peer")
        ):
            return False
        if self.count >= self.limits.max_connections and not self._push_out(
            self._largest_victim(), conn.peer, "max_connections"
        ):
            return False
        # Looked up again: a push-out may have removed this address's last connection,
        # and its entry with it.
        peer = self.peers.setdefault(conn.peer, _Peer())
        peer.count += 1
        peer.strangers[conn] = None
        self.count += 1
        return True

    def _push_out(self, victim: _Connection | None, newcomer: str, limit: str) -> bool:
        value = getattr(self.limits, limit)
        if victim is None:
            self.refused(newcomer, limit=limit, value=value)
            return False
        self.evicted(victim.peer, limit=limit, value=value)
        victim.evict()
        return True

    def _largest_victim(self) -> _Connection | None:
        for peer in sorted(self.peers.values(), key=lambda p: p.count, reverse=True):
            if (victim := peer.victim()) is not None:
                return victim
        return None

    def authenticated(self, conn: _Connection) -> None:
        self.peers[conn.peer].strangers.pop(conn, None)

    def idle(self, conn: _Connection) -> None:
        """An authenticated connection is between requests (it may be pushed out)."""
        idle = self.peers[conn.peer].idle
        idle.pop(conn, None)
        idle[conn] = None  # the newest idle one

    def busy(self, conn: _Connection) -> None:
        self.peers[conn.peer].idle.pop(conn, None)

    def remove(self, conn: _Connection) -> None:
        peer = self.peers[conn.peer]
        peer.strangers.pop(conn, None)
        peer.idle.pop(conn, None)
        peer.count -= 1
        self.count -= 1
        if not peer.count:
            del self.peers[conn.peer]

    def connections(self) -> list[_Connection]:
        return [c for p in self.peers.values() for pool in (p.strangers, p.idle) for c in pool]


class _Phase(enum.Enum):
    """Where a connection is in its life, for the limits (see :class:`_Connection`)."""

    HANDSHAKE = "handshake"  # counted in, TLS handshake under way
    WAITING = "waiting"  # no request being served: a request head is due
    IDLE = "idle"  # authenticated, kept alive between requests, silent
    BUSY = "busy"  # a request is being served
    GONE = "gone"  # counted out of the table
    REFUSED = "refused"  # never counted in


class _Connection(web.RequestHandler):
    """aiohttp's connection handler with a server's choices and the listener's limits.

    - Requests aiohttp itself refuses (malformed request line or headers, an invalid
      ``Content-Length``) are answered in the server's error shape, like every other
      refusal, and logged at debug level: they are the client's business, and an open port
      meets plenty of them. Failures of the server's own handler still log as errors.
    - ``any_method``: aiohttp's C parser (llhttp) knows a fixed table of methods and
      answers any other with 400, although RFC 9110 allows any token. Vault's API has
      ``LIST``, which hvac sends by default, so the transit server parses with aiohttp's
      own pure-Python parser (``HttpRequestParserPy``, what aiohttp uses when built
      without extensions), which takes any token. It costs ~20 us of CPU a request.
    - Limits (:class:`ConnectionLimits`, :class:`_Table`): a connection is counted in at
      its TCP accept, before TLS (the listener serves TLS itself, with
      ``loop.start_tls``, so that a socket that never finishes its handshake is counted
      and can be pushed out like any other). While no request is being served it has
      one deadline: the header deadline (a stranger's, or the rest of an authenticated
      client's request head) or the idle one (an authenticated client between requests).
      A deadline, or a newcomer pushing it out, aborts the connection: no TLS goodbye, no
      lingering, its descriptor is free at once.
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
        self._table = manager.table
        self._tls = manager.tls
        self._refusal = manager.refusal
        self._handshakes = manager.handshakes
        self.peer = "?"
        self._phase = _Phase.WAITING
        self._known = False
        self._served = False  # aiohttp's own connection_made has run
        self._raw: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
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

    # ------------------------------------------------------------------ limits

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The TCP accept: count in (or refuse), then TLS (if any), then HTTP."""
        raw = cast(asyncio.Transport, transport)  # what create_server hands out
        peername = raw.get_extra_info("peername")
        self.peer = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
        self._raw = raw
        if not self._table.admit(self):
            self._phase = _Phase.REFUSED
            if self._tls is None:
                with contextlib.suppress(OSError, RuntimeError):
                    raw.write(self._refusal)  # a few hundred bytes: never left buffered
                raw.close()
            else:
                raw.abort()
            return
        self._wait(self._table.limits.header_timeout)
        if self._tls is None:
            self._serve(raw)
            return
        self._phase = _Phase.HANDSHAKE
        raw.pause_reading()  # until start_tls hands the bytes to TLS
        task = self._loop.create_task(self._start_tls(raw, self._tls))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _start_tls(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        if self._phase is not _Phase.HANDSHAKE or raw.is_closing():
            return  # pushed out or gone before the handshake began
        try:
            secured = await self._loop.start_tls(
                raw,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self._table.limits.header_timeout,
            )
        except asyncio.CancelledError:
            self.evict()
            raise
        except (OSError, RuntimeError, ValueError) as err:
            # A failed or abandoned handshake (ssl.SSLError and TimeoutError are
            # OSErrors): the client's business. A pushed-out one lands here too.
            log.debug("http.tls_handshake_failed", peer=self.peer, error=repr(err))
            self.evict()
            return
        if self._phase is not _Phase.HANDSHAKE or secured is None:
            if secured is not None:
                secured.abort()
            return
        self._phase = _Phase.WAITING
        self._serve(secured)

    def _serve(self, transport: asyncio.BaseTransport) -> None:
        self._served = True
        super().connection_made(transport)
        if self._messages and self._phase is _Phase.WAITING:
            self._busy()  # a request that came with the end of the TLS handshake

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._phase is _Phase.REFUSED:
            return
        self._leave()
        if self._served:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase is _Phase.IDLE and data:
            # The first byte of a request after a kept-alive silence: its head is due.
            self._wait(self._table.limits.header_timeout)
        super().data_received(data)
        if self._messages and self._phase is _Phase.WAITING:
            self._busy()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if self._phase is _Phase.BUSY and not self._messages:
            limits = self._table.limits
            if self._known:
                self._wait(limits.idle_timeout, phase=_Phase.IDLE)
                self._table.idle(self)
            else:
                self._wait(limits.header_timeout)
        return result

    def authenticate(self) -> None:
        """The client showed the server's credentials: it is no stranger any more."""
        if not self._known and self._phase not in (_Phase.GONE, _Phase.REFUSED):
            self._known = True
            self._table.authenticated(self)

    def _busy(self) -> None:
        self._phase = _Phase.BUSY
        self._cancel_deadline()
        if self._known:
            self._table.busy(self)

    def _wait(self, seconds: float, *, phase: _Phase = _Phase.WAITING) -> None:
        """No request is being served: one is due within ``seconds``."""
        if self._known:
            self._table.busy(self)  # not pushed out while its request head arrives
        self._phase = phase
        self._cancel_deadline()
        self._deadline = self._loop.call_later(seconds, self._expire)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._phase in (_Phase.BUSY, _Phase.GONE, _Phase.REFUSED):
            return
        idle = self._phase is _Phase.IDLE
        limits = self._table.limits
        self._table.timed_out(
            self.peer,
            limit="idle_timeout" if idle else "header_timeout",
            value=limits.idle_timeout if idle else limits.header_timeout,
        )
        self.evict()

    def evict(self) -> None:
        """Count out and abort now: the descriptor is freed without waiting for the
        client (a TLS close would wait for its answer)."""
        self._leave()
        self._force_close = True
        if self._waiter is not None:
            self._waiter.cancel()
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.abort()

    def _leave(self) -> None:
        if self._phase in (_Phase.GONE, _Phase.REFUSED):
            return
        self._phase = _Phase.GONE
        self._cancel_deadline()
        self._table.remove(self)

    # ------------------------------------------------------------------ errors

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


def authenticated(request: web.BaseRequest) -> None:
    """Mark the connection ``request`` came on as an authenticated client's.

    A server calls this once a request has shown its credentials (before doing the work):
    from then on the connection is kept alive for the idle timeout rather than the header
    timeout, and a newcomer over a limit pushes out strangers before it, and never while
    it is serving a request (:class:`_Table`).
    """
    protocol = request.protocol
    if isinstance(protocol, _Connection):
        protocol.authenticate()


class _Server(web.Server):
    """aiohttp's low-level server, handing out :class:`_Connection` handlers."""

    def __init__(
        self,
        handler: Any,
        *,
        render_error: ErrorRenderer,
        any_method: bool,
        limits: ConnectionLimits,
        tls: ssl.SSLContext | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.render_error = render_error
        self.any_method = any_method
        self.tls = tls
        self.table = _Table(limits)
        self.handshakes: set[asyncio.Task[None]] = set()
        self.refusal = _raw(render_error(503, "too many connections; try again shortly"))

    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


def _raw(response: web.Response) -> bytes:
    """``response`` as bytes on the wire, closing the connection (a canned refusal)."""
    body = response.body if isinstance(response.body, bytes) else b""
    reason = HTTPStatus(response.status).phrase
    head = [f"HTTP/1.1 {response.status} {reason}"]
    head += [
        f"{name}: {value}"
        for name, value in response.headers.items()
        if name.lower() not in ("content-length", "connection")
    ]
    if response.content_type and "Content-Type" not in response.headers:
        head.append(f"Content-Type: {response.content_type}")
    head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(head).encode("latin-1") + body


class Listener:
    """Serves one aiohttp server on one address, optionally over TLS, on the running loop.

    The host is resolved to one address before binding (``localhost`` binds one socket,
    not one per address family), so ``port=0`` yields one port that :attr:`url` names.
    ``limits`` bound the connections it holds and how long they may idle or dawdle
    (:class:`ConnectionLimits`, fitted to the process's descriptor limit).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        limits: ConnectionLimits | None = None,
        backlog: int = 1024,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.limits = (limits or ConnectionLimits()).fitted(open_files_limit())
        self._backlog = backlog
        self._runner: web.BaseRunner | None = None
        self._server: asyncio.Server | None = None
        self._http: _Server | None = None
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

    @property
    def connections(self) -> int:
        """Connections counted in now (0 before :meth:`start`)."""
        return self._http.table.count if self._http is not None else 0

    def connections_from(self, peer: str) -> int:
        """Connections counted in now from the client address ``peer``."""
        if self._http is None:
            return 0
        held = self._http.table.peers.get(peer)
        return held.count if held is not None else 0

    async def start(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        render_error: ErrorRenderer,
        any_method: bool = False,
    ) -> None:
        """Serve ``handler`` here; :class:`ListenError` if the address is unusable.

        Every request goes to ``handler`` (the server does its own routing; it calls
        :func:`authenticated` for requests that show its credentials). ``render_error``
        shapes the refusals aiohttp and the limits make themselves; ``any_method``
        accepts extension methods such as ``LIST``. A response sent before the request
        body arrived closes the connection instead of reading the rest of the body.
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
            limits=self.limits,
            tls=self.ssl_context,
            # A backstop only: the connection's own deadlines (_Connection) come first.
            keepalive_timeout=max(self.limits.idle_timeout, self.limits.header_timeout) + 1,
            lingering_time=0,  # an unread body closes the connection, it is not drained
            access_log=None,  # each server logs its requests itself, without query strings
        )
        runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
        await runner.setup()
        try:
            # No ssl= here: each connection starts TLS itself once it is counted in.
            listening = await loop.create_server(
                server, host, self.port, backlog=self._backlog, reuse_address=True
            )
        except OSError as err:
            await runner.cleanup()
            where = _host_port(self.host, self.port)
            raise ListenError(f"cannot listen on {where}: {err.strerror or err}") from err
        self._runner, self._server, self._http = runner, listening, server
        bound = listening.sockets[0].getsockname()
        self._address = (str(bound[0]), int(bound[1]))

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close the rest."""
        listening, self._server = self._server, None
        if listening is not None:
            listening.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._http is not None:
            # What aiohttp does not know of: connections still in their TLS handshake.
            for conn in self._http.table.connections():
                conn.evict()
            handshakes = list(self._http.handshakes)
            if handshakes:
                await asyncio.gather(*handshakes, return_exceptions=True)


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
