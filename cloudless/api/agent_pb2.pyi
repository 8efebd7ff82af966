from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Port(_message.Message):
    __slots__ = ("container_port", "protocol", "host_port")
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    container_port: int
    protocol: str
    host_port: int
    def __init__(self, container_port: _Optional[int] = ..., protocol: _Optional[str] = ..., host_port: _Optional[int] = ...) -> None: ...

class SecretKeySelector(_message.Message):
    __slots__ = ("namespace", "name", "key", "audience")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    key: str
    audience: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., key: _Optional[str] = ..., audience: _Optional[str] = ...) -> None: ...

class SecretEnvVar(_message.Message):
    __slots__ = ("name", "ref")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    name: str
    ref: SecretKeySelector
    def __init__(self, name: _Optional[str] = ..., ref: _Optional[_Union[SecretKeySelector, _Mapping]] = ...) -> None: ...

class SecretFile(_message.Message):
    __slots__ = ("key", "path", "mode")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    key: str
    path: str
    mode: int
    def __init__(self, key: _Optional[str] = ..., path: _Optional[str] = ..., mode: _Optional[int] = ...) -> None: ...

class SecretVolume(_message.Message):
    __slots__ = ("volume_name", "mount_path", "namespace", "name", "audience", "files", "default_mode")
    VOLUME_NAME_FIELD_NUMBER: _ClassVar[int]
    MOUNT_PATH_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODE_FIELD_NUMBER: _ClassVar[int]
    volume_name: str
    mount_path: str
    namespace: str
    name: str
    audience: str
    files: _containers.RepeatedCompositeFieldContainer[SecretFile]
    default_mode: int
    def __init__(self, volume_name: _Optional[str] = ..., mount_path: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., audience: _Optional[str] = ..., files: _Optional[_Iterable[_Union[SecretFile, _Mapping]]] = ..., default_mode: _Optional[int] = ...) -> None: ...

class ExecAction(_message.Message):
    __slots__ = ("command",)
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    command: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, command: _Optional[_Iterable[str]] = ...) -> None: ...

class HTTPHeader(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class HTTPGetAction(_message.Message):
    __slots__ = ("path", "port", "scheme", "headers")
    PATH_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    path: str
    port: int
    scheme: str
    headers: _containers.RepeatedCompositeFieldContainer[HTTPHeader]
    def __init__(self, path: _Optional[str] = ..., port: _Optional[int] = ..., scheme: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[HTTPHeader, _Mapping]]] = ...) -> None: ...

class TCPSocketAction(_message.Message):
    __slots__ = ("port",)
    PORT_FIELD_NUMBER: _ClassVar[int]
    port: int
    def __init__(self, port: _Optional[int] = ...) -> None: ...

class Probe(_message.Message):
    __slots__ = ("exec", "http_get", "tcp_socket", "initial_delay_seconds", "period_seconds", "timeout_seconds", "failure_threshold", "success_threshold")
    EXEC_FIELD_NUMBER: _ClassVar[int]
    HTTP_GET_FIELD_NUMBER: _ClassVar[int]
    TCP_SOCKET_FIELD_NUMBER: _ClassVar[int]
    INITIAL_DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    exec: ExecAction
    http_get: HTTPGetAction
    tcp_socket: TCPSocketAction
    initial_delay_seconds: float
    period_seconds: float
    timeout_seconds: float
    failure_threshold: int
    success_threshold: int
    def __init__(self, exec: _Optional[_Union[ExecAction, _Mapping]] = ..., http_get: _Optional[_Union[HTTPGetAction, _Mapping]] = ..., tcp_socket: _Optional[_Union[TCPSocketAction, _Mapping]] = ..., initial_delay_seconds: _Optional[float] = ..., period_seconds: _Optional[float] = ..., timeout_seconds: _Optional[float] = ..., failure_threshold: _Optional[int] = ..., success_threshold: _Optional[int] = ...) -> None: ...

