"""The gateway's liveness monitor: heartbeat streams in, node state changes out.

Soft state only: the table lives in memory and is rebuilt after a restart from the
ledger (healthy nodes get one TTL to reconnect) and from the agents' new streams. Only
transitions are written to Temporal, as signals to ``node/<id>``, in order, by a single
publisher task so a slow Temporal call never stalls a heartbeat stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from cloudless.api import gateway_pb2
from cloudless.liveness import Health, LivenessTable, Transition
from cloudless.model import (
    ClusterSnapshot,
    EnrollSignal,
    LivenessSignal,
    NodeRecord,
    NodeState,
    ReplicaExited,
)
from cloudless.naming import cluster_workflow_id, node_workflow_id, workload_workflow_id

log = structlog.get_logger("cloudless.liveness")

SWEEP_INTERVAL = 0.1


class LivenessMonitor:
    def __init__(
        self,
        client: Client,
        cluster: str,
        gateway_id: str,
        *,
        ttl: float = 10.0,
        suspect_grace: float = 1.0,
        jitter: float = 0.2,
        interval: float = 1.0,
    ) -> None:
        self._client = client
        self._cluster = cluster
        self.gateway_id = gateway_id
        self.interval = interval
        self.table = LivenessTable(ttl=ttl, suspect_grace=suspect_grace, jitter=jitter)
        self._streams: dict[str, int] = {}
        self._tokens = itertools.count(1)
        self._outbox: asyncio.Queue[Transition | NodeRecord] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.reports: dict[str, gateway_pb2.HeartbeatRequest] = {}
        self.beats = 0
        self._exits: asyncio.Queue[tuple[str, ReplicaExited]] = asyncio.Queue()
        self._reported: set[tuple[str, str]] = set()

    async def start(self) -> None:
        """Adopt the nodes the ledger lists as healthy, then start sweeping and publishing."""
        handle = self._client.get_workflow_handle(cluster_workflow_id(self._cluster))
        with contextlib.suppress(RPCError):
            snap: ClusterSnapshot = await handle.query("snapshot", result_type=ClusterSnapshot)
            known = {
                n.node_id: _HEALTH_OF.get(n.state, Health.READY)
                for n in snap.nodes
                if n.state != NodeState.JOINING  # still enrolling: the probe decides
            }
            self.table.adopt(known, time.monotonic())
            log.info("liveness.adopted", nodes=len(known))
        self._tasks = [
            asyncio.create_task(self._sweep(), name="liveness-sweep"),
            asyncio.create_task(self._publish(), name="liveness-publish"),
            asyncio.create_task(self._publish_exits(), name="replica-exits"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- stream events (called by the gateway's Heartbeat handler)

    def connected(self, node_id: str) -> int:
        token = next(self._tokens)
        self._streams[node_id] = token
        self._emit(self.table.connected(node_id, time.monotonic()))
        return token

    def facts(self, record: NodeRecord) -> None:
        """What a (re)connecting agent offers now; queued ahead of its health change."""
        self._outbox.put_nowait(record)

    def beat(self, node_id: str, report: gateway_pb2.HeartbeatRequest) -> None:
        self.beats += 1
        self.reports[node_id] = report
        self._emit(self.table.beat(node_id, time.monotonic()))
        for r in report.replicas:
            if r.terminal and (node_id, r.replica_id) not in self._reported:
                self._reported.add((node_id, r.replica_id))
                self._exits.put_nowait(
                    (
                        workload_workflow_id(r.namespace, r.workload),
                        ReplicaExited(
                            replica_id=r.replica_id,
                            node_id=node_id,
                            phase=r.phase,
                            exit_code=r.exit_code if r.has_exit_code else None,
                            message=r.message[-500:],
                        ),
                    )
                )

    def disconnected(self, node_id: str, token: int) -> None:
        if self._streams.get(node_id) != token:
            return  # an older stream of a node that already reconnected
        del self._streams[node_id]
        last = self.reports.get(node_id)
        graceful = bool(last and last.closing)
        self._emit(self.table.disconnected(node_id, time.monotonic(), graceful=graceful))

    # ---- background tasks

    def _emit(self, transition: Transition | None) -> None:
        if transition is not None:
            self._outbox.put_nowait(transition)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            for transition in self.table.expire(time.monotonic()):
                self._outbox.put_nowait(transition)

    async def _publish_exits(self) -> None:
        while True:
            workflow_id, exited = await self._exits.get()
            log.info("replica.exited", replica=exited.replica_id, phase=exited.phase)
            handle = self._client.get_workflow_handle(workflow_id)
            await _signal_once(handle, "replica_exited", exited, workflow_id)

    async def _publish(self) -> None:
        while True:
            t = await self._outbox.get()
            if isinstance(t, NodeRecord):
                handle = self._client.get_workflow_handle(node_workflow_id(t.node_id))
                await _signal_once(handle, "facts", EnrollSignal(record=t), t.node_id)
                continue
            log.info("node.health", node=t.node_id, health=t.health.value, reason=t.reason)
            signal = LivenessSignal(
                health=t.health.value,
                reason=t.reason,
                at=datetime.now(UTC),
                gateway=self.gateway_id,
            )
            handle = self._client.get_workflow_handle(node_workflow_id(t.node_id))
            # Retried until delivered: a dropped transition would leave the state wrong.
            # A node never registered (a stray certificate) has no workflow to update.
            await _signal_once(handle, "liveness", signal, t.node_id)


async def _signal_once(handle: Any, name: str, arg: Any, what: str) -> None:
    """Deliver a signal, retrying transient faults; a missing workflow is not an error."""
    attempt = 0
    while True:
        try:
            await handle.signal(name, arg)
            return
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                log.warning("signal.no_workflow", target=what)
                return
            log.warning("signal.failed", target=what, error=str(err))
            await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
            attempt += 1


_HEALTH_OF = {
    NodeState.SUSPECT: Health.SUSPECT,
    NodeState.OFFLINE: Health.OFFLINE,
    NodeState.LEFT: Health.OFFLINE,
}

__all__ = ["Health", "LivenessMonitor"]
