"""The transit keyring: named, versioned encryption keys, their crypto, and the sealed file.

This module knows nothing about HTTP. It is the model behind ``cloudless-transit`` and
follows the behaviour of Vault's transit engine closely (version numbering, the
``vault:vN:`` ciphertext format, the min-version rules and their error messages), because
every caller talks to it through ``hvac`` and must work unchanged against real Vault or
OpenBao. Where this engine supports less than Vault, it says so in the error instead of
silently doing something different.

Persistence: the whole keyring is one file, sealed with AES-256-GCM under a 32-byte seal
key kept in a separate file. Every mutation rewrites the file atomically (temporary file in
the same directory, fsync, rename, fsync of the directory) with mode 0600, and a mutation is
published only after its write succeeded, so the served state never runs ahead of disk.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from cloudless.durations import DurationError, parse_seconds
from cloudless.errors import CloudlessError, PKIError
from cloudless.pki import read_private_file, write_private_file

log = structlog.get_logger("cloudless.transit")

#: The one time source; injectable so tests can move time forward (auto-rotation).
Clock = Callable[[], float]

NONCE_BYTES = 12  # 96-bit nonces, as in Vault's "-gcm96" key types
TAG_BYTES = 16
CIPHERTEXT_PREFIX = "vault:"

#: Vault refuses shorter automatic rotation periods; so does this engine, so that a
#: configuration that works here also works against real Vault.
MIN_AUTO_ROTATE_SECONDS = 3600

DATA_KEY_BITS = (128, 256, 512)

# ``\w`` plus ``-``, ``.`` and ``@`` inside, like Vault's key-name pattern; ASCII only.
_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.@-]*[A-Za-z0-9_])?$")
MAX_NAME_LENGTH = 256
_VERSION = re.compile(r"^v([0-9]{1,9})$")


class _AEAD(Protocol):
    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...


class KeyType(NamedTuple):
    """A supported key type: its key size and the AEAD that uses it."""

    size: int
    aead: Callable[[bytes], _AEAD]


KEY_TYPES: dict[str, KeyType] = {
    "aes256-gcm96": KeyType(32, AESGCM),
    "aes128-gcm96": KeyType(16, AESGCM),
    "chacha20-poly1305": KeyType(32, ChaCha20Poly1305),
}
DEFAULT_KEY_TYPE = "aes256-gcm96"

#: Types Vault knows but this engine does not implement: named as such in the error, so a
#: caller can tell "typo" from "use real Vault for this".
VAULT_ONLY_KEY_TYPES = frozenset(
    {
        "ed25519",
        "ecdsa-p256",
        "ecdsa-p384",
        "ecdsa-p521",
        "rsa-2048",
        "rsa-3072",
        "rsa-4096",
        "hmac",
        "managed_key",
        "aes128-cmac",
        "aes256-cmac",
    }
)


class TransitError(CloudlessError):
    """The request cannot be served as asked (bad input, policy); the caller can fix it.

    The HTTP layer answers these with 400 and ``str(error)``, like Vault's user errors.
    """


class KeyNotFoundError(TransitError):
    """The named key does not exist (Vault: ``encryption key not found``)."""

    def __init__(self, name: str) -> None:
        super().__init__("encryption key not found")
        self.name = name


class SealError(CloudlessError):
    """The keyring file or seal key cannot be used; the server must not start."""


# --------------------------------------------------------------------------- inputs


def check_key_name(name: str) -> str:
    """Validate a key name the way Vault's path pattern would, but with a readable error."""
    if len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
        raise TransitError(
            f"invalid key name {name!r}: use letters, digits and _ (also - . @ inside), "
            f"at most {MAX_NAME_LENGTH} characters"
        )
    return name


def parse_vault_duration(value: object, field_name: str = "auto_rotate_period") -> int:
    """Whole seconds from a Vault duration: ``3600``, ``"3600"``, ``"720h"`` or ``"1h30m"``.

    Vault accepts Go duration strings (plus ``d`` for days) and bare seconds; both forms
    must work here so that configuration is portable between the two servers. The grammar
    is :mod:`cloudless.durations`'; this adds Vault's field-naming errors and its rounding
    (down, to whole seconds).
    """
    expected = TransitError(f'invalid value for field "{field_name}": expected a duration')
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise expected
    try:
        seconds = parse_seconds(value)
    except DurationError:
        if not isinstance(value, str):
            raise expected from None
        raise TransitError(
            f'invalid value for field "{field_name}": {value!r} is not a duration; '
            'use seconds or a form like "720h", "1h30m" or "30d"'
        ) from None
    return math.floor(seconds)


