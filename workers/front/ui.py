"""The Temporal UI behind a login, with the payload codec on the UI's own origin.

A browser has no client certificate, so it gets in with a one-time login link
(:mod:`cloudless.logins`): ``GET /login?token=...`` checks the token once, starts a
session (an HttpOnly, Secure, SameSite=Lax cookie) and redirects into the UI. Every
other request needs that session and the role's permission
(:func:`policies.access.ui_request`), and is then forwarded to the Temporal UI server
(a Unix socket into the jail) byte for byte.

``POST /codec/decode`` and ``/codec/encode`` are Temporal's remote-codec protocol, served
here with the coordinator's codec, so the UI (started with this origin's ``/codec`` as
its codec endpoint) shows payloads decoded with no setting to change, and no
cross-origin request or credential is involved.
"""

from __future__ import annotations

import asyncio
import html
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import aiohttp
import structlog
from aiohttp import web
from google.protobuf import json_format
from temporalio.converter import PayloadCodec

from cloudless.codec import PayloadCodecError, TransitPayloadCodec
from cloudless.http import (
    BodyRules,
    ConnectionLimits,
    Listener,
    RequestRefused,
    authenticated,
    json_bytes,
    load_chain,
    read_body,
)
from cloudless.logins import LoginRefused, LoginVerifier
from cloudless.model import AuditRecord
from cloudless.model.audit import UNAUTHENTICATED
from cloudless.revocation import RevocationList
from policies.access import ui_request
from workers.codec_server import Sessions, cookie, read_payloads

log = structlog.get_logger("cloudless.front")

SESSION_COOKIE = "cloudless_session"
SESSION_TTL_SECONDS = 12 * 3600
CODEC_PREFIX = "/codec/"
LANDING = "/namespaces/default/workflows"
MAX_BODY_BYTES = 8 * 2**20
CODEC_TIMEOUT_SECONDS = 60.0
LIMITS = ConnectionLimits(body_timeout=30.0, idle_timeout=60.0)
#: Hop-by-hop headers (RFC 9110 7.6.1) and the ones the proxy sets itself.
_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "content-length", "host",
    }
)  # fmt: skip
_BODY = BodyRules(
    MAX_BODY_BYTES,
    too_large=f"body over {MAX_BODY_BYTES} bytes",
    chunked="chunked bodies are not supported; send Content-Length",
    not_object='body must be a JSON object {"payloads": [...]}',
    read_timeout=LIMITS.body_timeout,
)


@dataclass(frozen=True)
class Caller:
    """Who a browser session belongs to."""

    user: str
    role: str


