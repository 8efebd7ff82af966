"""``cloudless-transit``: the embedded, Vault-compatible transit HTTP server.

Every Cloudless process talks to transit through ``hvac``; this server speaks the subset of
Vault's HTTP API that ``hvac.Client(...).secrets.transit`` uses, with Vault's paths, envelope,
status codes and error messages, so pointing ``VAULT_ADDR``/``VAULT_TOKEN`` at a real Vault
or OpenBao works unchanged. The keyring model and its crypto live in
:mod:`transit.keyring`, the Vault API's semantics in :mod:`transit.api`; this module
is its HTTP serving (:class:`TransitServer`) and the process.

HTTP is aiohttp on the process's one event loop, through the kernel's
:mod:`cloudless.http` (listening rules, TLS, token checks, bounded bodies), the same stack
as the coordinator's codec endpoint. Crypto and reads run on the loop (microseconds);
keyring writes, which fsync, run in a worker thread (see :meth:`TransitAPI._persist`).
Nothing in this module logs a token, a plaintext, a ciphertext or a request body.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import signal
import ssl
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, unquote

import structlog
import typer
from aiohttp import web

from cloudless.config import state_dir
from cloudless.errors import CloudlessError, ConfigError, PKIError
from cloudless.http import (
    BodyRules,
    ConnectionLimits,
    Listener,
    authenticated,
    bearer_token,
    json_bytes,
    read_json_object,
    tls_context,
)
from cloudless.http import check_listen as check_listen_rule
from cloudless.http import parse_listen as parse_listen_rule
from cloudless.logs import configure_logging
from cloudless.pki import read_private_file, write_private_file, write_public_file
from cloudless.process import raise_open_files_limit
from cloudless.transit.client import ADDRESS_FILE
from transit.api import DEFAULT_MOUNT, METHODS, Reply, Request, TransitAPI
from transit.keyring import (
    Clock,
    Keyring,
    SealError,
    load_or_create_seal_key,
)

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_MOUNT",
    "KEYRING_FILE",
    "SEAL_KEY_FILE",
    "TOKEN_FILE",
    "State",
    "TransitAPI",
    "TransitServer",
    "check_listen",
    "load_or_create_token",
    "main",
    "open_state",
    "parse_listen",
    "tls_context",
]

log = structlog.get_logger("cloudless.transit")


DEFAULT_LISTEN = "127.0.0.1:8200"
MAX_BODY_BYTES = 32 * 2**20
#: Connection limits (see docs/operations.md#limits); bodies up to 32 MiB get 120 s.
LIMITS = ConnectionLimits(body_timeout=120.0, idle_timeout=120.0)
ROTATE_CHECK_SECONDS = 60.0
SERVER_HEADER = "cloudless-transit"

KEYRING_FILE = "keyring.sealed"
SEAL_KEY_FILE = "seal.key"
TOKEN_FILE = "root-token"

ENV_TOKEN = "CLOUDLESS_TRANSIT_TOKEN"
ENV_DATA_DIR = "CLOUDLESS_TRANSIT_DATA_DIR"
ENV_LISTEN = "CLOUDLESS_TRANSIT_LISTEN"
ENV_MOUNT = "CLOUDLESS_TRANSIT_MOUNT"
ENV_SEAL_KEY_FILE = "CLOUDLESS_TRANSIT_SEAL_KEY_FILE"
ENV_TOKEN_FILE = "CLOUDLESS_TRANSIT_TOKEN_FILE"
ENV_TLS_CERT = "CLOUDLESS_TRANSIT_TLS_CERT"
ENV_TLS_KEY = "CLOUDLESS_TRANSIT_TLS_KEY"
ENV_MAX_CONNECTIONS = "CLOUDLESS_TRANSIT_MAX_CONNECTIONS"
ENV_MAX_PER_PEER = "CLOUDLESS_TRANSIT_MAX_CONNECTIONS_PER_PEER"
ENV_HEADER_TIMEOUT = "CLOUDLESS_TRANSIT_HEADER_TIMEOUT"
ENV_BODY_TIMEOUT = "CLOUDLESS_TRANSIT_BODY_TIMEOUT"
ENV_IDLE_TIMEOUT = "CLOUDLESS_TRANSIT_IDLE_TIMEOUT"

# --------------------------------------------------------------------------- HTTP


def _token(headers: Mapping[str, str]) -> str | None:
    """Vault's ``X-Vault-Token``, else ``Authorization: Bearer``."""
    token = headers.get("X-Vault-Token")
    if token:
        return token.strip()
    return bearer_token(headers)