def check_auto_rotate_period(seconds: int) -> int:
    if seconds < 0:
        raise TransitError("auto rotate period cannot be negative")
    if 0 < seconds < MIN_AUTO_ROTATE_SECONDS:
        raise TransitError("auto rotate period must be 0 to disable or at least an hour")
    return seconds


def check_key_type(key_type: str) -> str:
    if key_type in KEY_TYPES:
        return key_type
    if key_type in VAULT_ONLY_KEY_TYPES:
        raise TransitError(
            f"key type {key_type} is not supported by cloudless-transit "
            f"(supported: {', '.join(sorted(KEY_TYPES))}); use Vault or OpenBao for it"
        )
    raise TransitError(f"unknown key type {key_type}")


def parse_ciphertext(value: str) -> tuple[int, bytes]:
    """Split ``vault:vN:base64`` into the version and the raw ``nonce || ct || tag``."""
    if not value.startswith(CIPHERTEXT_PREFIX):
        raise TransitError("invalid ciphertext: no prefix")
    version_text, sep, encoded = value[len(CIPHERTEXT_PREFIX) :].partition(":")
    if not sep:
        raise TransitError("invalid ciphertext: wrong number of fields")
    match = _VERSION.match(version_text)
    if not match:
        raise TransitError("invalid ciphertext: version number could not be decoded")
    # Vault reads v0 (pre-0.3 ciphertexts) as version 1; do the same.
    version = max(1, int(match.group(1)))
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise TransitError("invalid ciphertext: could not decode base64") from None
    return version, raw


# --------------------------------------------------------------------------- keys


@dataclass
class KeyVersion:
    """One version of a named key: random key material and when it was made."""

    material: bytes = field(repr=False)
    created: float
    _cipher: _AEAD | None = field(default=None, repr=False, compare=False)

    def cipher(self, key_type: str) -> _AEAD:
        # Built once per version: constructing the AEAD object is a noticeable share of a
        # small encrypt otherwise.
        if self._cipher is None:
            self._cipher = KEY_TYPES[key_type].aead(self.material)
        return self._cipher


class Encrypted(NamedTuple):
    ciphertext: str
    key_version: int


class DataKey(NamedTuple):
    plaintext: bytes
    ciphertext: str
    key_version: int


