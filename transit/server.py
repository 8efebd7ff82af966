"""``cloudless-transit``: the embedded, Vault-compatible transit HTTP server.

Every Cloudless process talks to transit through ``hvac``; this server speaks the subset of
Vault's HTTP API that ``hvac.Client(...).secrets.transit`` uses, with Vault's paths, envelope,
status codes and error messages, so pointing ``VAULT_ADDR``/``VAULT_TOKEN`` at a real Vault
or OpenBao works unchanged. The keyring model and its crypto live in
:mod:`transit.keyring`; this module is the Vault API (:class:`TransitAPI`), its HTTP
serving (:class:`TransitServer`) and the process.

HTTP is aiohttp on the process's one event loop, through the kernel's
:mod:`cloudless.http` (listening rules, TLS, token checks, bounded bodies), the same stack
as the coordinator's codec endpoint. Crypto and reads run on the loop (microseconds);
keyring writes, which fsync, run in a worker thread (see :meth:`TransitAPI._persist`).
Nothing in this module logs a token, a plaintext, a ciphertext or a request body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import math
import os
import secrets
import signal
import ssl
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar
from urllib.parse import parse_qs, unquote

import structlog
import typer
from aiohttp import web

from cloudless import __version__
from cloudless.config import state_dir
from cloudless.errors import CloudlessError, ConfigError, PKIError
from cloudless.http import (
    BodyRules,
    Listener,
    RequestRefused,
    SecretToken,
    bearer_token,
    json_bytes,
    read_json_object,
    tls_context,
)
from cloudless.http import check_listen as check_listen_rule
from cloudless.http import parse_listen as parse_listen_rule
from cloudless.logs import configure_logging
from cloudless.pki import read_private_file, write_private_file, write_public_file
from cloudless.transit.client import ADDRESS_FILE
from transit.keyring import (
    DEFAULT_KEY_TYPE,
    Clock,
    Encrypted,
    KeyNotFoundError,
    Keyring,
    SealError,
    TransitError,
    check_key_name,
    check_key_type,
    load_or_create_seal_key,
    parse_vault_duration,
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

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_LISTEN = "127.0.0.1:8200"
DEFAULT_MOUNT = "transit"
MAX_BODY_BYTES = 32 * 2**20
IDLE_TIMEOUT_SECONDS = 120.0
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

#: Methods the API knows (PUT is POST, as in Vault); any other is a 501.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "LIST", "PATCH", "OPTIONS"})
_NOT_SUPPORTED_FLAGS = ("derived", "convergent_encryption", "exportable", "allow_plaintext_backup")


# --------------------------------------------------------------------------- requests


@dataclass
class Request:
    """One Vault API call, as the HTTP layer hands it over; the body is read on demand
    (after auth and routing), bounded, as a JSON object."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    token: str | None
    read_json: Callable[[], Awaitable[dict[str, Any]]]


@dataclass
class Reply:
    status: int
    body: dict[str, Any] | None = None  # None: no body (204)
    close: bool = False


