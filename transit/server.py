"""``cloudless-transit``: the embedded, Vault-compatible transit HTTP server.

Every Cloudless process talks to transit through ``hvac``; this server speaks the subset of
Vault's HTTP API that ``hvac.Client(...).secrets.transit`` uses, with Vault's paths, envelope,
status codes and error messages, so pointing ``VAULT_ADDR``/``VAULT_TOKEN`` at a real Vault
or OpenBao works unchanged. The keyring model and its crypto live in
:mod:`transit.keyring`; this module is only HTTP, auth and process wiring.

The standard library's threading HTTP server is enough here: requests are tiny, crypto
takes microseconds, and it keeps the trusted code small. Nothing in this module logs a
token, a plaintext, a ciphertext or a request body.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import ipaddress
import json
import math
import os
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import structlog

from cloudless import __version__
from cloudless.config import state_dir
from cloudless.errors import CloudlessError, ConfigError, PKIError
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

log = structlog.get_logger("cloudless.transit")

DEFAULT_LISTEN = "127.0.0.1:8200"
DEFAULT_MOUNT = "transit"
MAX_BODY_BYTES = 32 * 2**20
IDLE_TIMEOUT_SECONDS = 120.0
MAX_CONNECTIONS = 512
ROTATE_CHECK_SECONDS = 60.0

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

_NOT_SUPPORTED_FLAGS = ("derived", "convergent_encryption", "exportable", "allow_plaintext_backup")


# --------------------------------------------------------------------------- requests


class HTTPError(Exception):
    """An error answered with Vault's shape: ``{"errors": [...]}`` and a status code."""

    def __init__(self, status: int, *errors: str, close: bool = False) -> None:
        super().__init__(errors[0] if errors else str(status))
        self.status = status
        self.errors = list(errors)
        self.close = close


@dataclass
class Request:
    method: str
    path: str
    query: Mapping[str, list[str]]
    token: str | None
    read_body: Callable[[], bytes]


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


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# --------------------------------------------------------------------------- the API