class UiFront:
    """Serves the login, the codec and the proxied Temporal UI on one HTTPS origin."""

    def __init__(
        self,
        listen: tuple[str, int],
        upstream_socket: str,
        logins: LoginVerifier,
        codec: PayloadCodec | None,
        ssl_context: ssl.SSLContext,
        *,
        limits: ConnectionLimits = LIMITS,
    ) -> None:
        self.upstream_socket = upstream_socket
        self.logins = logins
        self.codec = codec.for_display() if isinstance(codec, TransitPayloadCodec) else codec
        self.sessions: Sessions[Caller] = Sessions(ttl=SESSION_TTL_SECONDS)
        #: Revoked users' sessions end at their next request; None until the coordinator
        #: has loaded the list (requests wait for it: 503).
        self.revocations: RevocationList | None = None
        #: Where logins refused and the UI's actions (anything but GET/HEAD) are recorded.
        self.audit: Callable[[AuditRecord], None] | None = None
        self._listener = Listener(*listen, ssl_context=ssl_context, limits=limits)
        self._ssl_context = ssl_context
        self._client: aiohttp.ClientSession | None = None

    def update(self, cert_pem: bytes, key_pem: bytes, scratch: Path) -> None:
        """Serve a renewed certificate from the next handshake on: loaded into the same
        context the listener uses (``scratch``: a private directory, see
        :func:`cloudless.http.load_chain`)."""
        load_chain(self._ssl_context, cert_pem, key_pem, scratch)

    @property
    def url(self) -> str:
        return self._listener.url

    @property
    def port(self) -> int:
        return self._listener.address[1]

    async def start(self) -> UiFront:
        self._client = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.upstream_socket),
            auto_decompress=False,  # bytes through as they are, Content-Encoding intact
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
        )
        await self._listener.start(self._serve, render_error=_error)
        log.info("front.ui_listening", url=self.url, upstream=self.upstream_socket)
        return self

    async def stop(self) -> None:
        await self._listener.stop()
        if self._client is not None:
            await self._client.close()
            self._client = None

    def end_sessions(self, match: Callable[[Caller], bool]) -> int:
        """Log out every session of matching callers (revoked users)."""
        return self.sessions.end_where(match)

    # ------------------------------------------------------------------ routing

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        path = urlsplit(request.raw_path).path
        try:
            if path == "/login":
                return self._login(request)
            if path == "/logout":
                self.sessions.end(cookie(request, SESSION_COOKIE))
                return _page(200, "Logged out of Cloudless.", clear_cookie=True)
            session = cookie(request, SESSION_COOKIE)
            caller = self.sessions.get(session)
            if caller is None:
                raise RequestRefused(
                    401, "log in first: open a link from `cloudlessctl ui login` (links work once)"
                )
            if self.revocations is None:
                raise RequestRefused(503, "the coordinator is starting; try again in a few seconds")
            if caller.user in self.revocations.users:
                self.sessions.end(session)
                raise RequestRefused(401, f"user {caller.user!r} was revoked; the session ended")
            authenticated(request)
            if path.startswith(CODEC_PREFIX):
                return await self._codec(request, path)
            decision = ui_request(caller.role, request.method, path)
            if not decision.allowed:
                log.warning(
                    "front.ui_refused", user=caller.user, method=request.method, path=path,
                    why=decision.reason,
                )  # fmt: skip
                self._record(request, caller, path, "denied", decision.reason)
                raise RequestRefused(403, decision.reason)
            response = await self._forward(request)
            if request.method not in ("GET", "HEAD"):  # what the UI's buttons do
                failed = response.status >= 400
                self._record(
                    request, caller, path, "failed" if failed else "allowed",
                    f"HTTP {response.status}" if failed else "",
                )  # fmt: skip
            return response
        except RequestRefused as err:
            response = _refusal(request, err)
            if err.close:
                response.force_close()
            return response
        finally:
            log.debug(
                "front.ui_request",
                method=request.method,
                path=path,
                ms=round((time.monotonic() - started) * 1000, 3),
            )

    def _record(
        self,
        request: web.BaseRequest,
        caller: Caller | None,
        path: str,
        outcome: Literal["allowed", "denied", "failed"],
        reason: str,
    ) -> None:
        if self.audit is None:
            return
        self.audit(
            AuditRecord(
                actor=f"ui:{caller.user}" if caller is not None else UNAUTHENTICATED,
                role=caller.role if caller is not None else "",
                source=request.remote or "",
                action=f"HTTP {request.method}",
                target=path,
                message="",
                outcome=outcome,
                reason=reason,  # clipped by the model
            )
        )

    def _login(self, request: web.BaseRequest) -> web.Response:
        if request.method != "GET":
            raise RequestRefused(405, "open the login link with GET (in a browser)")
        query = parse_qs(urlsplit(request.raw_path).query)
        token = (query.get("token") or [""])[0]
        try:
            claims = self.logins.verify(token)
        except LoginRefused as err:
            log.warning("front.login_refused", peer=request.remote, why=str(err))
            self._record(request, None, "/login", "denied", str(err))
            raise RequestRefused(401, str(err)) from None
        if self.revocations is not None and claims.user in self.revocations.users:
            raise RequestRefused(401, f"user {claims.user!r} was revoked")
        authenticated(request)
        session = self.sessions.create(Caller(claims.user, claims.role))
        log.info("front.login", user=claims.user, role=claims.role, peer=request.remote)
        response = web.Response(status=303, headers=_SECURITY)
        response.headers["Location"] = LANDING
        response.headers["Set-Cookie"] = "; ".join(
            [
                f"{SESSION_COOKIE}={session}",
                "Path=/",
                f"Max-Age={SESSION_TTL_SECONDS}",
                "HttpOnly",
                "Secure",
                # Lax, not Strict: the link is opened from elsewhere (a terminal), and a
                # Strict cookie would not ride the redirect that follows it.
                "SameSite=Lax",
            ]
        )
        return response

    async def _codec(self, request: web.BaseRequest, path: str) -> web.Response:
        operation = path[len(CODEC_PREFIX) :]
        if request.method != "POST" or operation not in ("encode", "decode"):
            raise RequestRefused(404, f"no such codec call {request.method} {path}")
        if self.codec is None:
            raise RequestRefused(503, "this coordinator runs without the payload codec")
        payloads = await read_payloads(request, _BODY)
        coro = self.codec.encode(payloads) if operation == "encode" else self.codec.decode(payloads)
        try:
            result = await asyncio.wait_for(coro, CODEC_TIMEOUT_SECONDS)
        except PayloadCodecError as err:
            raise RequestRefused(422, str(err)) from err
        body = json_bytes({"payloads": [json_format.MessageToDict(p) for p in result]})
        return web.Response(
            status=200, body=body, content_type="application/json", headers=_SECURITY
        )

    async def _forward(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._client is not None
        body = await read_body(request, _BODY)
        headers = request.headers.copy()  # a case-insensitive multi-dict, aiohttp's own
        for name in {*_HOP, "cookie"}:
            headers.popall(name, None)
        kept = _without_cookie(request.headers.getall("Cookie", []), SESSION_COOKIE)
        if kept:
            headers["Cookie"] = kept
        headers["Host"] = request.host
        try:
            async with self._client.request(
                request.method,
                f"http://temporal-ui{request.raw_path}",
                headers=headers,
                data=body or None,
                allow_redirects=False,
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP - {"content-length"}:
                        response.headers.add(key, value)
                for key, value in _SECURITY.items():
                    response.headers.setdefault(key, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, OSError) as err:
            log.warning("front.ui_upstream_failed", error=str(err))
            raise RequestRefused(502, "the Temporal UI is not answering; is Temporal up?") from err


#: Headers on every response the front makes itself.
_SECURITY = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # never leak a login link in a Referer
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def _without_cookie(values: list[str], name: str) -> str:
    """The Cookie header minus ours: the UI server never sees a Cloudless session."""
    parts = [p.strip() for v in values for p in v.split(";") if p.strip()]
    return "; ".join(p for p in parts if p.partition("=")[0] != name)


def _wants_html(request: web.BaseRequest) -> bool:
    return request.method == "GET" and "text/html" in (request.headers.get("Accept") or "")


def _page(status: int, message: str, *, clear_cookie: bool = False) -> web.Response:
    body = f"<!doctype html><title>Cloudless</title><p>{html.escape(message)}</p>".encode()
    response = web.Response(
        status=status, body=body, content_type="text/html", charset="utf-8", headers=_SECURITY
    )
    if clear_cookie:
        response.headers["Set-Cookie"] = (
            f"{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax"
        )
    return response


def _refusal(request: web.BaseRequest, err: RequestRefused) -> web.Response:
    if _wants_html(request):
        return _page(err.status, err.message)
    return web.Response(
        status=err.status,
        body=json_bytes({"error": err.message}),
        content_type="application/json",
        headers=_SECURITY,
    )


def _error(status: int, message: str) -> web.Response:
    """Refusals aiohttp or the listener's limits make before a request reaches us."""
    return web.Response(
        status=status, body=json_bytes({"error": message}), content_type="application/json"
    )