@dataclass
class TransitKey:
    """A named key: its versions and the policy knobs Vault exposes on ``keys/:name/config``."""

    name: str
    type: str
    versions: dict[int, KeyVersion]
    latest_version: int
    min_decryption_version: int = 1
    min_encryption_version: int = 0
    min_available_version: int = 0
    deletion_allowed: bool = False
    auto_rotate_period: int = 0

    @classmethod
    def new(cls, name: str, key_type: str, now: float, auto_rotate_period: int = 0) -> TransitKey:
        material = secrets.token_bytes(KEY_TYPES[key_type].size)
        return cls(
            name=name,
            type=key_type,
            versions={1: KeyVersion(material, now)},
            latest_version=1,
            auto_rotate_period=auto_rotate_period,
        )

    def copy(self) -> TransitKey:
        clone = TransitKey(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        clone.versions = dict(self.versions)  # versions themselves are never mutated
        return clone

    def info(self) -> dict[str, Any]:
        """The body of Vault's read-key response for a symmetric key."""
        return {
            "name": self.name,
            "type": self.type,
            "keys": {str(v): int(k.created) for v, k in sorted(self.versions.items())},
            "latest_version": self.latest_version,
            "min_available_version": self.min_available_version,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "deletion_allowed": self.deletion_allowed,
            "auto_rotate_period": self.auto_rotate_period,
            "derived": False,
            "exportable": False,
            "allow_plaintext_backup": False,
            "imported_key": False,
            "supports_encryption": True,
            "supports_decryption": True,
            "supports_derivation": False,  # key derivation is not implemented here
            "supports_signing": False,
        }

    def rotate(self, now: float) -> int:
        self.latest_version += 1
        material = secrets.token_bytes(KEY_TYPES[self.type].size)
        self.versions[self.latest_version] = KeyVersion(material, now)
        return self.latest_version

    def _encryption_version(self, requested: int | None) -> int:
        if not requested:  # None or 0: the latest version, as in Vault
            return self.latest_version
        if requested < 0:
            raise TransitError("key_version cannot be negative")
        if requested > self.latest_version:
            raise TransitError(
                "requested version for encryption is higher than the latest key version"
            )
        if self.min_encryption_version and requested < self.min_encryption_version:
            raise TransitError(
                "requested version for encryption is less than the minimum encryption key version"
            )
        if requested < self.min_decryption_version or requested not in self.versions:
            # Vault would encrypt here and produce a ciphertext nobody may decrypt; refuse.
            raise TransitError(
                "requested version for encryption is less than the minimum decryption key version"
            )
        return requested

    def encrypt(
        self, plaintext: bytes, associated_data: bytes = b"", key_version: int | None = None
    ) -> Encrypted:
        version = self._encryption_version(key_version)
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = (
            self.versions[version]
            .cipher(self.type)
            .encrypt(nonce, plaintext, associated_data or None)
        )
        encoded = base64.b64encode(nonce + sealed).decode()
        return Encrypted(f"{CIPHERTEXT_PREFIX}v{version}:{encoded}", version)

    def decrypt(self, ciphertext: str, associated_data: bytes = b"") -> tuple[bytes, int]:
        version, raw = parse_ciphertext(ciphertext)
        if version > self.latest_version:
            raise TransitError("invalid ciphertext: version is too new")
        if self.min_decryption_version > 0 and version < self.min_decryption_version:
            raise TransitError("ciphertext or signature version is disallowed by policy (too old)")
        key = self.versions.get(version)
        if key is None:
            raise TransitError("invalid key version")  # trimmed
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise TransitError("invalid ciphertext length")
        try:
            plaintext = key.cipher(self.type).decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], associated_data or None
            )
        except InvalidTag:
            raise TransitError("cipher: message authentication failed") from None
        return plaintext, version

    # -- persistence

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "latest_version": self.latest_version,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "min_available_version": self.min_available_version,
            "deletion_allowed": self.deletion_allowed,
            "auto_rotate_period": self.auto_rotate_period,
            "versions": {
                str(v): {"key": base64.b64encode(k.material).decode(), "created": k.created}
                for v, k in self.versions.items()
            },
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> TransitKey:
        key_type = str(data["type"])
        if key_type not in KEY_TYPES:
            raise ValueError(f"key {name!r} has unknown type {key_type!r}")
        versions = {
            int(v): KeyVersion(base64.b64decode(k["key"], validate=True), float(k["created"]))
            for v, k in data["versions"].items()
        }
        for version, key in versions.items():
            if len(key.material) != KEY_TYPES[key_type].size:
                raise ValueError(f"key {name!r} version {version} has the wrong length")
        return cls(
            name=name,
            type=key_type,
            versions=versions,
            latest_version=int(data["latest_version"]),
            min_decryption_version=int(data["min_decryption_version"]),
            min_encryption_version=int(data["min_encryption_version"]),
            min_available_version=int(data["min_available_version"]),
            deletion_allowed=bool(data["deletion_allowed"]),
            auto_rotate_period=int(data["auto_rotate_period"]),
        )


# --------------------------------------------------------------------------- sealing

SEAL_MAGIC = b"CLTK"
SEAL_FORMAT = 1
SEAL_KEY_BYTES = 32
_KEY_ID_BYTES = 8
_HEADER_BYTES = len(SEAL_MAGIC) + 1 + _KEY_ID_BYTES


def seal_key_id(seal_key: bytes) -> bytes:
    """A short, non-secret fingerprint of the seal key, stored in the file header.

    It lets startup say "this file was sealed with a different seal key" instead of the
    vaguer "wrong key or corrupt"; an HMAC of a constant reveals nothing about the key.
    """
    return hmac.new(seal_key, b"cloudless-transit seal key id v1", hashlib.sha256).digest()[
        :_KEY_ID_BYTES
    ]


def seal(payload: bytes, seal_key: bytes) -> bytes:
    """``magic || format || key id || nonce || AES-256-GCM(payload)``; the header is the AAD."""
    header = SEAL_MAGIC + bytes([SEAL_FORMAT]) + seal_key_id(seal_key)
    nonce = secrets.token_bytes(NONCE_BYTES)
    return header + nonce + AESGCM(seal_key).encrypt(nonce, payload, header)


