"""AgentService: the node agent's gRPC API, served over mutual TLS.

The TLS layer already refuses clients without a cluster-CA certificate; every handler
additionally requires the peer's identity to be a coordinator of this cluster, so one
compromised node cannot command another.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import structlog

from agent.epochs import EpochStore
from agent.runtime.base import (
    PortMapping,
    ProbeSpec,
    ReplicaPhase,
    ReplicaSpec,
    ReplicaStatus,
    RuntimeDriver,
    SecretEnvVar,
    SecretFile,
    SecretKeyRef,
    SecretVolume,
)
from agent.runtime.registry import capabilities, registered
from agent.secretfs import SecretDeliveryError
from agent.secrets import SecretDelivery
from agent.supervisor import Supervisor
from cloudless.api import agent_pb2, agent_pb2_grpc
from cloudless.errors import RuntimeDriverError
from cloudless.spec import image_problem, label_problems, path_problem, text_problem
from cloudless.tls import peer_identity

log = structlog.get_logger("cloudless.agent")

# fullmatch only: re.match with "$" would also accept a trailing newline.
_REPLICA_ID = re.compile(r"[a-z0-9]([-a-z0-9.]{0,200}[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VOLUME_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_LABEL = _VOLUME_NAME
_HTTP_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Where the docker runtime puts its secret-delivery files inside containers.
_RESERVED_MOUNT_DIR = "/.cloudless"
MAX_CPU_MILLIS = 1024 * 1000
MAX_MEMORY_BYTES = 16 * 2**40
AGENT_VERSION = "0.1.0"

Context = grpc.aio.ServicerContext[object, object]


def status_to_proto(
    s: ReplicaStatus, runtime: str, node_id: str, supervisor: Supervisor | None = None
) -> agent_pb2.ReplicaStatus:
    """The wire status; with the supervisor, also what only it knows: terminal, restarts,
    readiness (probes), why it was last restarted and its crashes."""
    proto = _status_proto(s, runtime, node_id)
    if supervisor is None:
        proto.ready = s.phase == ReplicaPhase.RUNNING
        return proto
    proto.terminal = supervisor.is_terminal(s)
    proto.restarts = supervisor.restarts(s.replica_id)
    proto.ready, proto.ready_message, proto.readiness_gated = supervisor.readiness(s)
    proto.restart_reason = supervisor.restart_reason(s.replica_id)
    proto.epoch = supervisor.epoch(s.replica_id)
    crash = supervisor.crash_report(s.replica_id)
    if crash is not None:
        proto.crashes, proto.crash_reason, proto.crashed_at = crash.crashes, crash.reason, crash.at
        if crash.exit_code is not None:
            proto.has_crash_exit_code, proto.crash_exit_code = True, crash.exit_code
    if proto.terminal and supervisor.kill_reason(s.replica_id):
        proto.message = f"{supervisor.kill_reason(s.replica_id)}; {proto.message}"
    return proto


def _status_proto(s: ReplicaStatus, runtime: str, node_id: str) -> agent_pb2.ReplicaStatus:
    return agent_pb2.ReplicaStatus(
        replica_id=s.replica_id,
        namespace=s.namespace,
        workload=s.workload,
        runtime=runtime,
        phase=s.phase.value,
        generation=s.generation,
        spec_hash=s.spec_hash,
        runtime_id=s.runtime_id,
        has_exit_code=s.exit_code is not None,
        exit_code=s.exit_code or 0,
        message=s.message,
        started_at=s.started_at or 0.0,
        node_id=node_id,
    )


def validate_spec(spec: agent_pb2.ReplicaSpec) -> list[str]:
    """Problems with an incoming replica spec; the control plane validated it too, but
    an agent never trusts its input."""
    problems = []
    if not _REPLICA_ID.fullmatch(spec.replica_id):
        problems.append(f"replica_id {spec.replica_id!r} must be lowercase [a-z0-9.-]")
    if not _DNS_LABEL.fullmatch(spec.namespace) or not _DNS_LABEL.fullmatch(spec.workload):
        problems.append(
            f"namespace {spec.namespace!r} and workload {spec.workload!r} must be DNS-1123 labels"
        )
    if not 0 <= spec.cpu_millis <= MAX_CPU_MILLIS:
        problems.append(f"cpu_millis {spec.cpu_millis} out of range 0..{MAX_CPU_MILLIS}")
    if not 0 <= spec.memory_bytes <= MAX_MEMORY_BYTES:
        problems.append(f"memory_bytes {spec.memory_bytes} out of range")
    for p in spec.ports:
        if not 1 <= p.container_port <= 65535 or p.host_port > 65535:
            problems.append(f"port {p.container_port}->{p.host_port} out of range 1..65535")
        if p.protocol not in ("TCP", "UDP"):
            problems.append(f"port protocol {p.protocol!r} must be TCP or UDP")
    # An unregistered runtime is refused later, as unavailable on this node.
    if spec.runtime in registered() and capabilities(spec.runtime).needs_image and not spec.image:
        problems.append(f"image is required for the {spec.runtime} runtime")
    problems.extend(_text_problems(spec))
    problems.extend(_secret_problems(spec))
    problems.extend(_probe_problems(spec))
    return problems


def _text_problems(spec: agent_pb2.ReplicaSpec) -> list[str]:
    """What the manifest refuses and a runtime cannot take: a NUL in an argument or the
    environment, a malformed image reference, env name or label (the same rules as
    ``cloudless.spec``: a coordinator that skipped them must not wedge a start)."""
    problems = []
    if spec.image and (problem := image_problem(spec.image)) is not None:
        problems.append(f"image {spec.image!r} {problem}")
    for field in ("command", "args"):
        for index, arg in enumerate(getattr(spec, field)):
            if (problem := text_problem(arg)) is not None:
                problems.append(f"{field}[{index}] {problem}")
    for name, value in spec.env.items():
        if not _ENV_NAME.fullmatch(name):
            problems.append(f"env var name {name!r} must be a C identifier")
        if (problem := text_problem(value)) is not None:
            problems.append(f"env var {name!r} {problem}")
    if spec.working_dir and (problem := path_problem(spec.working_dir)) is not None:
        problems.append(f"working_dir {spec.working_dir!r} {problem}")
    problems.extend(label_problems(dict(spec.labels)))
    return problems


def _relative_file(path: str) -> bool:
    parts = path.split("/")
    return (
        bool(path)
        and _CONTROL.search(path) is None
        and not any(p in ("", ".", "..") for p in parts)
    )


def _secret_problems(spec: agent_pb2.ReplicaSpec) -> list[str]:
    """Secret references must be complete, and files must stay inside their volume."""
    problems = []
    for var in spec.secret_env:
        ref = var.ref
        if not _ENV_NAME.fullmatch(var.name):
            problems.append(f"secret env var name {var.name!r} must be a C identifier")
        if not (ref.namespace and ref.name and ref.key and ref.audience):
            problems.append(f"secret env var {var.name}: namespace, name, key, audience required")
    for volume in spec.secret_volumes:
        where = f"secret volume {volume.volume_name!r}"
        if not _VOLUME_NAME.fullmatch(volume.volume_name):
            problems.append(f"{where}: name must be a DNS-1123 label")
        if not (volume.namespace and volume.name and volume.audience):
            problems.append(f"{where}: namespace, name and audience are required")
        mount = volume.mount_path
        if path_problem(mount) is not None or posixpath.normpath(mount) != mount or mount == "/":
            problems.append(
                f"{where}: mount path {mount!r} must be a normalized absolute path without "
                "control characters"
            )
        elif mount == _RESERVED_MOUNT_DIR or mount.startswith(_RESERVED_MOUNT_DIR + "/"):
            problems.append(f"{where}: mount path {mount!r} is reserved for the agent")
        for file in volume.files:
            if not _relative_file(file.path):
                problems.append(f"{where}: file path {file.path!r} must be relative without '..'")
        modes = [volume.default_mode, *(f.mode for f in volume.files)]
        if any(mode > 0o777 for mode in modes):
            problems.append(f"{where}: file modes must be at most 0777")
    return problems


_PROBE_KINDS = ("liveness_probe", "readiness_probe", "startup_probe")
_MAX_PROBE_SECONDS = 86_400.0


def _probe_problems(spec: agent_pb2.ReplicaSpec) -> list[str]:
    problems = []
    for kind in _PROBE_KINDS:
        if not spec.HasField(kind):
            continue
        probe: agent_pb2.Probe = getattr(spec, kind)
        handler = probe.WhichOneof("handler")
        if handler is None:
            problems.append(f"{kind}: needs one of exec, http_get, tcp_socket")
        elif handler == "exec" and not probe.exec.command:
            problems.append(f"{kind}: exec needs a command")
        elif handler == "exec" and any(text_problem(arg) for arg in probe.exec.command):
            problems.append(f"{kind}: exec command arguments must not contain a NUL character")
        elif handler == "http_get" and (
            not 1 <= probe.http_get.port <= 65535
            or probe.http_get.scheme not in ("", "HTTP", "HTTPS")
            or not probe.http_get.path.startswith("/")
            or " " in probe.http_get.path
            or _CONTROL.search(probe.http_get.path) is not None
        ):
            problems.append(
                f"{kind}: http_get needs a port 1..65535, HTTP(S) and a /path without spaces "
                "or control characters"
            )
        elif handler == "http_get" and any(
            not _HTTP_HEADER_NAME.fullmatch(h.name) or _CONTROL.search(h.value.replace("\t", ""))
            for h in probe.http_get.headers
        ):
            problems.append(
                f"{kind}: http_get headers need token names and values without control characters"
            )
        elif handler == "tcp_socket" and not 1 <= probe.tcp_socket.port <= 65535:
            problems.append(f"{kind}: tcp_socket port out of range 1..65535")
        durations = (probe.initial_delay_seconds, probe.period_seconds, probe.timeout_seconds)
        if any(not 0 <= d <= _MAX_PROBE_SECONDS for d in durations):
            problems.append(f"{kind}: durations must be within 0..{_MAX_PROBE_SECONDS:g} s")
        if kind != "readiness_probe" and probe.success_threshold > 1:
            problems.append(f"{kind}: success_threshold must be 1")
    return problems


def probe_from_proto(probe: agent_pb2.Probe) -> ProbeSpec:
    """The agent-level probe; zero values mean the Kubernetes defaults."""
    handler = probe.WhichOneof("handler")
    common: dict[str, Any] = {
        "initial_delay": probe.initial_delay_seconds,
        "period": probe.period_seconds or 10.0,
        "timeout": probe.timeout_seconds or 1.0,
        "failure_threshold": probe.failure_threshold or 3,
        "success_threshold": probe.success_threshold or 1,
    }
    if handler == "exec":
        return ProbeSpec("exec", command=tuple(probe.exec.command), **common)
    if handler == "http_get":
        get = probe.http_get
        return ProbeSpec(
            "http",
            port=get.port,
            path=get.path or "/",
            scheme=get.scheme or "HTTP",
            headers=tuple((h.name, h.value) for h in get.headers),
            **common,
        )
    return ProbeSpec("tcp", port=probe.tcp_socket.port, **common)


def _probe_field(spec: agent_pb2.ReplicaSpec, kind: str) -> ProbeSpec | None:
    return probe_from_proto(getattr(spec, kind)) if spec.HasField(kind) else None


def replica_from_proto(spec: agent_pb2.ReplicaSpec, node_id: str) -> ReplicaSpec:
    """The driver-level spec for a validated wire spec (secret references, no values)."""
    return ReplicaSpec(
        replica_id=spec.replica_id,
        namespace=spec.namespace,
        workload=spec.workload,
        node_id=node_id,
        image=spec.image,
        command=tuple(spec.command),
        args=tuple(spec.args),
        working_dir=spec.working_dir,
        env=dict(spec.env),
        ports=tuple(
            PortMapping(p.container_port, p.protocol or "TCP", p.host_port or None)
            for p in spec.ports
        ),
        cpu_millis=spec.cpu_millis,
        memory_bytes=spec.memory_bytes,
        generation=spec.generation,
        spec_hash=spec.spec_hash,
        labels=dict(spec.labels),
        secret_env=tuple(
            SecretEnvVar(
                e.name, SecretKeyRef(e.ref.namespace, e.ref.name, e.ref.key, e.ref.audience)
            )
            for e in spec.secret_env
        ),
        secret_volumes=tuple(
            SecretVolume(
                volume_name=v.volume_name,
                mount_path=v.mount_path,
                namespace=v.namespace,
                name=v.name,
                audience=v.audience,
                files=tuple(SecretFile(f.key, f.path, f.mode) for f in v.files),
                default_mode=v.default_mode,
            )
            for v in spec.secret_volumes
        ),
        epoch=spec.epoch,
        liveness_probe=_probe_field(spec, "liveness_probe"),
        readiness_probe=_probe_field(spec, "readiness_probe"),
        startup_probe=_probe_field(spec, "startup_probe"),
    )


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        node_id: str,
        cluster: str,
        drivers: Mapping[str, RuntimeDriver],
        supervisor: Supervisor | None = None,
        secrets: SecretDelivery | None = None,
        epochs: EpochStore | None = None,
    ) -> None:
        self._node_id = node_id
        self._cluster = cluster
        self._drivers = dict(drivers)
        self._supervisor = supervisor
        self._secrets = secrets
        if epochs is None and supervisor is not None:
            epochs = EpochStore(supervisor.state_dir)
        self._epochs = epochs

    async def _authorize(self, context: Context) -> None:
        ident = peer_identity(context)
        if ident is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "a cluster client certificate is required"
            )
        assert ident is not None
        if ident.cluster != self._cluster or ident.role != "coordinator":
            log.warning("agent.denied", peer=ident.uri(), node=self._node_id)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{ident.uri()} may not command node {self._node_id}; only coordinators of "
                f"cluster {self._cluster!r} may",
            )

    async def _find(self, replica_id: str) -> tuple[str, RuntimeDriver, ReplicaStatus] | None:
        for name, driver in self._drivers.items():
            for status in await driver.list():
                if status.replica_id == replica_id:
                    return name, driver, status
        return None

    async def RunReplica(
        self, request: agent_pb2.RunReplicaRequest, context: Context
    ) -> agent_pb2.RunReplicaResponse:
        await self._authorize(context)
        spec = request.spec
        problems = validate_spec(spec)
        if problems:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        driver = self._drivers.get(spec.runtime)
        if driver is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"runtime {spec.runtime!r} is not available on node {self._node_id} "
                f"(available: {', '.join(sorted(self._drivers)) or 'none'})",
            )
        assert driver is not None
        refusal = self._epochs.accept(spec.replica_id, spec.epoch) if self._epochs else None
        if refusal is not None:
            log.warning(
                "replica.stale_epoch",
                replica=spec.replica_id,
                epoch=spec.epoch,
                newest=refusal.newest,
                stopped=refusal.stopped,
            )
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                refusal.explain(spec.replica_id, spec.epoch, self._node_id),
            )
        replica = await self._resolve(
            replica_from_proto(spec, self._node_id), spec.runtime, context
        )
        try:
            status = await driver.run(replica)
        except RuntimeDriverError as err:
            log.warning("replica.run_failed", replica=spec.replica_id, error=str(err))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
            raise
        log.info(
            "replica.run", replica=spec.replica_id, phase=status.phase.value, runtime=spec.runtime
        )
        if self._supervisor is not None and status.phase == ReplicaPhase.RUNNING:
            self._supervisor.want(spec.runtime, spec.restart_policy, replica, status)
        return agent_pb2.RunReplicaResponse(
            status=status_to_proto(status, spec.runtime, self._node_id, self._supervisor)
        )

    async def _resolve(self, replica: ReplicaSpec, runtime: str, context: Context) -> ReplicaSpec:
        """Fetch the replica's secrets. A failure is FAILED_PRECONDITION with the reason, or
        UNAVAILABLE when the SecretsService could not be reached (the activity retries)."""
        if not replica.uses_secrets:
            return replica
        if self._secrets is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"replica {replica.replica_id} references secrets, but node {self._node_id} "
                "has no secret delivery configured",
            )
        assert self._secrets is not None
        try:
            return await self._secrets.prepare(replica, runtime)
        except SecretDeliveryError as err:
            log.warning("replica.secrets_failed", replica=replica.replica_id, error=str(err))
            code = grpc.StatusCode.FAILED_PRECONDITION
            if err.transient:
                code = grpc.StatusCode.UNAVAILABLE
            await context.abort(code, str(err))
            raise

    async def StopReplica(
        self, request: agent_pb2.StopReplicaRequest, context: Context
    ) -> agent_pb2.StopReplicaResponse:
        await self._authorize(context)
        grace = request.grace_seconds or 10.0
        if self._epochs is not None:
            self._epochs.stop(request.replica_id, request.epoch)  # a late start stays refused
        if self._supervisor is not None:
            self._supervisor.forget(request.replica_id)  # before stopping: no restart race
        for name, driver in self._drivers.items():
            try:
                status = await driver.stop(request.replica_id, grace)
            except RuntimeDriverError as err:
                await context.abort(grpc.StatusCode.INTERNAL, str(err))
                raise
            if status is not None:
                log.info("replica.stopped", replica=request.replica_id, phase=status.phase.value)
                self._release_secrets(request.replica_id)
                return agent_pb2.StopReplicaResponse(
                    found=True, status=status_to_proto(status, name, self._node_id)
                )
        self._release_secrets(request.replica_id)
        return agent_pb2.StopReplicaResponse(found=False)

    def _release_secrets(self, replica_id: str) -> None:
        """The replica is gone: its secret files go with it (also when it was unknown)."""
        if self._secrets is not None:
            self._secrets.release(replica_id)

    async def ListReplicas(
        self, request: agent_pb2.ListReplicasRequest, context: Context
    ) -> agent_pb2.ListReplicasResponse:
        await self._authorize(context)
        out = []
        for name, driver in self._drivers.items():
            for s in await driver.list():
                if request.namespace and s.namespace != request.namespace:
                    continue
                if request.workload and s.workload != request.workload:
                    continue
                out.append(status_to_proto(s, name, self._node_id, self._supervisor))
        return agent_pb2.ListReplicasResponse(replicas=out)

    async def Logs(
        self, request: agent_pb2.LogsRequest, context: Context
    ) -> AsyncIterator[agent_pb2.LogChunk]:
        await self._authorize(context)
        found = await self._find(request.replica_id)
        if found is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"replica {request.replica_id!r} does not run on node {self._node_id}",
            )
        assert found is not None
        _name, driver, _status = found
        async for chunk in driver.logs(
            request.replica_id, follow=request.follow, tail=request.tail or None
        ):
            yield agent_pb2.LogChunk(data=chunk)

    async def NodeInfo(
        self, request: agent_pb2.NodeInfoRequest, context: Context
    ) -> agent_pb2.NodeInfoResponse:
        await self._authorize(context)
        return agent_pb2.NodeInfoResponse(
            node_id=self._node_id, runtimes=sorted(self._drivers), agent_version=AGENT_VERSION
        )
