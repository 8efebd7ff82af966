from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SecretMetadata(_message.Message):
    __slots__ = ("namespace", "name", "version", "audiences", "immutable", "keys", "created_at", "updated_at", "expires_at", "key_version", "created_by")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    IMMUTABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    version: int
    audiences: _containers.RepeatedScalarFieldContainer[str]
    immutable: bool
    keys: _containers.RepeatedScalarFieldContainer[str]
    created_at: float
    updated_at: float
    expires_at: float
    key_version: int
    created_by: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., audiences: _Optional[_Iterable[str]] = ..., immutable: _Optional[bool] = ..., keys: _Optional[_Iterable[str]] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., key_version: _Optional[int] = ..., created_by: _Optional[str] = ...) -> None: ...

class CreateSecretRequest(_message.Message):
    __slots__ = ("namespace", "name", "data", "audiences", "immutable", "ttl_seconds")
    class DataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    IMMUTABLE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    data: _containers.ScalarMap[str, bytes]
    audiences: _containers.RepeatedScalarFieldContainer[str]
    immutable: bool
    ttl_seconds: float
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., data: _Optional[_Mapping[str, bytes]] = ..., audiences: _Optional[_Iterable[str]] = ..., immutable: _Optional[bool] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class CreateSecretResponse(_message.Message):
    __slots__ = ("metadata",)
    METADATA_FIELD_NUMBER: _ClassVar[int]
    metadata: SecretMetadata
    def __init__(self, metadata: _Optional[_Union[SecretMetadata, _Mapping]] = ...) -> None: ...

class GetSecretRequest(_message.Message):
    __slots__ = ("namespace", "name", "token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    token: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class GetSecretResponse(_message.Message):
    __slots__ = ("metadata", "data", "cache_ttl_seconds")
    class DataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CACHE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    metadata: SecretMetadata
    data: _containers.ScalarMap[str, bytes]
    cache_ttl_seconds: float
    def __init__(self, metadata: _Optional[_Union[SecretMetadata, _Mapping]] = ..., data: _Optional[_Mapping[str, bytes]] = ..., cache_ttl_seconds: _Optional[float] = ...) -> None: ...

class UpdateSecretRequest(_message.Message):
    __slots__ = ("namespace", "name", "data", "expected_version")
    class DataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    data: _containers.ScalarMap[str, bytes]
    expected_version: int
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., data: _Optional[_Mapping[str, bytes]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class UpdateSecretResponse(_message.Message):
    __slots__ = ("metadata",)
    METADATA_FIELD_NUMBER: _ClassVar[int]
    metadata: SecretMetadata
    def __init__(self, metadata: _Optional[_Union[SecretMetadata, _Mapping]] = ...) -> None: ...

class DeleteSecretRequest(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class DeleteSecretResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class ListSecretsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class ListSecretsResponse(_message.Message):
    __slots__ = ("secrets",)
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    secrets: _containers.RepeatedCompositeFieldContainer[SecretMetadata]
    def __init__(self, secrets: _Optional[_Iterable[_Union[SecretMetadata, _Mapping]]] = ...) -> None: ...

class GenerateAccessTokenRequest(_message.Message):
    __slots__ = ("namespace", "name", "audience", "ttl_seconds", "max_uses")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    audience: str
    ttl_seconds: float
    max_uses: int
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., audience: _Optional[str] = ..., ttl_seconds: _Optional[float] = ..., max_uses: _Optional[int] = ...) -> None: ...

class GenerateAccessTokenResponse(_message.Message):
    __slots__ = ("token", "token_id", "expires_at")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    token: str
    token_id: str
    expires_at: float
    def __init__(self, token: _Optional[str] = ..., token_id: _Optional[str] = ..., expires_at: _Optional[float] = ...) -> None: ...

class RevokeAccessTokenRequest(_message.Message):
    __slots__ = ("namespace", "name", "token_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    token_id: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., token_id: _Optional[str] = ...) -> None: ...

class RevokeAccessTokenResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: bool
    def __init__(self, revoked: _Optional[bool] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("time", "operation", "outcome", "actor", "source", "namespace", "name", "token_id", "reason", "version", "coordinator")
    TIME_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    time: float
    operation: str
    outcome: str
    actor: str
    source: str
    namespace: str
    name: str
    token_id: str
    reason: str
    version: int
    coordinator: str
    def __init__(self, time: _Optional[float] = ..., operation: _Optional[str] = ..., outcome: _Optional[str] = ..., actor: _Optional[str] = ..., source: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., token_id: _Optional[str] = ..., reason: _Optional[str] = ..., version: _Optional[int] = ..., coordinator: _Optional[str] = ...) -> None: ...

class GetSecretAuditLogRequest(_message.Message):
    __slots__ = ("namespace", "name", "since", "until", "operation", "outcome", "limit")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    since: float
    until: float
    operation: str
    outcome: str
    limit: int
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., since: _Optional[float] = ..., until: _Optional[float] = ..., operation: _Optional[str] = ..., outcome: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class GetSecretAuditLogResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class RotationProgress(_message.Message):
    __slots__ = ("workflow_id", "state", "target_version", "rewrapped", "remaining", "started_at", "finished_at")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_VERSION_FIELD_NUMBER: _ClassVar[int]
    REWRAPPED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    state: str
    target_version: int
    rewrapped: int
    remaining: int
    started_at: float
    finished_at: float
    def __init__(self, workflow_id: _Optional[str] = ..., state: _Optional[str] = ..., target_version: _Optional[int] = ..., rewrapped: _Optional[int] = ..., remaining: _Optional[int] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ...) -> None: ...

class GetMasterKeyInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMasterKeyInfoResponse(_message.Message):
    __slots__ = ("key_name", "key_type", "latest_version", "min_decryption_version", "last_rotated_at", "schedule_id", "rotation_interval", "next_rotation_at", "last_rotation", "transit_addr")
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    MIN_DECRYPTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_ROTATED_AT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    ROTATION_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROTATION_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ROTATION_FIELD_NUMBER: _ClassVar[int]
    TRANSIT_ADDR_FIELD_NUMBER: _ClassVar[int]
    key_name: str
    key_type: str
    latest_version: int
    min_decryption_version: int
    last_rotated_at: float
    schedule_id: str
    rotation_interval: str
    next_rotation_at: float
    last_rotation: RotationProgress
    transit_addr: str
    def __init__(self, key_name: _Optional[str] = ..., key_type: _Optional[str] = ..., latest_version: _Optional[int] = ..., min_decryption_version: _Optional[int] = ..., last_rotated_at: _Optional[float] = ..., schedule_id: _Optional[str] = ..., rotation_interval: _Optional[str] = ..., next_rotation_at: _Optional[float] = ..., last_rotation: _Optional[_Union[RotationProgress, _Mapping]] = ..., transit_addr: _Optional[str] = ...) -> None: ...

class RotateMasterKeyRequest(_message.Message):
    __slots__ = ("wait",)
    WAIT_FIELD_NUMBER: _ClassVar[int]
    wait: bool
    def __init__(self, wait: _Optional[bool] = ...) -> None: ...

class RotateMasterKeyResponse(_message.Message):
    __slots__ = ("progress",)
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    progress: RotationProgress
    def __init__(self, progress: _Optional[_Union[RotationProgress, _Mapping]] = ...) -> None: ...