def unseal(blob: bytes, seal_key: bytes, where: str = "keyring file") -> bytes:
    if len(blob) < _HEADER_BYTES + NONCE_BYTES + TAG_BYTES or not blob.startswith(SEAL_MAGIC):
        raise SealError(
            f"{where} is not a cloudless-transit keyring (bad header); refusing to start"
        )
    header, rest = blob[:_HEADER_BYTES], blob[_HEADER_BYTES:]
    if header[len(SEAL_MAGIC)] != SEAL_FORMAT:
        raise SealError(
            f"{where} has keyring format {header[len(SEAL_MAGIC)]}, this build reads "
            f"format {SEAL_FORMAT}; refusing to start"
        )
    stored_id = header[len(SEAL_MAGIC) + 1 :]
    if not hmac.compare_digest(stored_id, seal_key_id(seal_key)):
        raise SealError(
            f"{where} was sealed with a different seal key (file key id {stored_id.hex()}, "
            f"given key id {seal_key_id(seal_key).hex()}); point --seal-key-file at the key "
            "it was sealed with. Refusing to start; the file was not modified"
        )
    try:
        return AESGCM(seal_key).decrypt(rest[:NONCE_BYTES], rest[NONCE_BYTES:], header)
    except InvalidTag:
        raise SealError(
            f"{where} is corrupt or was tampered with (authentication failed); restore it "
            "from a backup. Refusing to start; the file was not modified"
        ) from None


def load_or_create_seal_key(path: Path, *, create: bool = True) -> bytes:
    """Read the 32-byte seal key (raw, or base64 text); create it 0600 if absent and allowed.

    A generated key is written as base64 text so it can be pasted into a secret store.
    """
    path = Path(path)
    if not path.exists():
        if not create:
            raise SealError(f"seal key file {path} does not exist")
        key = secrets.token_bytes(SEAL_KEY_BYTES)
        try:
            write_private_file(path, base64.b64encode(key) + b"\n", overwrite=False)
        except FileExistsError:
            return load_or_create_seal_key(path, create=False)  # lost a race; use theirs
        except PKIError as err:
            raise SealError(str(err)) from err
        log.warning(
            "transit.seal_key_created",
            path=str(path),
            hint="keep the seal key away from the keyring in production (another disk, a "
            "secret store, a tmpfs filled at boot): whoever has both has every key",
        )
        return key
    try:
        data = read_private_file(path)
    except PKIError as err:
        raise SealError(f"cannot use seal key file: {err}") from err
    if len(data) == SEAL_KEY_BYTES:
        return data
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != SEAL_KEY_BYTES:
        raise SealError(
            f"seal key file {path} must hold exactly {SEAL_KEY_BYTES} bytes, raw or base64"
        )
    return key


