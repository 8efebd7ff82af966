"""The Vault transit API's semantics, without HTTP: requests in, replies out.

:class:`TransitAPI` answers the subset of Vault's transit and sys paths that
``hvac.Client(...).secrets.transit`` uses, with Vault's envelope, status codes and error
messages, over the keyring of :mod:`transit.keyring`. :mod:`transit.server` serves it
over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import structlog

from cloudless import __version__
from cloudless.errors import ConfigError
from cloudless.http import (
    RequestRefused,
    SecretToken,
)
from transit.keyring import (
    DEFAULT_KEY_TYPE,
    Encrypted,
    KeyNotFoundError,
    Keyring,
    TransitError,
    check_key_name,
    check_key_type,
    parse_vault_duration,
)

log = structlog.get_logger("cloudless.transit")

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_MOUNT = "transit"

#: Methods the API knows (PUT is POST, as in Vault); any other is a 501.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "LIST", "PATCH", "OPTIONS"})
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
