"""The secrets master key in transit, reached only through ``hvac``.

Synchronous like hvac itself; async callers run these methods in a thread. Works the
same against ``cloudless-transit``, Vault and OpenBao.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import hvac
import hvac.exceptions

from cloudless.errors import SecretError

DEFAULT_KEY_NAME = "cloudless-secrets"


@dataclass(frozen=True)
class DataKey:
    plaintext: bytes
    wrapped: str  # "vault:vN:..."

    @property
    def version(self) -> int:
        return wrapped_version(self.wrapped)


@dataclass(frozen=True)
class KeyInfo:
    name: str
    key_type: str
    latest_version: int
    min_decryption_version: int
    last_rotated_at: float


def wrapped_version(wrapped: str) -> int:
    """N of a ``vault:vN:...`` ciphertext."""
    parts = wrapped.split(":", 2)
    if len(parts) != 3 or parts[0] != "vault" or not parts[1].startswith("v"):
        raise SecretError(f"not a transit ciphertext: {wrapped[:16]!r}...", "DATA_LOSS")
    try:
        return int(parts[1][1:])
    except ValueError:
        raise SecretError(f"bad key version in {wrapped[:16]!r}...", "DATA_LOSS") from None


def _transit_failure(what: str, err: Exception) -> SecretError:
    if isinstance(err, hvac.exceptions.Forbidden):
        return SecretError(f"transit refused to {what}: permission denied", "UNAVAILABLE")
    if isinstance(err, hvac.exceptions.InvalidRequest):
        errors = "; ".join(getattr(err, "errors", None) or [str(err)])
        return SecretError(f"transit could not {what}: {errors}", "FAILED_PRECONDITION")
    return SecretError(f"transit unavailable while trying to {what}: {err}", "UNAVAILABLE")


class MasterKey:
    """One named transit key that wraps per-secret data keys."""

    def __init__(
        self, client: hvac.Client, name: str = DEFAULT_KEY_NAME, mount: str = "transit"
    ) -> None:
        self.client = client
        self.name = name
        self.mount = mount

    @property
    def _transit(self) -> Any:
        return self.client.secrets.transit

    def ensure(self) -> KeyInfo:
        """Create the key (aes256-gcm96, not deletable) if missing; return its info."""
        try:
            return self.info()
        except SecretError:
            pass
        try:
            self._transit.create_key(self.name, key_type="aes256-gcm96", mount_point=self.mount)
        except (hvac.exceptions.VaultError, OSError) as err:
            raise _transit_failure(f"create key {self.name}", err) from err
        return self.info()

    def info(self) -> KeyInfo:
        try:
            data = self._transit.read_key(self.name, mount_point=self.mount)["data"]
        except hvac.exceptions.InvalidPath:
            raise SecretError(f"transit key {self.name} does not exist", "NOT_FOUND") from None
        except (hvac.exceptions.VaultError, OSError) as err:
            raise _transit_failure(f"read key {self.name}", err) from err
        keys = data.get("keys") or {}
        latest = int(data.get("latest_version") or 0)
        created = keys.get(str(latest), 0)
        return KeyInfo(
            name=self.name,
            key_type=str(data.get("type", "")),
            latest_version=latest,
            min_decryption_version=int(data.get("min_decryption_version") or 1),
            last_rotated_at=float(created) if isinstance(created, int | float) else 0.0,
        )

    def datakey(self) -> DataKey:
        """A fresh 256-bit data key, plaintext and wrapped under the latest version."""
        try:
            data = self._transit.generate_data_key(
                self.name, key_type="plaintext", bits=256, mount_point=self.mount
            )["data"]
        except (hvac.exceptions.VaultError, OSError) as err:
            raise _transit_failure("generate a data key", err) from err
        return DataKey(base64.b64decode(data["plaintext"]), data["ciphertext"])

    def unwrap(self, wrapped: str) -> bytes:
        try:
            data = self._transit.decrypt_data(
                self.name, ciphertext=wrapped, mount_point=self.mount
            )["data"]
        except (hvac.exceptions.VaultError, OSError) as err:
            raise _transit_failure("unwrap a data key", err) from err
        return base64.b64decode(data["plaintext"])

    def rewrap(self, wrapped: list[str]) -> list[str]:
        """Rewrap many data keys to the latest version in one batch request."""
        if not wrapped:
            return []
        try:
            out = self._transit.rewrap_data(
                self.name,
                ciphertext="",
                batch_input=[{"ciphertext": w} for w in wrapped],
                mount_point=self.mount,
            )["data"]["batch_results"]
        except (hvac.exceptions.VaultError, OSError) as err:
            raise _transit_failure("rewrap data keys", err) from err
        results = []
        for item in out:
            if item.get("error"):
                raise SecretError(f"transit could not rewrap: {item['error']}", "DATA_LOSS")
            results.append(str(item["ciphertext"]))
        return results

    def rotate(self) -> int:
        try:
            self._transit.rotate_key(self.name, mount_point=self.mount)
        except (hvac.exceptions.VaultError, OSError) as err:
            raise _transit_failure(f"rotate key {self.name}", err) from err
        return self.info().latest_version

    def set_min_decryption_version(self, version: int) -> None:
        try:
            self._transit.update_key_configuration(
                self.name, min_decryption_version=version, mount_point=self.mount
            )
        except (hvac.exceptions.VaultError, OSError) as err:
            raise _transit_failure("raise min_decryption_version", err) from err
