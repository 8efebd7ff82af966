"""The runtime driver contract: how an agent runs one replica.

Drivers are deliberately small: the agent server translates RPCs into these calls and
the drivers translate them into a container engine or plain processes. Every replica a
driver starts is labelled with node, workload and replica so that the agent can always
list what actually runs and reconcile it against what it was told.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from cloudless.errors import RuntimeDriverError
from cloudless.vocabulary import ReplicaPhase as ReplicaPhase  # drivers report these phases

#: Label keys put on every container/process a driver starts.
LABEL_MANAGED = "dev.cloudless.managed"
LABEL_NODE = "dev.cloudless.node"
LABEL_NAMESPACE = "dev.cloudless.namespace"
LABEL_WORKLOAD = "dev.cloudless.workload"
LABEL_REPLICA = "dev.cloudless.replica"
LABEL_GENERATION = "dev.cloudless.generation"
LABEL_SPEC_HASH = "dev.cloudless.spec-hash"


@dataclass(frozen=True)
class PortMapping:
    container_port: int
    protocol: str = "TCP"  # "TCP" | "UDP"
    host_port: int | None = None  # None: not published on the host


#: Exec replicas have no mount namespace: each secret volume's directory is passed in
#: ``CLOUDLESS_SECRET_VOLUME_<NAME>`` (volume name upper-cased, ``-`` as ``_``).
SECRET_VOLUME_ENV_PREFIX = "CLOUDLESS_SECRET_VOLUME_"
#: Default file mode of projected secret files (owner read-only, like a private key).
DEFAULT_SECRET_FILE_MODE = 0o400


def secret_volume_env_name(volume_name: str) -> str:
    """The env var that tells an exec replica where a secret volume's files are."""
    return SECRET_VOLUME_ENV_PREFIX + volume_name.upper().replace("-", "_")


@dataclass(frozen=True)
class SecretKeyRef:
    """One key of a secret, read with an access token for ``audience``."""

    namespace: str
    name: str
    key: str
    audience: str


@dataclass(frozen=True)
class SecretEnvVar:
    """An environment variable whose value is a secret key (the reference, never the value)."""

    name: str
    ref: SecretKeyRef


@dataclass(frozen=True)
class SecretFile:
    """One key projected as ``path`` (relative to the volume); mode 0 means the default."""

    key: str
    path: str
    mode: int = 0


