"""Activities that command node agents over gRPC with mutual TLS."""

from __future__ import annotations

import asyncio
import time
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
    RunReplicaOutcome,
    RunReplicaResult,
    RunReplicasInput,
    RunReplicasResult,
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


#: RPCs one ``run_replicas`` batch has in flight at once, and tries per replica (5
#: attempts, backoff 0.2 s doubling to 5 s).
BATCH_CONCURRENCY = 64
BATCH_ATTEMPTS = 5
#: Seconds between progress heartbeats of a batch (its heartbeat timeout is far longer).
HEARTBEAT_EVERY = 0.5


class AgentActivities:
    def __init__(self, pool: AgentClientPool, rpc_timeout: float = 90.0) -> None:
        self._pool = pool
        self._timeout = rpc_timeout

    @activity.defn(name="run_replicas")
    async def run_replicas(self, batch: RunReplicasInput) -> RunReplicasResult:
        """Start a workload's placed replicas in one activity, each with its own retries.

        Why: one activity per replica cost the workflow three history events, a workflow
        task and an activity task per replica; for a 100-replica workload that work
        competed with later placements for the coordinator's CPU. Here the wire spec is
        built once, RPCs run concurrently (bounded), transient failures are retried per
        replica with backoff, and a replica that cannot start is reported in its outcome
        instead of failing the batch. Progress is heartbeated.
        """
        base = replica_spec_proto(batch.manifest, replica_id="", generation=0, spec_hash="")
        gate = asyncio.Semaphore(BATCH_CONCURRENCY)
        done = 0
        beat_at = 0.0

        async def one(inp: RunReplicaInput) -> RunReplicaOutcome:
            nonlocal done, beat_at
            spec = agent_pb2.ReplicaSpec()
            spec.CopyFrom(base)
            spec.replica_id, spec.generation = inp.replica_id, inp.generation
            spec.spec_hash, spec.epoch = inp.spec_hash, inp.epoch
            delay = 0.2
            async with gate:
                for attempt in range(BATCH_ATTEMPTS):
                    try:
                        result = await self._run(inp.node_id, inp.address, spec)
                        break
                    except ApplicationError as err:
                        if err.non_retryable or attempt == BATCH_ATTEMPTS - 1:
                            return RunReplicaOutcome(
                                replica_id=inp.replica_id,
                                error=err.message,
                                error_type=err.type or "",
                            )
                    await asyncio.sleep(delay)
                    delay = min(5.0, delay * 2)
            done += 1
            now = time.monotonic()
            if now >= beat_at or done == len(batch.replicas):
                # Throttled here, not only in the SDK: each call costs a task and a
                # payload encode, and a large batch finishes hundreds of starts a second.
                beat_at = now + HEARTBEAT_EVERY
                activity.heartbeat(done)
            return RunReplicaOutcome(replica_id=inp.replica_id, result=result)

        outcomes = await asyncio.gather(*(one(r) for r in batch.replicas))
        return RunReplicasResult(outcomes=list(outcomes))

    async def _run(
        self, node_id: str, address: str, spec: agent_pb2.ReplicaSpec
    ) -> RunReplicaResult:
        stub = await self._pool.stub(node_id, address)
        try:
            response = await stub.RunReplica(
                agent_pb2.RunReplicaRequest(spec=spec), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as err:
            raise translate_rpc_error(err, node_id) from err
        status = response.status
        return RunReplicaResult(
            phase=ReplicaPhase(status.phase),
            runtime_id=status.runtime_id,
            message=status.message,
            started_at=datetime.fromtimestamp(status.started_at, UTC)
            if status.started_at
            else None,
            exit_code=status.exit_code if status.has_exit_code else None,
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
                    replica_id=inp.replica_id, grace_seconds=inp.grace_seconds, epoch=inp.epoch
                ),
                timeout=inp.grace_seconds + 30,
            )
        except grpc.aio.AioRpcError as err:
            raise translate_rpc_error(err, inp.node_id) from err
        return StopReplicaResult(found=response.found)