class TransitAPI:
    """Maps Vault API requests to keyring calls; knows nothing about sockets."""

    def __init__(self, keyring: Keyring, token: str, mount: str = DEFAULT_MOUNT) -> None:
        if not token:
            raise ConfigError("the transit root token must not be empty")
        self.keyring = keyring
        self.mount = mount.strip("/")
        if not self.mount or any(not p for p in self.mount.split("/")):
            raise ConfigError(f"invalid mount path {mount!r}")
        self._token_digest = _digest(token)
        # Not secret: a stable handle so lookup-self looks like Vault's, without the token.
        self._accessor = hashlib.sha256(b"accessor:" + token.encode()).hexdigest()[:24]
        self._started = time.time()

    def authorized(self, token: str | None) -> bool:
        # Compare fixed-length digests so neither content nor length leaks through timing.
        return token is not None and secrets.compare_digest(_digest(token), self._token_digest)

    def handle(self, req: Request) -> Reply:
        try:
            return self._route(req)
        except HTTPError as err:
            return Reply(err.status, {"errors": err.errors}, close=err.close)
        except TransitError as err:  # includes KeyNotFoundError: 400, as in Vault
            return Reply(400, {"errors": [str(err)]})
        except Exception:
            log.exception("transit.internal_error", method=req.method, path=req.path)
            return Reply(500, {"errors": ["internal error"]})

    def _route(self, req: Request) -> Reply:
        if not req.path.startswith("/v1/"):
            raise HTTPError(404, "unsupported path")
        rel = req.path[len("/v1/") :].strip("/")
        if rel == "sys/health":
            if req.method not in ("GET", "HEAD"):
                raise HTTPError(405, "unsupported operation")
            return Reply(200, self._health())
        if not self.authorized(req.token):
            # Before any routing, as in Vault: an unauthenticated caller learns nothing.
            raise HTTPError(403, "permission denied")
        if rel == "auth/token/lookup-self":
            if req.method not in ("GET", "POST"):
                raise HTTPError(405, "unsupported operation")
            return Reply(200, envelope(self._lookup_self(), mount_type="token"))
        if rel.startswith(self.mount + "/"):
            return self._transit(req, rel[len(self.mount) + 1 :].split("/"))
        raise HTTPError(404, "unsupported path")

    def _transit(self, req: Request, parts: list[str]) -> Reply:
        method = req.method
        listing = method == "LIST" or (
            method == "GET" and req.query.get("list", [""])[-1].lower() in ("true", "1")
        )
        match parts:
            case ["keys"]:
                if not listing:
                    raise HTTPError(405, "unsupported operation")
                return self._list()
            case ["keys", name] if method == "GET" and not listing:
                return self._read(check_key_name(name))
            case ["keys", name] if method == "POST":
                return self._create(check_key_name(name), self._body(req))
            case ["keys", name] if method == "DELETE":
                self.keyring.delete_key(check_key_name(name))
                return Reply(204)
            case ["keys", name, "config"] if method == "POST":
                return self._config(check_key_name(name), self._body(req))
            case ["keys", name, "rotate"] if method == "POST":
                body = self._body(req)
                return self._reply(self.keyring.rotate_key(check_key_name(name)), body)
            case ["keys", name, "trim"] if method == "POST":
                return self._trim(check_key_name(name), self._body(req))
            case ["encrypt", name] if method == "POST":
                return self._encrypt(check_key_name(name), self._body(req))
            case ["decrypt", name] if method == "POST":
                return self._decrypt(check_key_name(name), self._body(req))
            case ["rewrap", name] if method == "POST":
                return self._rewrap(check_key_name(name), self._body(req))
            case ["datakey", kind, name] if method == "POST":
                return self._datakey(kind, check_key_name(name), self._body(req))
            case ["keys", _] | ["keys", _, "config" | "rotate" | "trim"]:
                raise HTTPError(405, "unsupported operation")
            case ["encrypt" | "decrypt" | "rewrap", _] | ["datakey", _, _]:
                raise HTTPError(405, "unsupported operation")
        raise HTTPError(404, "unsupported path")

    # -- helpers

    @staticmethod
    def _body(req: Request) -> Params:
        raw = req.read_body()
        if not raw.strip():
            return Params({})
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise HTTPError(400, f"failed to parse JSON input: {err}") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "failed to parse JSON input: the body must be a JSON object")
        return Params(data)

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
            raise HTTPError(404, f"no key named {name!r}") from None

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