@dataclass(frozen=True)
class SecretVolume:
    """A secret projected as files at ``mount_path``; no ``files`` means every key."""

    volume_name: str
    mount_path: str
    namespace: str
    name: str
    audience: str
    files: Sequence[SecretFile] = ()
    default_mode: int = 0

    @property
    def secret(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class SecretMount:
    """A host directory of projected secret files and where the replica sees it."""

    volume_name: str
    host_dir: str
    container_path: str


@dataclass(frozen=True, repr=False)
class ResolvedSecrets:
    """Secret values and paths for one start of a replica: memory only, never persisted.

    The repr names variables, not values, so a logged spec cannot leak a secret.
    """

    env: Mapping[str, str] = field(default_factory=dict)
    mounts: Sequence[SecretMount] = ()
    #: Host path of a tmpfs file of ``export NAME='value'`` lines (docker runtime only).
    env_file: str | None = None

    def __repr__(self) -> str:
        return (
            f"ResolvedSecrets(env={sorted(self.env)}, mounts={list(self.mounts)}, "
            f"env_file={self.env_file!r})"
        )


@dataclass(frozen=True)
class ProbeSpec:
    """One health check of a replica, as the agent runs it (see ``agent/probes.py``).

    ``action`` is ``exec`` (``command``), ``http`` (``scheme``, ``path``, ``port``,
    ``headers``) or ``tcp`` (``port``); ports are container ports, already numeric.
    """

    action: str
    command: Sequence[str] = ()
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    headers: Sequence[tuple[str, str]] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one probe run; ``message`` says why it failed."""

    ok: bool
    message: str = ""


#: How much of a failing exec probe's output ends up in the message.
_PROBE_OUTPUT_CHARS = 200


def exec_outcome(argv: Sequence[str], code: int, output: bytes) -> ProbeResult:
    """An exec probe's verdict: exit code 0 passes; otherwise say how, with its output."""
    if code == 0:
        return ProbeResult(True)
    text = output.decode("utf-8", errors="replace").strip()[-_PROBE_OUTPUT_CHARS:]
    shown = " ".join(argv)
    return ProbeResult(False, f"exec {shown!r} exited with {code}" + (f": {text}" if text else ""))


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a driver needs to start one replica; built by the agent from the RPC."""

    replica_id: str  # unique in the cluster, safe for container names ([a-z0-9-])
    namespace: str
    workload: str
    node_id: str
    image: str  # ignored by the exec driver
    command: Sequence[str] = ()
    args: Sequence[str] = ()
    #: Absolute path the process starts in; "" for the runtime's default.
    working_dir: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    ports: Sequence[PortMapping] = ()
    cpu_millis: int = 0  # 0: no limit
    memory_bytes: int = 0  # 0: no limit
    generation: int = 1
    spec_hash: str = ""  # drivers treat a differing hash for the same replica_id as a new spec
    labels: Mapping[str, str] = field(default_factory=dict)  # user labels, added as-is
    secret_env: Sequence[SecretEnvVar] = ()
    secret_volumes: Sequence[SecretVolume] = ()
    liveness_probe: ProbeSpec | None = None
    readiness_probe: ProbeSpec | None = None
    startup_probe: ProbeSpec | None = None
    #: Placement epoch from the control plane (0: unknown, e.g. an older coordinator).
    epoch: int = 0
    #: Filled by the agent right before a (re)start; drivers refuse specs that reference
    #: secrets without it. Never persisted (see :meth:`without_secret_values`).
    resolved: ResolvedSecrets | None = field(default=None, repr=False, compare=False)

    @property
    def has_probes(self) -> bool:
        return any((self.liveness_probe, self.readiness_probe, self.startup_probe))

    @property
    def readiness_gated(self) -> bool:
        """Ready only once a probe passed, rather than as soon as it runs."""
        return self.readiness_probe is not None or self.startup_probe is not None

    @property
    def uses_secrets(self) -> bool:
        return bool(self.secret_env or self.secret_volumes)

    def without_secret_values(self) -> ReplicaSpec:
        """The spec as it may be stored or kept long-term: references only."""
        return replace(self, resolved=None)

    def require_resolved(self, runtime: str) -> ResolvedSecrets:
        """The resolved secrets; a driver must never start a replica without them."""
        if self.resolved is None:
            raise RuntimeDriverError(
                f"{runtime}: replica {self.replica_id} references secrets that were not "
                "resolved before the start (agent bug)"
            )
        return self.resolved

    def managed_labels(self) -> dict[str, str]:
        """The labels every driver must attach (user labels first, ours win)."""
        labels = dict(self.labels)
        labels.update(
            {
                LABEL_MANAGED: "true",
                LABEL_NODE: self.node_id,
                LABEL_NAMESPACE: self.namespace,
                LABEL_WORKLOAD: self.workload,
                LABEL_REPLICA: self.replica_id,
                LABEL_GENERATION: str(self.generation),
                LABEL_SPEC_HASH: self.spec_hash,
            }
        )
        return labels


@dataclass(frozen=True)
class ReplicaStatus:
    """What a driver observed about one replica."""

    replica_id: str
    namespace: str
    workload: str
    phase: ReplicaPhase
    generation: int = 1
    spec_hash: str = ""
    runtime_id: str = ""  # container id or pid
    exit_code: int | None = None
    message: str = ""
    started_at: float | None = None  # unix seconds


class RuntimeDriver(Protocol):
    """A way to run replicas on this node. Implementations must be safe to call concurrently."""

    name: str

    async def available(self) -> bool:
        """Whether this driver can run replicas on this node right now."""

    async def run(self, spec: ReplicaSpec) -> ReplicaStatus:
        """Start the replica; idempotent per ``replica_id``.

        If a replica with this id already runs with the same ``spec_hash`` it is left
        alone and its status returned; if it runs with another hash it is replaced; if it
        exited it is removed and started again. Returns once the replica is Running (or
        raises :class:`~cloudless.errors.RuntimeDriverError` with the engine's reason).
        """

    async def stop(self, replica_id: str, grace_seconds: float = 10.0) -> ReplicaStatus | None:
        """Stop and remove the replica; returns its last status, or None if unknown."""

    async def list(self) -> list[ReplicaStatus]:
        """Every replica this driver runs or ran on this node (managed label only)."""

    def logs(
        self, replica_id: str, *, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream stdout+stderr lines of the replica as bytes chunks."""

    async def close(self) -> None:
        """Release engine connections; does not stop replicas (the data plane outlives us)."""