class Params:
    """A JSON object's fields, typed on access; a wrong type is a 400 that names the field.

    ``null`` counts as absent: hvac sends ``"plaintext": null`` alongside ``batch_input``.
    Strings are accepted for numbers and booleans as Vault's weak decoding does, so curl
    users can write ``"bits": "256"``.
    """

    def __init__(self, data: Mapping[str, Any], where: str = "") -> None:
        self._data = data
        self._where = where
        self._seen: set[str] = set()

    def _raw(self, name: str) -> Any:
        self._seen.add(name)
        return self._data.get(name)

    def _bad(self, name: str, expected: str) -> TransitError:
        return TransitError(f'invalid value for field "{self._where}{name}": expected {expected}')

    def has(self, name: str) -> bool:
        return self._raw(name) is not None

    def string(self, name: str) -> str | None:
        value = self._raw(name)
        if value is None or isinstance(value, str):
            return value
        raise self._bad(name, "a string")

    def integer(self, name: str) -> int | None:
        value = self._raw(name)
        if value is None:
            return None
        if isinstance(value, bool):
            raise self._bad(name, "an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value.strip(), 10)
        raise self._bad(name, "an integer")

    def boolean(self, name: str) -> bool | None:
        value = self._raw(name)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "false", "0"):
            return value.strip().lower() in ("true", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise self._bad(name, "a boolean")

    def base64(self, name: str) -> bytes | None:
        value = self.string(name)
        if value is None:
            return None
        try:
            # Line breaks are tolerated, as by Go's decoder in Vault; anything else is not.
            return base64.b64decode(value.replace("\n", "").replace("\r", ""), validate=True)
        except (binascii.Error, ValueError):
            raise TransitError(f"failed to base64-decode {self._where}{name}") from None

    def duration(self, name: str) -> int | None:
        value = self._raw(name)
        if value is None:
            return None
        return parse_vault_duration(value, f"{self._where}{name}")

    def batch(self, name: str = "batch_input") -> list[Params] | None:
        value = self._raw(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self._bad(name, "a list of objects")
        if not value:
            raise TransitError("missing batch input to process")
        items = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise TransitError(f'invalid value for field "{name}[{i}]": expected an object')
            items.append(Params(item, f"{name}[{i}]."))
        return items

    def reject_unsupported(self, names: tuple[str, ...]) -> None:
        for name in names:
            if self.boolean(name):
                raise TransitError(
                    f"{name} is not supported by cloudless-transit; use Vault or OpenBao for it"
                )

    def ignore(self, *names: str) -> None:
        """Mark fields as known but unused (Vault ignores them in batch mode)."""
        self._seen.update(names)

    def unknown(self) -> list[str]:
        return sorted(set(self._data) - self._seen)


def envelope(
    data: dict[str, Any] | None, warnings: list[str] | None = None, mount_type: str = "transit"
) -> dict[str, Any]:
    """Vault's response envelope, which hvac and other clients read ``data`` from."""
    return {
        "request_id": str(uuid.uuid4()),
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "data": data,
        "wrap_info": None,
        "warnings": warnings or None,
        "auth": None,
        "mount_type": mount_type,
    }


# --------------------------------------------------------------------------- the API


class TransitAPI:
    """Maps Vault API requests to keyring calls; knows nothing about sockets.

    Vault's semantics are the routing: the token is checked before any path is (an
    unauthenticated caller learns nothing), a known path with the wrong method is a 405,
    everything answers in Vault's envelope or its ``{"errors": [...]}`` shape.
    """

    def __init__(self, keyring: Keyring, token: str, mount: str = DEFAULT_MOUNT) -> None:
        if not token:
            raise ConfigError("the transit root token must not be empty")
        self.keyring = keyring
        self.mount = mount.strip("/")
        if not self.mount or any(not p for p in self.mount.split("/")):
            raise ConfigError(f"invalid mount path {mount!r}")
        self._token = SecretToken(token)
        # Not secret: a stable handle so lookup-self looks like Vault's, without the token.
        self._accessor = hashlib.sha256(b"accessor:" + token.encode()).hexdigest()[:24]
        self._started = time.time()

    def authorized(self, token: str | None) -> bool:
        return self._token.matches(token)

    async def handle(self, req: Request) -> Reply:
        try:
            return await self._route(req)
        except RequestRefused as err:
            return Reply(err.status, {"errors": [err.message]}, close=err.close)
        except TransitError as err:  # includes KeyNotFoundError: 400, as in Vault
            return Reply(400, {"errors": [str(err)]})
        except Exception:
            log.exception("transit.internal_error", method=req.method, path=req.path)
            return Reply(500, {"errors": ["internal error"]})

    async def _route(self, req: Request) -> Reply:
        if not req.path.startswith("/v1/"):
            raise RequestRefused(404, "unsupported path")
        rel = req.path[len("/v1/") :].strip("/")
        if rel == "sys/health":
            if req.method not in ("GET", "HEAD"):
                raise RequestRefused(405, "unsupported operation")
            return Reply(200, self._health())
        if not self.authorized(req.token):
            # Before any routing, as in Vault: an unauthenticated caller learns nothing.
            raise RequestRefused(403, "permission denied")
        if rel == "auth/token/lookup-self":
            if req.method not in ("GET", "POST"):
                raise RequestRefused(405, "unsupported operation")
            return Reply(200, envelope(self._lookup_self(), mount_type="token"))
        if rel.startswith(self.mount + "/"):
            return await self._transit(req, rel[len(self.mount) + 1 :].split("/"))
        raise RequestRefused(404, "unsupported path")

    async def _transit(self, req: Request, parts: list[str]) -> Reply:
        method = req.method
        listing = method == "LIST" or (
            method == "GET" and req.query.get("list", [""])[-1].lower() in ("true", "1")
        )
        persist = self._persist
        match parts:
            case ["keys"]:
                if not listing:
                    raise RequestRefused(405, "unsupported operation")
                return self._list()
            case ["keys", name] if method == "GET" and not listing:
                return self._read(check_key_name(name))
            case ["keys", name] if method == "POST":
                return await persist(self._create, check_key_name(name), await self._body(req))
            case ["keys", name] if method == "DELETE":
                await persist(self.keyring.delete_key, check_key_name(name))
                return Reply(204)
            case ["keys", name, "config"] if method == "POST":
                return await persist(self._config, check_key_name(name), await self._body(req))
            case ["keys", name, "rotate"] if method == "POST":
                body = await self._body(req)
                name = check_key_name(name)
                return self._reply(await persist(self.keyring.rotate_key, name), body)
            case ["keys", name, "trim"] if method == "POST":
                return await persist(self._trim, check_key_name(name), await self._body(req))
            case ["encrypt", name] if method == "POST":
                name = check_key_name(name)
                body = await self._body(req)
                if name in self.keyring:
                    return self._encrypt(name, body)
                return await persist(self._encrypt, name, body)  # upsert: creates the key
            case ["decrypt", name] if method == "POST":
                return self._decrypt(check_key_name(name), await self._body(req))
            case ["rewrap", name] if method == "POST":
                return self._rewrap(check_key_name(name), await self._body(req))
            case ["datakey", kind, name] if method == "POST":
                return self._datakey(kind, check_key_name(name), await self._body(req))
            case ["keys", _] | ["keys", _, "config" | "rotate" | "trim"]:
                raise RequestRefused(405, "unsupported operation")
            case ["encrypt" | "decrypt" | "rewrap", _] | ["datakey", _, _]:
                raise RequestRefused(405, "unsupported operation")
        raise RequestRefused(404, "unsupported path")

    # -- helpers

    @staticmethod
    async def _persist(write: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a call that may write the keyring in a worker thread.

        A keyring write seals and atomically rewrites its file with fsyncs: about 10 ms on
        the development machine (p50 9-10 ms, up to 16 ms), four thousand times an encrypt
        (2.5 us). On the event loop it would stall every other request for that long.
        Writes are rare (key management, upserts, rotation), so the thread hop costs
        nothing that matters; reads and crypto stay on the loop, where a hop would cost more
        than the work. The keyring's readers never wait for its writers.
        """
        return await asyncio.to_thread(write, *args, **kwargs)

    @staticmethod
    async def _body(req: Request) -> Params:
        return Params(await req.read_json())

    @staticmethod
    def _reply(
        data: dict[str, Any], params: Params, warnings: list[str] | None = None, status: int = 200
    ) -> Reply:
        warnings = list(warnings or [])
        unknown = params.unknown()
        if unknown:
            # Vault's wording, so a typo'd parameter is noticed instead of silently ignored.
            names = " ".join(unknown)
            warnings.append(f"Endpoint ignored these unrecognized parameters: [{names}]")
        return Reply(status, envelope(data, warnings))

    def _health(self) -> dict[str, Any]:
        # Deliberately the non-secret subset of Vault's health body: no keys, no counts.
        return {
            "initialized": True,
            "sealed": False,
            "standby": False,
            "performance_standby": False,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": int(time.time()),
            "version": __version__,
            "cluster_name": "cloudless-transit",
        }

    def _lookup_self(self) -> dict[str, Any]:
        return {
            "accessor": self._accessor,
            "creation_time": int(self._started),
            "creation_ttl": 0,
            "display_name": "root",
            "entity_id": "",
            "expire_time": None,
            "explicit_max_ttl": 0,
            "meta": None,
            "num_uses": 0,
            "orphan": True,
            "path": "auth/token/root",
            "policies": ["root"],
            "renewable": False,
            "ttl": 0,
            "type": "service",
        }

    # -- key management

    def _list(self) -> Reply:
        names = self.keyring.list_keys()
        if not names:
            return Reply(404, {"errors": []})  # Vault answers an empty LIST with 404
        return Reply(200, envelope({"keys": names}))

    def _read(self, name: str) -> Reply:
        try:
            return Reply(200, envelope(self.keyring.read_key(name)))
        except KeyNotFoundError:
            raise RequestRefused(404, f"no key named {name!r}") from None

    def _create(self, name: str, p: Params) -> Reply:
        p.reject_unsupported(_NOT_SUPPORTED_FLAGS)
        key_type = p.string("type") or DEFAULT_KEY_TYPE
        period = p.duration("auto_rotate_period") or 0
        info, created = self.keyring.create_key(name, key_type, period)
        return self._reply(info, p, None if created else [f"key {name} already existed"])

    def _config(self, name: str, p: Params) -> Reply:
        p.reject_unsupported(("exportable", "allow_plaintext_backup"))
        info, warnings = self.keyring.configure_key(
            name,
            min_decryption_version=p.integer("min_decryption_version"),
            min_encryption_version=p.integer("min_encryption_version"),
            deletion_allowed=p.boolean("deletion_allowed"),
            auto_rotate_period=p.duration("auto_rotate_period"),
        )
        return self._reply(info, p, warnings)

    def _trim(self, name: str, p: Params) -> Reply:
        version = p.integer("min_available_version")
        if version is None:
            raise TransitError("missing min_available_version")
        return self._reply(self.keyring.trim_key(name, version), p)

    # -- crypto

    @staticmethod
    def _common(p: Params) -> bytes:
        """Fields every crypto item may carry; returns the associated data."""
        p.string("context")  # only meaningful for derived keys, which are not supported
        if p.has("nonce"):
            raise TransitError(
                "nonce is only used with convergent encryption, which cloudless-transit "
                "does not support"
            )
        return p.base64("associated_data") or b""

    def _batch(
        self, p: Params, items: list[Params], one: Callable[[Params], dict[str, Any]]
    ) -> Reply:
        """Apply ``one`` to every batch item; an item's failure is reported in its slot
        (with its ``reference``) and never fails the others."""
        results: list[dict[str, Any]] = []
        failures = 0
        for item in items:
            reference = ""
            try:
                reference = item.string("reference") or ""
                results.append({**one(item), "reference": reference})
            except TransitError as err:
                failures += 1
                results.append({"error": str(err), "reference": reference})
        return self._batch_reply(p, results, failures)

    def _batch_reply(self, p: Params, results: list[dict[str, Any]], failures: int) -> Reply:
        partial_code = p.integer("partial_failure_response_code")
        status = 200
        if failures:
            status = 400
            # Vault's opt-in for partial success: another code when some items succeeded.
            if partial_code is not None and failures < len(results) and 1 <= partial_code <= 599:
                status = partial_code
        return self._reply({"batch_results": results}, p, status=status)

    def _encrypt(self, name: str, p: Params) -> Reply:
        p.reject_unsupported(("convergent_encryption",))
        upsert = p.string("type") or DEFAULT_KEY_TYPE
        check_key_type(upsert)
        default_version = p.integer("key_version")
        items = p.batch()
        if items is None:
            aad = self._common(p)
            plaintext = p.base64("plaintext")
            if plaintext is None:
                raise TransitError("missing plaintext to encrypt")
            out = self.keyring.encrypt(
                name,
                plaintext,
                associated_data=aad,
                key_version=default_version,
                upsert_type=upsert,
            )
            return self._reply(self._encrypted(out), p)
        p.ignore("plaintext", "context", "nonce", "associated_data")

        def one(item: Params) -> dict[str, Any]:
            aad = self._common(item)
            plaintext = item.base64("plaintext")
            if plaintext is None:
                raise TransitError("missing plaintext to encrypt")
            version = item.integer("key_version")
            out = self.keyring.encrypt(
                name,
                plaintext,
                associated_data=aad,
                key_version=default_version if version is None else version,
                upsert_type=upsert,
            )
            return self._encrypted(out)

        return self._batch(p, items, one)

    @staticmethod
    def _encrypted(out: Encrypted) -> dict[str, Any]:
        return {"ciphertext": out.ciphertext, "key_version": out.key_version}

    def _decrypt(self, name: str, p: Params) -> Reply:
        items = p.batch()
        if items is None:
            aad = self._common(p)
            ciphertext = p.string("ciphertext")
            if ciphertext is None:
                raise TransitError("missing ciphertext to decrypt")
            plaintext = self.keyring.decrypt(name, ciphertext, associated_data=aad)
            return self._reply({"plaintext": base64.b64encode(plaintext).decode()}, p)
        p.ignore("ciphertext", "context", "nonce", "associated_data")
        self.keyring.read_key(name)  # a missing key fails the request, not each item

        def one(item: Params) -> dict[str, Any]:
            aad = self._common(item)
            ciphertext = item.string("ciphertext")
            if ciphertext is None:
                raise TransitError("missing ciphertext to decrypt")
            plaintext = self.keyring.decrypt(name, ciphertext, associated_data=aad)
            return {"plaintext": base64.b64encode(plaintext).decode()}

        return self._batch(p, items, one)

    def _rewrap(self, name: str, p: Params) -> Reply:
        default_version = p.integer("key_version")
        items = p.batch()
        if items is None:
            aad = self._common(p)
            ciphertext = p.string("ciphertext")
            if ciphertext is None:
                raise TransitError("missing ciphertext to rewrap")
            out = self.keyring.rewrap(
                name, ciphertext, associated_data=aad, key_version=default_version
            )
            return self._reply(self._encrypted(out), p)
        p.ignore("ciphertext", "context", "nonce", "associated_data")
        self.keyring.read_key(name)

        def one(item: Params) -> dict[str, Any]:
            aad = self._common(item)
            ciphertext = item.string("ciphertext")
            if ciphertext is None:
                raise TransitError("missing ciphertext to rewrap")
            version = item.integer("key_version")
            out = self.keyring.rewrap(
                name,
                ciphertext,
                associated_data=aad,
                key_version=default_version if version is None else version,
            )
            return self._encrypted(out)

        return self._batch(p, items, one)

    def _datakey(self, kind: str, name: str, p: Params) -> Reply:
        if kind not in ("plaintext", "wrapped"):
            raise TransitError("Invalid path")
        self._common(p)
        bits = p.integer("bits")
        key = self.keyring.generate_data_key(name, 256 if bits is None else bits)
        data: dict[str, Any] = {"ciphertext": key.ciphertext, "key_version": key.key_version}
        if kind == "plaintext":
            data["plaintext"] = base64.b64encode(key.plaintext).decode()
        return self._reply(data, p)


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
    ) -> None:
        check_listen(host, tls=ssl_context is not None, allow_plaintext=allow_plaintext)
        self.keyring = keyring
        self.token = token
        self.api = TransitAPI(keyring, token, mount)
        self._listener = Listener(host, port, ssl_context=ssl_context)
        self._rotate_interval = rotate_interval
        self._rotation: asyncio.Task[None] | None = None
        self._body = BodyRules(
            max_body_bytes,
            too_large="http: request body too large",  # Go's net/http wording, as Vault's
            not_json="failed to parse JSON input: {error}",
            not_object="failed to parse JSON input: the body must be a JSON object",
            empty_is_object=True,
            read_timeout=IDLE_TIMEOUT_SECONDS,
        )

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.address

    @property
    def url(self) -> str:
        return self._listener.url

    async def start(self) -> TransitServer:
        """Bind and serve; :class:`cloudless.http.ListenError` if the address is unusable."""
        await self._listener.start(
            self._serve,
            render_error=_error_response,
            idle_timeout=IDLE_TIMEOUT_SECONDS,
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
        if request.method not in _METHODS:
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
) -> None:
    """Vault-compatible transit server (embedded default). Point hvac, Vault clients and
    Cloudless at it with VAULT_ADDR and VAULT_TOKEN.

    Serves until SIGINT or SIGTERM.
    """
    configure_logging()
    data_dir = data_dir or state_dir() / "transit"
    try:
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