class SealedFile:
    """The keyring's one file on disk, sealed under the seal key."""

    def __init__(self, path: Path, seal_key: bytes) -> None:
        if len(seal_key) != SEAL_KEY_BYTES:
            raise SealError(f"the seal key must be {SEAL_KEY_BYTES} bytes")
        self.path = Path(path)
        self._seal_key = seal_key

    def __repr__(self) -> str:
        return f"SealedFile({str(self.path)!r})"

    def load(self) -> dict[str, Any] | None:
        """The stored state, or ``None`` if there is no file yet; never modifies the file."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise SealError(f"cannot read keyring file {self.path}: {err.strerror}") from err
        payload = unseal(blob, self._seal_key, where=f"keyring file {self.path}")
        try:
            state = json.loads(payload)
            if not isinstance(state, dict) or state.get("format") != 1:
                raise ValueError("unexpected layout")
        except ValueError as err:
            raise SealError(f"keyring file {self.path} decrypted but is not valid: {err}") from err
        return state

    def save(self, state: dict[str, Any]) -> None:
        payload = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
        write_private_file(self.path, seal(payload, self._seal_key))


# --------------------------------------------------------------------------- keyring


class Keyring:
    """Thread-safe set of named keys; every mutation is persisted before it is visible.

    Only writers take the lock (see :meth:`_mutation`); reads and crypto never do, so they
    neither queue behind each other nor wait for a writer's disk write (an fsync'd file
    write, about 10 ms). The transit server relies on that: it runs writes in a worker
    thread and crypto on its event loop.
    """

    def __init__(self, store: SealedFile | None = None, *, clock: Clock = time.time) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.RLock()
        self._keys: dict[str, TransitKey] = {}

    @classmethod
    def open(cls, path: Path, seal_key: bytes, *, clock: Clock = time.time) -> Keyring:
        """Load the sealed keyring at ``path``, or create an empty one there.

        An unreadable, corrupt or foreign file raises :class:`SealError` and is left as is:
        overwriting it would destroy every key it holds.
        """
        store = SealedFile(path, seal_key)
        ring = cls(store, clock=clock)
        state = store.load()
        if state is None:
            try:
                store.save(ring._state(ring._keys))  # sealing an empty ring pins the seal key
            except PKIError as err:
                raise SealError(str(err)) from err
            log.info("transit.keyring_created", path=str(path))
            return ring
        try:
            ring._keys = {
                name: TransitKey.from_json(name, data) for name, data in state["keys"].items()
            }
        except (KeyError, TypeError, ValueError, binascii.Error) as err:
            raise SealError(f"keyring file {path} decrypted but is not valid: {err}") from err
        log.info("transit.keyring_loaded", path=str(path), keys=len(ring._keys))
        return ring

    def now(self) -> float:
        return self._clock()

    @staticmethod
    def _state(keys: dict[str, TransitKey]) -> dict[str, Any]:
        return {"format": 1, "keys": {n: k.to_json() for n, k in keys.items()}}

    @contextlib.contextmanager
    def _mutation(self) -> Iterator[dict[str, TransitKey]]:
        """Change a draft (copies of the keys), persist it, and only then publish it.

        Writers are serialized by the lock and hold it through the save. Readers never take
        it: they read ``self._keys``, a dict that is never modified once published and is
        replaced by one reference assignment. So a reader never waits for a disk write,
        never sees a half-applied change and never uses a key version that is not on disk
        yet; a refused or unsaved change leaves the published keys exactly as they were.
        """
        with self._lock:
            draft = {n: k.copy() for n, k in self._keys.items()}
            yield draft
            if self._store is not None:
                self._store.save(self._state(draft))
            self._keys = draft

    def _get(self, name: str, keys: dict[str, TransitKey] | None = None) -> TransitKey:
        key = (self._keys if keys is None else keys).get(name)
        if key is None:
            raise KeyNotFoundError(name)
        return key

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    # -- key management

    def create_key(
        self, name: str, key_type: str = DEFAULT_KEY_TYPE, auto_rotate_period: int = 0
    ) -> tuple[dict[str, Any], bool]:
        """Create ``name``; returns its info and whether it was new (Vault: an existing key
        is left untouched, with a warning)."""
        check_key_name(name)
        check_key_type(key_type)
        check_auto_rotate_period(auto_rotate_period)
        with self._lock:
            existing = self._keys.get(name)
            if existing is not None:
                return existing.info(), False
            with self._mutation() as keys:
                key = keys[name] = TransitKey.new(name, key_type, self.now(), auto_rotate_period)
            log.info("transit.key_created", key=name, type=key_type)
            return key.info(), True

    def read_key(self, name: str) -> dict[str, Any]:
        return self._get(name).info()

    def list_keys(self) -> list[str]:
        return sorted(self._keys)

    def delete_key(self, name: str) -> None:
        with self._mutation() as keys:
            key = keys.get(name)
            if key is None:
                raise TransitError(f"error deleting key {name}: could not delete key; not found")
            if not key.deletion_allowed:
                raise TransitError(
                    f"error deleting key {name}: deletion is not allowed for this key; set "
                    "deletion_allowed with keys/:name/config first"
                )
            del keys[name]
        log.info("transit.key_deleted", key=name)

    def rotate_key(self, name: str) -> dict[str, Any]:
        with self._mutation() as keys:
            key = self._get(name, keys)
            version = key.rotate(self.now())
        log.info("transit.key_rotated", key=name, version=version, reason="request")
        return key.info()

    def configure_key(
        self,
        name: str,
        *,
        min_decryption_version: int | None = None,
        min_encryption_version: int | None = None,
        deletion_allowed: bool | None = None,
        auto_rotate_period: int | None = None,
    ) -> tuple[dict[str, Any], list[str]]:
        """Vault's ``keys/:name/config``: returns the new info and any warnings."""
        warnings: list[str] = []
        with self._mutation() as keys:
            key = self._get(name, keys)
            if min_decryption_version is not None:
                if min_decryption_version < 0:
                    raise TransitError("min decryption version cannot be negative")
                if min_decryption_version == 0:
                    min_decryption_version = 1
                    warnings.append(
                        "since Vault 0.3, transit key numbering starts at 1; forcing minimum to 1"
                    )
                if min_decryption_version > key.latest_version:
                    raise TransitError(
                        f"cannot set min decryption version of {min_decryption_version}, "
                        f"latest key version is {key.latest_version}"
                    )
                if min_decryption_version < key.min_available_version:
                    raise TransitError(
                        f"cannot set min decryption version of {min_decryption_version}, "
                        f"versions below {key.min_available_version} were trimmed"
                    )
                key.min_decryption_version = min_decryption_version
            if min_encryption_version is not None:
                if min_encryption_version < 0:
                    raise TransitError("min encryption version cannot be negative")
                if min_encryption_version > key.latest_version:
                    raise TransitError(
                        f"cannot set min encryption version of {min_encryption_version}, "
                        f"latest key version is {key.latest_version}"
                    )
                key.min_encryption_version = min_encryption_version
            if 0 < key.min_encryption_version < key.min_decryption_version:
                raise TransitError(
                    "min encryption version should not be less than min decryption version"
                )
            if deletion_allowed is not None:
                key.deletion_allowed = deletion_allowed
            if auto_rotate_period is not None:
                key.auto_rotate_period = check_auto_rotate_period(auto_rotate_period)
        return key.info(), warnings

    def trim_key(self, name: str, min_available_version: int) -> dict[str, Any]:
        """Delete versions below ``min_available_version``, for good (Vault's ``trim``)."""
        with self._mutation() as keys:
            key = self._get(name, keys)
            if min_available_version <= 0:
                raise TransitError("minimum available version should be positive")
            if min_available_version < key.min_available_version:
                raise TransitError("minimum available version cannot be decremented")
            if key.min_encryption_version == 0:
                raise TransitError(
                    "minimum available version cannot be set when minimum encryption version "
                    "is not set"
                )
            if min_available_version > key.min_encryption_version:
                raise TransitError(
                    "minimum available version cannot be greater than minimum encryption version"
                )
            if min_available_version > key.min_decryption_version:
                raise TransitError(
                    "minimum available version cannot be greater than minimum decryption version"
                )
            key.versions = {v: k for v, k in key.versions.items() if v >= min_available_version}
            key.min_available_version = min_available_version
        log.info("transit.key_trimmed", key=name, min_available_version=min_available_version)
        return key.info()

    def rotate_due(self) -> list[tuple[str, int]]:
        """Rotate every key whose latest version is older than its ``auto_rotate_period``."""
        rotated: list[tuple[str, int]] = []
        with self._lock:
            now = self.now()
            due = [
                k.name
                for k in self._keys.values()
                if k.auto_rotate_period > 0
                and now - k.versions[k.latest_version].created >= k.auto_rotate_period
            ]
            if not due:
                return rotated
            with self._mutation() as keys:
                for name in due:
                    rotated.append((name, keys[name].rotate(now)))
        for name, version in rotated:
            log.info("transit.key_rotated", key=name, version=version, reason="auto_rotate_period")
        return rotated

    # -- crypto

    def _for_encryption(self, name: str, upsert_type: str | None) -> TransitKey:
        key = self._keys.get(name)
        if key is not None:
            return key
        if upsert_type is None:
            raise KeyNotFoundError(name)
        self.create_key(name, upsert_type)
        return self._get(name)

    def encrypt(
        self,
        name: str,
        plaintext: bytes,
        *,
        associated_data: bytes = b"",
        key_version: int | None = None,
        upsert_type: str | None = DEFAULT_KEY_TYPE,
    ) -> Encrypted:
        """Encrypt with the latest (or given) version; creates the key if missing, as Vault
        does for callers allowed to create (pass ``upsert_type=None`` to forbid that)."""
        key = self._for_encryption(name, upsert_type)
        return key.encrypt(plaintext, associated_data, key_version)

    def decrypt(self, name: str, ciphertext: str, *, associated_data: bytes = b"") -> bytes:
        return self._get(name).decrypt(ciphertext, associated_data)[0]

    def rewrap(
        self,
        name: str,
        ciphertext: str,
        *,
        associated_data: bytes = b"",
        key_version: int | None = None,
    ) -> Encrypted:
        """Decrypt and re-encrypt under the latest (or given) version; the plaintext never
        leaves this call."""
        key = self._get(name)
        plaintext, _ = key.decrypt(ciphertext, associated_data)
        return key.encrypt(plaintext, associated_data, key_version)

    def generate_data_key(self, name: str, bits: int = 256) -> DataKey:
        """A fresh random key, and the same key encrypted under ``name`` (envelope encryption)."""
        if bits not in DATA_KEY_BITS:
            raise TransitError("invalid bits; must be 128, 256, or 512")
        key = self._get(name)
        plaintext = secrets.token_bytes(bits // 8)
        encrypted = key.encrypt(plaintext)
        return DataKey(plaintext, encrypted.ciphertext, encrypted.key_version)
