"""Envelope encryption of a secret's data map under its own data key (AES-256-GCM).

The data key comes from transit ``datakey`` and is kept only in wrapped form. The
associated data binds a ciphertext to its namespace, name and version, so a stored blob
cannot be replayed as another secret or as an older version of the same one.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cloudless.errors import SecretError

FORMAT = b"cloudless/secret/v1"
NONCE_BYTES = 12
KEY_BYTES = 32


def associated_data(namespace: str, name: str, version: int) -> bytes:
    """What the GCM tag authenticates besides the ciphertext."""
    return b"\0".join((FORMAT, namespace.encode(), name.encode(), str(version).encode()))


def encode_data(data: Mapping[str, bytes]) -> bytes:
    """Canonical serialization of a data map (sorted keys, base64 values)."""
    return json.dumps(
        {k: base64.b64encode(v).decode() for k, v in sorted(data.items())},
        separators=(",", ":"),
    ).encode()


def decode_data(raw: bytes) -> dict[str, bytes]:
    obj = json.loads(raw)
    return {str(k): base64.b64decode(v) for k, v in obj.items()}


def seal(
    data_key: bytes, data: Mapping[str, bytes], *, namespace: str, name: str, version: int
) -> str:
    """Encrypt ``data``; returns base64 of nonce || ciphertext+tag."""
    if len(data_key) != KEY_BYTES:
        raise SecretError(f"data key must be {KEY_BYTES} bytes, got {len(data_key)}", "INTERNAL")
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(data_key).encrypt(
        nonce, encode_data(data), associated_data(namespace, name, version)
    )
    return base64.b64encode(nonce + sealed).decode()


def open_sealed(
    data_key: bytes, blob: str, *, namespace: str, name: str, version: int
) -> dict[str, bytes]:
    """Decrypt what :func:`seal` produced for exactly this namespace/name/version."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except ValueError:
        raise SecretError(
            f"stored ciphertext of {namespace}/{name} is not base64", "DATA_LOSS"
        ) from None
    if len(raw) <= NONCE_BYTES:
        raise SecretError(f"stored ciphertext of {namespace}/{name} is truncated", "DATA_LOSS")
    try:
        plain = AESGCM(data_key).decrypt(
            raw[:NONCE_BYTES], raw[NONCE_BYTES:], associated_data(namespace, name, version)
        )
    except InvalidTag:
        raise SecretError(
            f"ciphertext of {namespace}/{name} v{version} failed authentication "
            "(tampered, or sealed for another secret/version)",
            "DATA_LOSS",
        ) from None
    return decode_data(plain)