class _Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive so hvac's session reuses it."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "cloudless-transit"
    sys_version = ""
    timeout = IDLE_TIMEOUT_SECONDS
    # Buffer a whole response (flushed by handle_one_request) and disable Nagle: headers and
    # body in separate segments would meet the client's delayed ACK and add ~40 ms a request.
    wbufsize = 1 << 16

    def setup(self) -> None:
        with contextlib.suppress(OSError):
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.request, ssl.SSLSocket):
            # The handshake happens here, in the connection's own thread, so a slow or
            # hostile client cannot stall the accept loop.
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()
        self._body_pending = False

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are logged by _serve, without query strings or bodies

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests caught by the stdlib get Vault's JSON error shape too."""
        self.close_connection = True
        self._send(code, {"errors": [message or self.responses.get(code, ("error",))[0]]})

    def _send(self, status: int, body: dict[str, Any] | None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)

    def _token(self) -> str | None:
        token = self.headers.get("X-Vault-Token")
        if token:
            return token.strip()
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None

    def _read_body(self) -> bytes:
        self._body_pending = False
        encoding = (self.headers.get("Transfer-Encoding") or "").strip().lower()
        if encoding not in ("", "identity"):
            raise HTTPError(
                411, "chunked request bodies are not supported; send Content-Length", close=True
            )
        length_text = self.headers.get("Content-Length")
        if not length_text:
            return b""
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            raise HTTPError(400, "invalid Content-Length header", close=True) from None
        if length > self.server.max_body_bytes:
            raise HTTPError(413, "http: request body too large", close=True)
        try:
            data = self.rfile.read(length)
        except OSError:  # includes timeouts: the client stopped sending
            raise HTTPError(400, "could not read the request body", close=True) from None
        if len(data) != length:
            raise HTTPError(400, "request body ended early", close=True)
        return data

    def _serve(self) -> None:
        started = time.perf_counter()
        path, _, query = self.path.partition("?")
        self._body_pending = bool(self.headers.get("Content-Length", "0").strip() not in ("", "0"))
        self._body_pending |= bool(self.headers.get("Transfer-Encoding"))
        req = Request(
            # Vault treats PUT and POST alike.
            method="POST" if self.command.upper() == "PUT" else self.command.upper(),
            path=unquote(path),
            query=parse_qs(query),
            token=self._token(),
            read_body=self._read_body,
        )
        reply = self.server.api.handle(req)
        if reply.close or self._body_pending or self.server.closing:
            # An unread body would be parsed as the next request; drop the connection.
            self.close_connection = True
        self._send(reply.status, reply.body)
        log.debug(
            "transit.request",
            method=req.method,
            path=req.path,
            status=reply.status,
            ms=round((time.perf_counter() - started) * 1000, 3),
        )

    do_GET = do_POST = do_PUT = do_DELETE = do_LIST = do_HEAD = _serve
    do_PATCH = do_OPTIONS = _serve


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        api: TransitAPI,
        ssl_context: ssl.SSLContext | None,
        max_body_bytes: int,
    ) -> None:
        self.address_family = family
        self.api = api
        self.max_body_bytes = max_body_bytes
        self.closing = False
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._connections_lock:
            if self.closing or len(self._connections) >= MAX_CONNECTIONS:
                return False  # refused connections are closed by socketserver
            self._connections.add(request)
        return True

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Resets, TLS handshake failures and timeouts are the client's business.
        err = sys.exc_info()[1]
        if isinstance(err, OSError | ssl.SSLError | TimeoutError):
            log.debug("transit.connection_error", error=type(err).__name__)
            return
        log.exception("transit.connection_error")

    def close_all(self) -> None:
        self.closing = True
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


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


def check_listen(host: str, *, tls: bool, allow_plaintext: bool) -> None:
    """Plain HTTP carries the token and every plaintext in clear; keep it on loopback."""
    if tls or allow_plaintext or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to listen on {host!r} without TLS: tokens and plaintexts would cross the "
        "network in clear. Give --tls-cert/--tls-key, listen on 127.0.0.1, or pass "
        "--insecure-allow-plaintext if something else (a TLS proxy, a private link) protects it"
    )


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; an empty host means every interface, as in Vault."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"--listen {value!r} must look like 127.0.0.1:8200 or [::1]:8200")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {err}") from err
    return context