def _response(reply: Reply) -> web.Response:
    headers = {"Cache-Control": "no-store", "Server": SERVER_HEADER}
    if reply.body is None:
        response = web.Response(status=reply.status, headers=headers)
    else:
        response = web.Response(
            status=reply.status,
            body=json_bytes(reply.body),
            content_type="application/json",
            headers=headers,
        )
    if reply.close:
        response.force_close()
    return response


def _error_response(status: int, message: str) -> web.Response:
    """Vault's error shape for requests aiohttp refuses before they reach the API."""
    return _response(Reply(status, {"errors": [message]}, close=True))


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; an empty host means every interface, as in Vault."""
    return parse_listen_rule(value, flag="--listen", example="127.0.0.1:8200 or [::1]:8200")


def check_listen(host: str, *, tls: bool, allow_plaintext: bool) -> None:
    """Plain HTTP carries the token and every plaintext in clear; keep it on loopback."""
    check_listen_rule(
        host,
        tls=tls,
        allow_plaintext=allow_plaintext,
        refusal=f"refusing to listen on {host!r} without TLS: tokens and plaintexts would "
        "cross the network in clear. Give --tls-cert/--tls-key, listen on 127.0.0.1, or pass "
        "--insecure-allow-plaintext if something else (a TLS proxy, a private link) protects it",
    )


class TransitServer:
    """The HTTP server and the auto-rotation task around one keyring, on the running loop.

    ``await start()`` binds (``port=0`` picks a free port, see :attr:`address`) and
    ``await stop()`` stops accepting, lets in-flight requests finish for a few seconds and
    closes every connection; ``async with`` does both. Synchronous callers (tests,
    :class:`cloudless.testing.LocalCluster`) use ``cloudless.testing.transit``, which runs
    it on a loop of its own.
    """

    def __init__(
        self,
        keyring: Keyring,
        token: str,
        *,
        host: str = "127.0.0.1",
        port: int = 8200,
        mount: str = DEFAULT_MOUNT,
        ssl_context: ssl.SSLContext | None = None,
        allow_plaintext: bool = False,
        rotate_interval: float = ROTATE_CHECK_SECONDS,
        max_body_bytes: int = MAX_BODY_BYTES,
        limits: ConnectionLimits = LIMITS,
    ) -> None:
        check_listen(host, tls=ssl_context is not None, allow_plaintext=allow_plaintext)
        self.keyring = keyring
        self.token = token
        self.api = TransitAPI(keyring, token, mount)
        self._listener = Listener(host, port, ssl_context=ssl_context, limits=limits)
        self._rotate_interval = rotate_interval
        self._rotation: asyncio.Task[None] | None = None
        self._body = BodyRules(
            max_body_bytes,
            too_large="http: request body too large",  # Go's net/http wording, as Vault's
            not_json="failed to parse JSON input: {error}",
            not_object="failed to parse JSON input: the body must be a JSON object",
            empty_is_object=True,
            read_timeout=self._listener.limits.body_timeout,
        )

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.address

    @property
    def url(self) -> str:
        return self._listener.url

    @property
    def listener(self) -> Listener:
        """The HTTP listener (its limits, how many connections it holds)."""
        return self._listener

    async def start(self) -> TransitServer:
        """Bind and serve; :class:`cloudless.http.ListenError` if the address is unusable."""
        await self._listener.start(
            self._serve,
            render_error=_error_response,
            any_method=True,  # Vault's LIST, which hvac sends
        )
        self._rotation = asyncio.create_task(self._rotate_loop(), name="transit-rotate")
        return self

    async def stop(self) -> None:
        """Stop rotating and serving; closes keep-alive connections."""
        rotation, self._rotation = self._rotation, None
        if rotation is not None:
            rotation.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rotation
        await self._listener.stop()

    async def __aenter__(self) -> TransitServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _rotate_loop(self) -> None:
        """Rotate overdue keys now (the server may have been down) and then periodically.

        In a worker thread: a rotation writes the keyring (see ``TransitAPI._persist``).
        """
        while True:
            try:
                await asyncio.to_thread(self.keyring.rotate_due)
            except Exception:
                log.exception("transit.auto_rotate_failed")
            await asyncio.sleep(self._rotate_interval)

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in METHODS:
            return _error_response(501, f"Unsupported method ({request.method!r})")
        started = time.perf_counter()
        path, _, query = request.raw_path.partition("?")
        req = Request(
            # Vault treats PUT and POST alike.
            method="POST" if request.method == "PUT" else request.method,
            path=unquote(path),
            query=parse_qs(query),
            token=_token(request.headers),
            read_json=functools.partial(read_json_object, request, self._body),
        )
        if self.api.authorized(req.token):
            authenticated(request)  # its connection outranks strangers' (cloudless.http)
        reply = await self.api.handle(req)
        log.debug(
            "transit.request",
            method=req.method,
            path=req.path,
            status=reply.status,
            ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return _response(reply)


# --------------------------------------------------------------------------- process


def load_or_create_token(path: Path) -> str:
    """The root token from ``path``, created 0600 with 256 random bits if absent."""
    path = Path(path)
    if not path.exists():
        token = "clt." + secrets.token_urlsafe(32)
        try:
            write_private_file(path, token.encode() + b"\n", overwrite=False)
        except FileExistsError:
            return load_or_create_token(path)
        except PKIError as err:
            raise ConfigError(str(err)) from err
        log.warning("transit.token_created", path=str(path))  # the path, never the token
        return token
    try:
        token = read_private_file(path).decode().strip()
    except (PKIError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot use token file {path}: {err}") from err
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


@dataclass
class State:
    """What a server needs from disk: the unsealed keyring and the root token."""

    keyring: Keyring
    token: str
    token_source: str
    paths: dict[str, Path] = field(default_factory=dict)


def open_state(
    data_dir: Path,
    *,
    seal_key_file: Path | None = None,
    token_file: Path | None = None,
    token: str | None = None,
    clock: Clock = time.time,
) -> State:
    """Unseal (or create) the keyring under ``data_dir`` and find the root token.

    A keyring without its seal key is an error, not a reason to make a new key: that would
    seal an empty keyring next to the unreadable one and lose every key for good.
    """
    data_dir = Path(data_dir).absolute()
    keyring_path = data_dir / KEYRING_FILE
    seal_path = Path(seal_key_file) if seal_key_file else data_dir / SEAL_KEY_FILE
    token_path = Path(token_file) if token_file else data_dir / TOKEN_FILE
    if keyring_path.exists() and not seal_path.exists():
        raise SealError(
            f"keyring file {keyring_path} exists but seal key file {seal_path} does not; "
            "point --seal-key-file at the key it was sealed with. Refusing to start"
        )
    seal_key = load_or_create_seal_key(seal_path)
    keyring = Keyring.open(keyring_path, seal_key, clock=clock)
    if token:
        source = "given"
    else:
        token = load_or_create_token(token_path)
        source = str(token_path)
    return State(
        keyring,
        token,
        source,
        {"keyring": keyring_path, "seal_key": seal_path, "token": token_path},
    )


async def serve(server: TransitServer, state: State, data_dir: Path) -> None:
    """Serve until SIGINT/SIGTERM, advertising the URL in ``data_dir`` meanwhile."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    # Other local processes (the CLI, a dev-stack coordinator) find the server through this.
    address_file = Path(data_dir).absolute() / ADDRESS_FILE
    with contextlib.suppress(CloudlessError):
        write_public_file(address_file, f"{server.url}\n".encode())
    given = state.token_source == "given"
    log.info(
        "transit.listening",
        url=server.url,
        mount=server.api.mount,
        keyring=str(state.paths["keyring"]),
        token_from=f"${ENV_TOKEN}" if given else state.token_source,
        hint=f"export VAULT_ADDR={server.url} VAULT_TOKEN="
        + (f"${ENV_TOKEN}" if given else f"$(cat {state.token_source})"),
    )
    await stop.wait()
    log.info("transit.stopping")
    await server.stop()
    with contextlib.suppress(OSError):
        if address_file.read_text().strip() == server.url:
            address_file.unlink()


