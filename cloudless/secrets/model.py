"""Payload models of the secret and key-rotation workflows (ciphertext only, never values)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SecretRecord(_Model):
    """One secret as Temporal stores it: metadata, sealed data and the wrapped data key."""

    namespace: str
    name: str
    version: int = 1
    audiences: list[str] = Field(default_factory=list)
    immutable: bool = False
    keys: list[str] = Field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0
    expires_at: float = 0.0  # 0: never
    created_by: str = ""
    ciphertext: str = ""  # base64(nonce || AES-256-GCM ciphertext+tag)
    wrapped_key: str = ""  # transit ciphertext of the data key, "vault:vN:..."
    key_version: int = 0  # N of the wrapped key


class TokenUses(_Model):
    """Durable use count of one access token with a ``max_uses`` limit."""

    reserved: int = 0
    max_uses: int = 0
    expires_at: float = 0.0


class SecretState(_Model):
    """Everything a secret workflow carries across continue-as-new."""

    record: SecretRecord
    uses: dict[str, TokenUses] = Field(default_factory=dict)
    revoked: dict[str, float] = Field(default_factory=dict)  # jti -> token expiry


class SecretWorkflowInput(_Model):
    """Run input of ``secret/<ns>/<name>``: empty at first, the state across continue-as-new."""

    carried: SecretState | None = None


class SecretView(_Model):
    """Query result: the record plus the revocation list (for the service's cache)."""

    record: SecretRecord
    revoked: dict[str, float] = Field(default_factory=dict)


class CreateSecretInput(_Model):
    record: SecretRecord


class UpdateSecretInput(_Model):
    expected_version: int  # the version the new ciphertext's associated data follows
    ciphertext: str
    wrapped_key: str
    key_version: int
    keys: list[str]
    updated_at: float


class DeleteSecretInput(_Model):
    actor: str = ""


class ReserveUsesInput(_Model):
    token_id: str
    max_uses: int
    expires_at: float
    want: int


class RevokeInput(_Model):
    token_id: str
    expires_at: float


class RewrapInput(_Model):
    expected_wrapped_key: str
    wrapped_key: str
    key_version: int


class RewrapResult(_Model):
    applied: bool
    key_version: int


class RotationInput(_Model):
    cluster: str
    key_name: str
    batch_size: int = 100
    #: Pause between batches: spreads the rewrap load on transit over time.
    batch_interval_seconds: float = 0.0
    #: Wait this long with nothing left to rewrap before raising min_decryption_version,
    #: so a create/update that took a data key before the rotation has committed (and is
    #: listed) by then. Longer than any SecretsService RPC deadline.
    settle_seconds: float = 30.0


class RotationProgress(_Model):
    state: str = "Idle"  # Rotating | Rewrapping | Finalizing | Done
    target_version: int = 0
    rewrapped: int = 0
    remaining: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0


class SecretRef(_Model):
    """Where one secret workflow is: for rotation batches."""

    namespace: str
    name: str


class RewrapBatchInput(_Model):
    key_name: str
    target_version: int
    secrets: list[SecretRef]


class RewrapBatchResult(_Model):
    rewrapped: int
    skipped: int


class KeyVersions(_Model):
    latest_version: int
    min_decryption_version: int


class RotateKeyInput(_Model):
    key_name: str
    expected_latest: int  # rotate only if transit is still here (idempotent retries)


class SecretsBelowInput(_Model):
    target_version: int
    limit: int


class FinalizeInput(_Model):
    key_name: str
    min_decryption_version: int
