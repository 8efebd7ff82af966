"""AgentService: the node agent's gRPC API, served over mutual TLS.

The TLS layer already refuses clients without a cluster-CA certificate; every handler
additionally requires the peer's identity to be a coordinator of this cluster, so one
compromised node cannot command another.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping

import grpc
import structlog

from agent.runtime.base import PortMapping, ReplicaPhase, ReplicaSpec, ReplicaStatus, RuntimeDriver
from agent.supervisor import Supervisor
from cloudless.api import agent_pb2, agent_pb2_grpc
from cloudless.errors import RuntimeDriverError
from cloudless.tls import peer_identity

log = structlog.get_logger("cloudless.agent")

_REPLICA_ID = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,200}[a-z0-9])?$")
MAX_CPU_MILLIS = 1024 * 1000
MAX_MEMORY_BYTES = 16 * 2**40
AGENT_VERSION = "0.1.0"

Context = grpc.aio.ServicerContext[object, object]


def status_to_proto(s: ReplicaStatus, runtime: str, node_id: str) -> agent_pb2.ReplicaStatus:
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
    if not _REPLICA_ID.match(spec.replica_id):
        problems.append(f"replica_id {spec.replica_id!r} must be lowercase [a-z0-9.-]")
    if not spec.namespace or not spec.workload:
        problems.append("namespace and workload are required")
    if not 0 <= spec.cpu_millis <= MAX_CPU_MILLIS:
        problems.append(f"cpu_millis {spec.cpu_millis} out of range 0..{MAX_CPU_MILLIS}")
    if not 0 <= spec.memory_bytes <= MAX_MEMORY_BYTES:
        problems.append(f"memory_bytes {spec.memory_bytes} out of range")
    for p in spec.ports:
        if not 1 <= p.container_port <= 65535 or p.host_port > 65535:
            problems.append(f"port {p.container_port}->{p.host_port} out of range 1..65535")
        if p.protocol not in ("TCP", "UDP"):
            problems.append(f"port protocol {p.protocol!r} must be TCP or UDP")
    if spec.runtime == "docker" and not spec.image:
        problems.append("image is required for the docker runtime")
    return problems


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        node_id: str,
        cluster: str,
        drivers: Mapping[str, RuntimeDriver],
        supervisor: Supervisor | None = None,
    ) -> None:
        self._node_id = node_id
        self._cluster = cluster
        self._drivers = dict(drivers)
        self._supervisor = supervisor

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
        replica = ReplicaSpec(
            replica_id=spec.replica_id,
            namespace=spec.namespace,
            workload=spec.workload,
            node_id=self._node_id,
            image=spec.image,
            command=tuple(spec.command),
            args=tuple(spec.args),
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
            self._supervisor.want(spec.runtime, spec.restart_policy, replica)
        return agent_pb2.RunReplicaResponse(
            status=status_to_proto(status, spec.runtime, self._node_id)
        )

    async def StopReplica(
        self, request: agent_pb2.StopReplicaRequest, context: Context
    ) -> agent_pb2.StopReplicaResponse:
        await self._authorize(context)
        grace = request.grace_seconds or 10.0
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
                return agent_pb2.StopReplicaResponse(
                    found=True, status=status_to_proto(status, name, self._node_id)
                )
        return agent_pb2.StopReplicaResponse(found=False)

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
                out.append(status_to_proto(s, name, self._node_id))
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
