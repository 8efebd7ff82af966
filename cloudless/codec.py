"""The payload codec: no workflow or activity value reaches Temporal in plaintext.

Envelope encryption: each process encrypts with its own 256-bit data key from transit
(``datakey/plaintext/cloudless-payloads``) and puts the *wrapped* key in every payload's
metadata, so any process with transit access can decrypt, and the plaintext key never
leaves memory. Design notes: ``docs/design/payload-codec.md``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import dataclasses
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

import hvac
import hvac.exceptions
import requests
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticPayloadConverter, pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    EncodingPayloadConverter,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
    WorkflowSerializationContext,
)
from temporalio.exceptions import ApplicationError

from cloudless.errors import CloudlessError, ConfigError
from cloudless.transit.client import TransitSettings, transit_mount, transit_settings

#: The transit key that wraps every payload data key.
PAYLOAD_KEY = "cloudless-payloads"
ENCODING = b"binary/encrypted"
META_ENCODING = "encoding"
META_KEY_ID = "encryption-key-id"
META_FORMAT = "encryption-format"
FORMAT_V1 = b"cloudless/aes256gcm/v1"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
#: What a refused payload decodes to: a marker only :class:`RejectingPayloadConverter`
#: reads (and refuses, naming the reason), so the message it carried is refused.
REJECTED_ENCODING = b"cloudless/rejected"
#: The error type a refused payload raises in a workflow (its run fails, its signal is
#: dropped, its update or query is refused).
REJECTED_ERROR_TYPE = "PayloadRejected"
#: Binds a ciphertext to its format and wrapped key: moving it under another key id fails.
_AAD_PREFIX = b"cloudless/payload/v1\x00"

DEFAULT_MAX_KEY_AGE = 3600.0  # seconds a data key encrypts before a fresh one is fetched
DEFAULT_MAX_KEY_USES = 1_000_000  # far below AES-GCM's 2**32 random-nonce bound
DEFAULT_CACHE_SIZE = 4096  # unwrapped keys kept for decoding (one per writing process/hour)

#: The codec endpoint's operator token, in the coordinator's state directory.
CODEC_TOKEN_FILE = "codec-token"

NO_TRANSIT_HINT = (
    f"payload is encrypted with transit key {PAYLOAD_KEY}; this process has no transit "
    "access: set VAULT_ADDR/VAULT_TOKEN (or --state-dir to the dev stack's state directory)"
)


#: The explicit, loudly named opt-out from payload encryption (tests that say so only).
ENV_INSECURE_PLAINTEXT = "CLOUDLESS_INSECURE_PLAINTEXT_PAYLOADS"
INSECURE_PLAINTEXT_FLAG = "--insecure-plaintext-payloads"


_log = structlog.get_logger("cloudless.codec")


class PayloadCodecError(CloudlessError):
    """A payload could not be encrypted or decrypted."""


class ForeignPayloadError(PayloadCodecError):
    """A payload this cluster's key did not seal: tampered, forged or from elsewhere.

    Unlike other codec errors it is final (retrying cannot help), so the codec refuses
    the payload instead of failing the task that carries it."""


@dataclass(frozen=True)
class DataKey:
    """A data key in both forms; only ``wrapped`` is ever written anywhere."""

    plaintext: bytes = field(repr=False)
    wrapped: str


class DataKeySource(Protocol):
    """Where data keys come from and how they are unwrapped (transit, or a test double)."""

    key_name: str

    async def new_key(self) -> DataKey: ...

    async def unwrap(self, wrapped: str) -> bytes: ...


class TransitDataKeySource:
    """Data keys from a transit server through hvac.

    hvac blocks, so calls run in a worker thread; one lock serializes them because a
    ``requests.Session`` is not meant to be shared between threads.
    """

    def __init__(
        self, client: hvac.Client, key_name: str = PAYLOAD_KEY, mount: str | None = None
    ) -> None:
        self.key_name = key_name
        self._client = client
        self._mount = mount or transit_mount()
        self._lock = threading.Lock()

    async def new_key(self) -> DataKey:
        return await asyncio.to_thread(self._new_key)

    async def unwrap(self, wrapped: str) -> bytes:
        return await asyncio.to_thread(self._unwrap, wrapped)

    def _new_key(self) -> DataKey:
        with self._lock, self._errors("get a data key from"):
            try:
                out = self._datakey()
            except hvac.exceptions.InvalidRequest as err:
                if "not found" not in str(err):
                    raise
                # First use against this transit: create the key (idempotent) and retry.
                self._client.secrets.transit.create_key(
                    self.key_name, key_type="aes256-gcm96", mount_point=self._mount
                )
                out = self._datakey()
        data = out["data"]
        return DataKey(_b64(data["plaintext"]), str(data["ciphertext"]))

    def _datakey(self) -> Any:
        return self._client.secrets.transit.generate_data_key(
            self.key_name, key_type="plaintext", bits=KEY_BYTES * 8, mount_point=self._mount
        )

    def _unwrap(self, wrapped: str) -> bytes:
        with self._lock, self._errors("unwrap a payload data key with"):
            try:
                out = self._client.secrets.transit.decrypt_data(
                    self.key_name, ciphertext=wrapped, mount_point=self._mount
                )
            except hvac.exceptions.InvalidRequest as err:
                # Transit answered and refused this ciphertext (400): not wrapped by this
                # cluster's key. Unreachable or forbidden transit is another error (retry).
                raise ForeignPayloadError(
                    f"its data key is not one transit key {self.key_name} wrapped "
                    f"({str(err).split(', on ')[0][:120]})"
                ) from err
        return _b64(out["data"]["plaintext"])

    def _errors(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return _transit_errors(f"cannot {doing} transit key {self.key_name} at {self._client.url}")


@contextlib.contextmanager
def _transit_errors(what: str) -> Iterator[None]:
    """Turn hvac/requests failures into one-line :class:`PayloadCodecError` s."""
    try:
        yield
    except ForeignPayloadError:
        raise
    except hvac.exceptions.VaultError as err:
        # hvac appends ", on <method> <url>"; the rest is Vault's message, never a secret.
        raise PayloadCodecError(f"{what}: {str(err).split(', on ')[0]}") from err
    except requests.RequestException as err:
        raise PayloadCodecError(f"{what}: {type(err).__name__}") from err


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError) as err:
        raise PayloadCodecError("transit returned a malformed key") from err


@dataclass
class _EncodingKey:
    wrapped: str
    aead: AESGCM
    born: float
    uses: int = 0


@dataclass
class _Keys:
    """A codec's keys, shared by the per-context copies the SDK makes of it."""

    encoding: _EncodingKey | None = None
    cache: OrderedDict[str, AESGCM] = field(default_factory=OrderedDict)
    rotate_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    unwrap_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class TransitPayloadCodec(PayloadCodec, WithSerializationContext):
    """AES-256-GCM over each serialized payload, keyed by envelope data keys.

    Encoding reuses one data key until it is ``max_key_age`` seconds old or has sealed
    ``max_key_uses`` payloads, so transit is called about once an hour, not per payload.
    Decoding caches unwrapped keys (LRU) by their wrapped form.

    Decoding fails closed: a payload this cluster's key did not seal (plaintext, forged,
    tampered, or under another transit's key) is *refused*, logged as
    ``payload.rejected``, and replaced by a marker that :class:`RejectingPayloadConverter`
    turns into a non-retryable ``PayloadRejected`` error: a workflow started with it
    fails, a signal carrying it is dropped, an update or query is refused, and nothing a
    client without transit access sends is ever acted on (:meth:`for_display` is the
    view that shows history instead). Transit being unreachable is not a refusal: that
    raises, and the task is retried.
    """

    def __init__(
        self,
        source: DataKeySource,
        *,
        max_key_age: float = DEFAULT_MAX_KEY_AGE,
        max_key_uses: int = DEFAULT_MAX_KEY_USES,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_key_uses < 1 or cache_size < 1 or max_key_age <= 0:
            raise ValueError("max_key_uses, cache_size and max_key_age must be positive")
        self.source = source
        self.max_key_age = max_key_age
        self.max_key_uses = max_key_uses
        self.cache_size = cache_size
        self._display = False
        self._clock = clock
        self._keys = _Keys()
        self._context: SerializationContext | None = None

    @property
    def key_name(self) -> str:
        return self.source.key_name

    def for_display(self) -> Self:
        """A view (same keys) for showing history, never for feeding a workflow: the UI's
        codec endpoint. Plaintext passes as it is (the UI shows what history holds), and
        a payload this cluster's key did not seal raises (the endpoint answers 422)."""
        view = copy.copy(self)
        view._display = True
        return view

    def with_context(self, context: SerializationContext) -> Self:
        """A view of this codec that names ``context``'s workflow when it refuses."""
        view = copy.copy(self)  # shares _keys: one data key and one cache for all views
        view._context = context
        return view

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for payload in payloads:
            key = self._usable_key() or await self._rotate()
            key.uses += 1
            out.append(_seal(key.aead, key.wrapped, payload))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for payload in payloads:
            if payload.metadata.get(META_ENCODING) != ENCODING:
                out.append(payload if self._display else self._refuse(payload, None))
                continue
            try:
                wrapped, nonce_and_ct = _envelope(payload)
                aead = await self._aead_for(wrapped)
                out.append(_open(aead, wrapped, nonce_and_ct))
            except ForeignPayloadError as err:
                if self._display:
                    raise
                out.append(self._refuse(payload, err))
        return out

    def _refuse(self, payload: Payload, err: ForeignPayloadError | None) -> Payload:
        """The marker that stands for ``payload``, refused (and the audit line)."""
        reason = (
            str(err)
            if err is not None
            else "it is not encrypted (only clients with transit access may send to "
            "Cloudless workflows)"
        )
        context = self._context
        _log.warning(
            "payload.rejected",
            reason=reason,
            encoding=payload.metadata.get(META_ENCODING, b"").decode("utf-8", "replace")[:64],
            workflow_id=getattr(context, "workflow_id", None),
            activity_type=getattr(context, "activity_type", None),
            for_workflow=isinstance(context, WorkflowSerializationContext),
        )
        return Payload(metadata={META_ENCODING: REJECTED_ENCODING}, data=reason.encode()[:512])

    def _usable_key(self) -> _EncodingKey | None:
        key = self._keys.encoding
        if key is None or key.uses >= self.max_key_uses:
            return None
        if self._clock() - key.born >= self.max_key_age:
            return None
        return key

    async def _rotate(self) -> _EncodingKey:
        """Fetch a fresh data key; concurrent encoders share one transit call."""
        async with self._keys.rotate_lock:
            current = self._usable_key()
            if current is not None:
                return current
            fresh = await self.source.new_key()
            aead = _aead(fresh.plaintext)
            self._remember(fresh.wrapped, aead)  # our own payloads decode without transit
            self._keys.encoding = _EncodingKey(fresh.wrapped, aead, self._clock())
            return self._keys.encoding

    async def _aead_for(self, wrapped: str) -> AESGCM:
        cache = self._keys.cache
        cached = cache.get(wrapped)
        if cached is not None:
            cache.move_to_end(wrapped)
            return cached
        async with self._keys.unwrap_lock:  # a replay burst unwraps each key once
            cached = cache.get(wrapped)
            if cached is not None:
                return cached
            plaintext = await self.source.unwrap(wrapped)
            try:
                aead = _aead(plaintext)
            except PayloadCodecError as err:
                raise ForeignPayloadError(str(err)) from err
            self._remember(wrapped, aead)
            return aead

    def _remember(self, wrapped: str, aead: AESGCM) -> None:
        cache = self._keys.cache
        cache[wrapped] = aead
        cache.move_to_end(wrapped)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)