class TransitServer:
    """The HTTP server and the auto-rotation thread around one keyring."""

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
        self._tls = ssl_context is not None
        self._rotate_interval = rotate_interval
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except OSError as err:
            raise ConfigError(f"cannot resolve listen address {host!r}: {err}") from err
        try:
            self._httpd = _HTTPServer(
                (str(sockaddr[0]), int(sockaddr[1])), family, self.api, ssl_context, max_body_bytes
            )
        except OSError as err:
            raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self._tls else 'http'}://{host}:{port}"

    def start(self) -> TransitServer:
        serve = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="transit-http",
            daemon=True,
        )
        rotate = threading.Thread(target=self._rotate_loop, name="transit-rotate", daemon=True)
        self._threads = [serve, rotate]
        for thread in self._threads:
            thread.start()
        return self

    def _rotate_loop(self) -> None:
        """Rotate overdue keys now (the server may have been down) and then periodically."""
        while True:
            try:
                self.keyring.rotate_due()
            except Exception:
                log.exception("transit.auto_rotate_failed")
            if self._stop.wait(self._rotate_interval):
                return

    def stop(self) -> None:
        """Stop accepting, close open keep-alive connections and join the threads."""
        self._stop.set()
        self._httpd.closing = True
        if self._threads:
            self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_all()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> TransitServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="cloudless-transit",
        description="Vault-compatible transit server (embedded default). Point hvac, Vault "
        "clients and Cloudless at it with VAULT_ADDR and VAULT_TOKEN.",
    )
    parser.add_argument(
        "--listen",
        default=env(ENV_LISTEN, DEFAULT_LISTEN),
        help=f"host:port to bind (default {DEFAULT_LISTEN}; ${ENV_LISTEN}). Without TLS only "
        "loopback addresses are allowed",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env(ENV_DATA_DIR) or state_dir() / "transit"),
        help=f"directory of the sealed keyring (default .cloudless/transit; ${ENV_DATA_DIR})",
    )
    parser.add_argument(
        "--seal-key-file",
        type=Path,
        default=env(ENV_SEAL_KEY_FILE),
        help="32-byte seal key (raw or base64); created 0600 if absent. Default: "
        f"DATA_DIR/{SEAL_KEY_FILE}; in production keep it elsewhere (${ENV_SEAL_KEY_FILE})",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=env(ENV_TOKEN_FILE),
        help=f"root token file, created 0600 if absent (default DATA_DIR/{TOKEN_FILE}); "
        f"${ENV_TOKEN} overrides it",
    )
    parser.add_argument(
        "--mount",
        default=env(ENV_MOUNT, DEFAULT_MOUNT),
        help=f"transit mount path under /v1/ (default {DEFAULT_MOUNT}; ${ENV_MOUNT})",
    )
    parser.add_argument("--tls-cert", type=Path, default=env(ENV_TLS_CERT), help="PEM certificate")
    parser.add_argument("--tls-key", type=Path, default=env(ENV_TLS_KEY), help="PEM private key")
    parser.add_argument(
        "--insecure-allow-plaintext",
        action="store_true",
        help="allow plain HTTP on a non-loopback address (only behind a TLS proxy/private link)",
    )
    parser.add_argument(
        "--rotate-check-interval",
        type=float,
        default=ROTATE_CHECK_SECONDS,
        help="seconds between auto_rotate_period checks (default 60)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cloudless-transit``; serves until SIGINT/SIGTERM."""
    from cloudless.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging()
    stop = threading.Event()
    try:
        host, port = parse_listen(args.listen)
        if (args.tls_cert is None) != (args.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        # Before touching any file: a refused start must leave no trace.
        tls = args.tls_cert is not None
        check_listen(host, tls=tls, allow_plaintext=args.insecure_allow_plaintext)
        context = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
        state = open_state(
            args.data_dir,
            seal_key_file=args.seal_key_file,
            token_file=args.token_file,
            token=os.environ.get(ENV_TOKEN) or None,
        )
        server = TransitServer(
            state.keyring,
            state.token,
            host=host,
            port=port,
            mount=args.mount,
            ssl_context=context,
            allow_plaintext=args.insecure_allow_plaintext,
            rotate_interval=args.rotate_check_interval,
        )
    except (CloudlessError, OSError) as err:
        print(f"cloudless-transit: {err}", file=sys.stderr)
        return 1
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    # Other local processes (the CLI, a dev-stack coordinator) find the server through this.
    address_file = Path(args.data_dir).absolute() / ADDRESS_FILE
    with contextlib.suppress(CloudlessError):
        write_public_file(address_file, f"{server.url}\n".encode())
    log.info(
        "transit.listening",
        url=server.url,
        mount=server.api.mount,
        keyring=str(state.paths["keyring"]),
        token_from=f"${ENV_TOKEN}" if state.token_source == "given" else state.token_source,
        hint=f"export VAULT_ADDR={server.url} VAULT_TOKEN="
        + (f"${ENV_TOKEN}" if state.token_source == "given" else f"$(cat {state.token_source})"),
    )
    stop.wait()
    log.info("transit.stopping")
    server.stop()
    with contextlib.suppress(OSError):
        if address_file.read_text().strip() == server.url:
            address_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