class ReplicaSpec(_message.Message):
    __slots__ = ("replica_id", "namespace", "workload", "runtime", "image", "command", "args", "env", "ports", "cpu_millis", "memory_bytes", "generation", "spec_hash", "labels", "restart_policy", "secret_env", "secret_volumes", "liveness_probe", "readiness_probe", "startup_probe", "epoch", "working_dir")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SPEC_HASH_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    SECRET_ENV_FIELD_NUMBER: _ClassVar[int]
    SECRET_VOLUMES_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_PROBE_FIELD_NUMBER: _ClassVar[int]
    READINESS_PROBE_FIELD_NUMBER: _ClassVar[int]
    STARTUP_PROBE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    namespace: str
    workload: str
    runtime: str
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    ports: _containers.RepeatedCompositeFieldContainer[Port]
    cpu_millis: int
    memory_bytes: int
    generation: int
    spec_hash: str
    labels: _containers.ScalarMap[str, str]
    restart_policy: str
    secret_env: _containers.RepeatedCompositeFieldContainer[SecretEnvVar]
    secret_volumes: _containers.RepeatedCompositeFieldContainer[SecretVolume]
    liveness_probe: Probe
    readiness_probe: Probe
    startup_probe: Probe
    epoch: int
    working_dir: str
    def __init__(self, replica_id: _Optional[str] = ..., namespace: _Optional[str] = ..., workload: _Optional[str] = ..., runtime: _Optional[str] = ..., image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., ports: _Optional[_Iterable[_Union[Port, _Mapping]]] = ..., cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., generation: _Optional[int] = ..., spec_hash: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., restart_policy: _Optional[str] = ..., secret_env: _Optional[_Iterable[_Union[SecretEnvVar, _Mapping]]] = ..., secret_volumes: _Optional[_Iterable[_Union[SecretVolume, _Mapping]]] = ..., liveness_probe: _Optional[_Union[Probe, _Mapping]] = ..., readiness_probe: _Optional[_Union[Probe, _Mapping]] = ..., startup_probe: _Optional[_Union[Probe, _Mapping]] = ..., epoch: _Optional[int] = ..., working_dir: _Optional[str] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("replica_id", "namespace", "workload", "runtime", "phase", "generation", "spec_hash", "runtime_id", "has_exit_code", "exit_code", "message", "started_at", "node_id", "terminal", "restarts", "ready", "ready_message", "readiness_gated", "restart_reason", "epoch", "crashes", "has_crash_exit_code", "crash_exit_code", "crash_reason", "crashed_at")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SPEC_HASH_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_ID_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    READY_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    READINESS_GATED_FIELD_NUMBER: _ClassVar[int]
    RESTART_REASON_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CRASHES_FIELD_NUMBER: _ClassVar[int]
    HAS_CRASH_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    CRASH_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    CRASH_REASON_FIELD_NUMBER: _ClassVar[int]
    CRASHED_AT_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    namespace: str
    workload: str
    runtime: str
    phase: str
    generation: int
    spec_hash: str
    runtime_id: str
    has_exit_code: bool
    exit_code: int
    message: str
    started_at: float
    node_id: str
    terminal: bool
    restarts: int
    ready: bool
    ready_message: str
    readiness_gated: bool
    restart_reason: str
    epoch: int
    crashes: int
    has_crash_exit_code: bool
    crash_exit_code: int
    crash_reason: str
    crashed_at: float
    def __init__(self, replica_id: _Optional[str] = ..., namespace: _Optional[str] = ..., workload: _Optional[str] = ..., runtime: _Optional[str] = ..., phase: _Optional[str] = ..., generation: _Optional[int] = ..., spec_hash: _Optional[str] = ..., runtime_id: _Optional[str] = ..., has_exit_code: _Optional[bool] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., started_at: _Optional[float] = ..., node_id: _Optional[str] = ..., terminal: _Optional[bool] = ..., restarts: _Optional[int] = ..., ready: _Optional[bool] = ..., ready_message: _Optional[str] = ..., readiness_gated: _Optional[bool] = ..., restart_reason: _Optional[str] = ..., epoch: _Optional[int] = ..., crashes: _Optional[int] = ..., has_crash_exit_code: _Optional[bool] = ..., crash_exit_code: _Optional[int] = ..., crash_reason: _Optional[str] = ..., crashed_at: _Optional[float] = ...) -> None: ...

class RunReplicaRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: ReplicaSpec
    def __init__(self, spec: _Optional[_Union[ReplicaSpec, _Mapping]] = ...) -> None: ...

class RunReplicaResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ReplicaStatus
    def __init__(self, status: _Optional[_Union[ReplicaStatus, _Mapping]] = ...) -> None: ...

class StopReplicaRequest(_message.Message):
    __slots__ = ("replica_id", "grace_seconds", "epoch")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    grace_seconds: float
    epoch: int
    def __init__(self, replica_id: _Optional[str] = ..., grace_seconds: _Optional[float] = ..., epoch: _Optional[int] = ...) -> None: ...

class StopReplicaResponse(_message.Message):
    __slots__ = ("found", "status")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    status: ReplicaStatus
    def __init__(self, found: _Optional[bool] = ..., status: _Optional[_Union[ReplicaStatus, _Mapping]] = ...) -> None: ...

class ListReplicasRequest(_message.Message):
    __slots__ = ("namespace", "workload")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    workload: str
    def __init__(self, namespace: _Optional[str] = ..., workload: _Optional[str] = ...) -> None: ...

class ListReplicasResponse(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    def __init__(self, replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("replica_id", "follow", "tail")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    follow: bool
    tail: int
    def __init__(self, replica_id: _Optional[str] = ..., follow: _Optional[bool] = ..., tail: _Optional[int] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class NodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfoResponse(_message.Message):
    __slots__ = ("node_id", "runtimes", "agent_version")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    runtimes: _containers.RepeatedScalarFieldContainer[str]
    agent_version: str
    def __init__(self, node_id: _Optional[str] = ..., runtimes: _Optional[_Iterable[str]] = ..., agent_version: _Optional[str] = ...) -> None: ...