class RejectingPayloadConverter(EncodingPayloadConverter):
    """Reads the codec's refusal marker as a non-retryable ``PayloadRejected`` error.

    Raised while a workflow converts its input, a signal, an update or a query, it fails
    a run started with a refused input, drops the signal, refuses the update or query;
    never a workflow task that would be retried forever."""

    @property
    def encoding(self) -> str:
        return REJECTED_ENCODING.decode()

    def to_payload(self, value: Any) -> Payload | None:
        return None  # never encodes: only the codec makes the marker

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        reason = payload.data.decode("utf-8", "replace")
        raise ApplicationError(
            f"payload refused: {reason}", type=REJECTED_ERROR_TYPE, non_retryable=True
        )


class CloudlessPayloadConverter(PydanticPayloadConverter):
    """The pydantic payload converter that also reads refused payloads (as errors)."""

    def __init__(self) -> None:
        super().__init__()
        self._set_converters(*self.converters.values(), RejectingPayloadConverter())


class NoTransitCodec(PayloadCodec):
    """For processes without transit: plaintext out, and a clear error (instead of
    "unknown encoding") when an encrypted payload comes in."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if any(p.metadata.get(META_ENCODING) == ENCODING for p in payloads):
            raise PayloadCodecError(NO_TRANSIT_HINT)
        return list(payloads)

    @classmethod
    def data_converter(cls) -> DataConverter:
        """The plain pydantic converter (failures unchanged) that recognizes encryption."""
        return dataclasses.replace(pydantic_data_converter, payload_codec=cls())


def _aead(key: bytes) -> AESGCM:
    if len(key) != KEY_BYTES:
        raise PayloadCodecError(f"data key has {len(key)} bytes, expected {KEY_BYTES}")
    return AESGCM(key)


def _aad(wrapped: str) -> bytes:
    return _AAD_PREFIX + wrapped.encode()


def _seal(aead: AESGCM, wrapped: str, payload: Payload) -> Payload:
    nonce = os.urandom(NONCE_BYTES)
    sealed = aead.encrypt(nonce, payload.SerializeToString(deterministic=True), _aad(wrapped))
    return Payload(
        metadata={META_ENCODING: ENCODING, META_KEY_ID: wrapped.encode(), META_FORMAT: FORMAT_V1},
        data=nonce + sealed,
    )


def _envelope(payload: Payload) -> tuple[str, bytes]:
    """The wrapped key and ``nonce ‖ ciphertext`` of an encrypted payload, checked."""
    fmt = payload.metadata.get(META_FORMAT)
    if fmt != FORMAT_V1:
        raise ForeignPayloadError(
            f"encrypted payload has format {fmt!r}; this version reads {FORMAT_V1.decode()}"
        )
    try:
        wrapped = payload.metadata[META_KEY_ID].decode("ascii")
    except (KeyError, UnicodeDecodeError) as err:
        raise ForeignPayloadError("encrypted payload has no usable encryption-key-id") from err
    if len(payload.data) < NONCE_BYTES + TAG_BYTES:
        raise ForeignPayloadError("encrypted payload is truncated")
    return wrapped, payload.data


def _open(aead: AESGCM, wrapped: str, data: bytes) -> Payload:
    try:
        inner = aead.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], _aad(wrapped))
    except InvalidTag as err:
        raise ForeignPayloadError(
            "encrypted payload failed authentication: it was modified, or its "
            "encryption-key-id does not match the key it was sealed with"
        ) from err
    payload = Payload()
    try:
        payload.ParseFromString(inner)
    except DecodeError as err:
        raise ForeignPayloadError("decrypted payload is not a Temporal payload") from err
    return payload


def data_converter(codec: PayloadCodec | None) -> DataConverter:
    """The pydantic data converter with ``codec``; failure messages and stack traces go
    into (encrypted) payloads too, or they would reach history in plaintext."""
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_converter_class=CloudlessPayloadConverter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def transit_codec(state_dir: Path | None = None, **options: Any) -> TransitPayloadCodec | None:
    """A codec for this process when transit is configured (see
    :func:`cloudless.transit.client.transit_settings`), else None."""
    return codec_for(transit_settings(state_dir), **options)


def codec_for(settings: TransitSettings | None, **options: Any) -> TransitPayloadCodec | None:
    """A codec over the transit ``settings`` describe; None without settings."""
    if settings is None:
        return None
    return TransitPayloadCodec(TransitDataKeySource(settings.client()), **options)


def insecure_plaintext_requested() -> bool:
    """Whether ``CLOUDLESS_INSECURE_PLAINTEXT_PAYLOADS`` asks for the opt-out (1/true/yes)."""
    return os.environ.get(ENV_INSECURE_PLAINTEXT, "").strip().lower() in ("1", "true", "yes")


def missing_codec_error(who: str) -> ConfigError:
    """Why ``who`` refuses to talk to Temporal without a codec, and the ways out."""
    return ConfigError(
        f"{who} refuses to run without the payload codec: no transit is configured, so "
        "workflow inputs, results and failure messages would reach Temporal in plaintext. "
        "Set VAULT_ADDR and VAULT_TOKEN (Vault, OpenBao or cloudless-transit), or run "
        "cloudless-transit under the state directory (--state-dir, so that "
        "<state-dir>/transit/root-token and address exist; `cloudlessctl dev up` does this). "
        f"Only for throwaway test clusters: {INSECURE_PLAINTEXT_FLAG} "
        f"({ENV_INSECURE_PLAINTEXT}=1)"
    )


def require_codec(
    codec: PayloadCodec | None, *, who: str, insecure_plaintext: bool = False
) -> PayloadCodec | None:
    """Fail closed: ``codec``, or None only when the caller explicitly opted out.

    Security is not optional: a process that silently wrote plaintext because transit was
    not configured would put every manifest and secret's metadata into Temporal's
    database, backups and UI. The opt-out exists for tests that run without transit and
    say so; it is logged loudly by the caller.
    """
    if codec is not None:
        return codec
    if insecure_plaintext:
        return None
    raise missing_codec_error(who)
