"""Activities that command node agents over gRPC with mutual TLS."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.agent_client import AgentClientPool
from cloudless.api import agent_pb2
from cloudless.model import (
    NodeRecord,
    ReplicaPhase,
    RunReplicaInput,
    RunReplicaResult,
    StopReplicaInput,
    StopReplicaResult,
)
from cloudless.workloads import replica_spec_proto

#: Status codes that will not change on retry: give up at once, with the agent's reason.
_PERMANENT = {
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidSpec",
    grpc.StatusCode.FAILED_PRECONDITION: "ReplicaStartFailed",
    grpc.StatusCode.PERMISSION_DENIED: "AgentAuthFailed",
    grpc.StatusCode.UNAUTHENTICATED: "AgentAuthFailed",
}


def translate_rpc_error(err: grpc.aio.AioRpcError, node_id: str) -> Exception:
    kind = _PERMANENT.get(err.code())
    message = f"agent {node_id}: {err.details() or err.code().name}"
    if kind is not None:
        return ApplicationError(message, type=kind, non_retryable=True)
    return ApplicationError(message, type="AgentUnavailable")


class AgentActivities:
    def __init__(self, pool: AgentClientPool, rpc_timeout: float = 90.0) -> None:
        self._pool = pool
        self._timeout = rpc_timeout

    @activity.defn(name="run_replica")
    async def run_replica(self, inp: RunReplicaInput) -> RunReplicaResult:
        spec = replica_spec_proto(
            inp.manifest,
            replica_id=inp.replica_id,
            generation=inp.generation,
            spec_hash=inp.spec_hash,
        )
        stub = await self._pool.stub(inp.node_id, inp.address)
        try:
            response = await stub.RunReplica(
                agent_pb2.RunReplicaRequest(spec=spec), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as err:
            raise translate_rpc_error(err, inp.node_id) from err
        status = response.status
        return RunReplicaResult(
            phase=ReplicaPhase(status.phase),
            runtime_id=status.runtime_id,
            message=status.message,
            started_at=datetime.fromtimestamp(status.started_at, UTC)
            if status.started_at
            else None,
        )

    @activity.defn(name="probe_agent")
    async def probe_agent(self, record: NodeRecord) -> list[str]:
        """Dial the agent over mTLS as its node identity; returns the runtimes it serves.

        Proves the whole trust path (our client cert accepted, its server cert naming the
        node) before the node is declared Ready.
        """
        stub = await self._pool.stub(record.node_id, record.address)
        try:
            info = await stub.NodeInfo(agent_pb2.NodeInfoRequest(), timeout=5)
        except grpc.aio.AioRpcError as err:
            raise translate_rpc_error(err, record.node_id) from err
        if info.node_id != record.node_id:
            raise ApplicationError(
                f"agent at {record.address} answers as {info.node_id!r}, not {record.node_id!r}",
                type="AgentIdentityMismatch",
                non_retryable=True,
            )
        return sorted(info.runtimes)

    @activity.defn(name="stop_replica")
    async def stop_replica(self, inp: StopReplicaInput) -> StopReplicaResult:
        stub = await self._pool.stub(inp.node_id, inp.address)
        try:
            response = await stub.StopReplica(
                agent_pb2.StopReplicaRequest(
                    replica_id=inp.replica_id, grace_seconds=inp.grace_seconds
                ),
                timeout=inp.grace_seconds + 30,
            )
        except grpc.aio.AioRpcError as err:
            raise translate_rpc_error(err, inp.node_id) from err
        return StopReplicaResult(found=response.found)