app = typer.Typer(add_completion=False, context_settings={"help_option_names": ["-h", "--help"]})


def _option(*names: str, envvar: str | None = None, help: str) -> Any:
    """A flag whose help text already says its default and environment variable."""
    return typer.Option(*names, envvar=envvar, help=help, show_default=False, show_envvar=False)


@app.command()
def main_command(
    listen: Annotated[
        str,
        _option(
            envvar=ENV_LISTEN,
            help=f"host:port to bind (default {DEFAULT_LISTEN}; ${ENV_LISTEN}). Without TLS "
            "only loopback addresses are allowed",
        ),
    ] = DEFAULT_LISTEN,
    data_dir: Annotated[
        Path | None,
        _option(
            envvar=ENV_DATA_DIR,
            help=f"directory of the sealed keyring (default .cloudless/transit; ${ENV_DATA_DIR})",
        ),
    ] = None,
    seal_key_file: Annotated[
        Path | None,
        _option(
            envvar=ENV_SEAL_KEY_FILE,
            help="32-byte seal key (raw or base64); created 0600 if absent. Default: "
            f"DATA_DIR/{SEAL_KEY_FILE}; in production keep it elsewhere (${ENV_SEAL_KEY_FILE})",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        _option(
            envvar=ENV_TOKEN_FILE,
            help=f"root token file, created 0600 if absent (default DATA_DIR/{TOKEN_FILE}); "
            f"${ENV_TOKEN} overrides it",
        ),
    ] = None,
    mount: Annotated[
        str,
        _option(
            envvar=ENV_MOUNT,
            help=f"transit mount path under /v1/ (default {DEFAULT_MOUNT}; ${ENV_MOUNT})",
        ),
    ] = DEFAULT_MOUNT,
    tls_cert: Annotated[Path | None, _option(envvar=ENV_TLS_CERT, help="PEM certificate")] = None,
    tls_key: Annotated[Path | None, _option(envvar=ENV_TLS_KEY, help="PEM private key")] = None,
    insecure_allow_plaintext: Annotated[
        bool,
        _option(
            "--insecure-allow-plaintext",
            help="allow plain HTTP on a non-loopback address (only behind a TLS proxy/private "
            "link)",
        ),
    ] = False,
    rotate_check_interval: Annotated[
        float, _option(help="seconds between auto_rotate_period checks (default 60)")
    ] = ROTATE_CHECK_SECONDS,
    max_connections: Annotated[
        int,
        _option(
            envvar=ENV_MAX_CONNECTIONS,
            help=f"open connections held at most (default {LIMITS.max_connections}, at most "
            f"half the open-files limit; ${ENV_MAX_CONNECTIONS}); over it, a new connection "
            "pushes out the oldest unauthenticated one, then the longest-idle one",
        ),
    ] = LIMITS.max_connections,
    max_connections_per_peer: Annotated[
        int,
        _option(
            envvar=ENV_MAX_PER_PEER,
            help="open connections per client address, pushed out likewise (default "
            f"{LIMITS.max_per_peer}; ${ENV_MAX_PER_PEER})",
        ),
    ] = LIMITS.max_per_peer,
    header_timeout: Annotated[
        float,
        _option(
            envvar=ENV_HEADER_TIMEOUT,
            help="seconds a new or unauthenticated connection has to send a whole request "
            f"head, TLS handshake included (default {LIMITS.header_timeout:g}; "
            f"${ENV_HEADER_TIMEOUT})",
        ),
    ] = LIMITS.header_timeout,
    body_timeout: Annotated[
        float,
        _option(
            envvar=ENV_BODY_TIMEOUT,
            help=f"seconds to send a request body (default {LIMITS.body_timeout:g}; "
            f"${ENV_BODY_TIMEOUT})",
        ),
    ] = LIMITS.body_timeout,
    idle_timeout: Annotated[
        float,
        _option(
            envvar=ENV_IDLE_TIMEOUT,
            help="seconds an authenticated kept-alive connection may stay silent "
            f"(default {LIMITS.idle_timeout:g}; ${ENV_IDLE_TIMEOUT})",
        ),
    ] = LIMITS.idle_timeout,
) -> None:
    """Vault-compatible transit server (embedded default). Point hvac, Vault clients and
    Cloudless at it with VAULT_ADDR and VAULT_TOKEN.

    Serves until SIGINT or SIGTERM.
    """
    configure_logging()
    data_dir = data_dir or state_dir() / "transit"
    try:
        limits = ConnectionLimits(
            max_connections=max_connections,
            max_per_peer=max_connections_per_peer,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            idle_timeout=idle_timeout,
        )
        raise_open_files_limit()  # before the listener sizes its cap from it
        host, port = parse_listen(listen)
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        # Before touching any file: a refused start must leave no trace.
        check_listen(host, tls=tls_cert is not None, allow_plaintext=insecure_allow_plaintext)
        context = tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
        state = open_state(
            data_dir,
            seal_key_file=seal_key_file,
            token_file=token_file,
            token=os.environ.get(ENV_TOKEN) or None,
        )
        server = TransitServer(
            state.keyring,
            state.token,
            host=host,
            port=port,
            mount=mount,
            ssl_context=context,
            allow_plaintext=insecure_allow_plaintext,
            rotate_interval=rotate_check_interval,
            limits=limits,
        )
        asyncio.run(serve(server, state, data_dir))
    except (CloudlessError, OSError) as err:
        print(f"cloudless-transit: {err}", file=sys.stderr)
        raise typer.Exit(1) from err


def main() -> None:
    """Entry point of ``cloudless-transit``."""
    app(prog_name="cloudless-transit")


if __name__ == "__main__":
    main()
