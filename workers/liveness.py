"""The gateway's liveness monitor: heartbeat streams in, node state changes out.

Soft state only: the table lives in memory and is rebuilt after a restart from the
ledger (healthy nodes get one TTL to reconnect) and from the agents' new streams. Only
transitions are written to Temporal, as signals to ``node/<id>``, each node's in order, by
publisher tasks (sharded by node) so a slow Temporal call never stalls a heartbeat stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from cloudless.api import agent_pb2, gateway_pb2
from cloudless.contracts import LedgerHandle, NodeHandle, Signal, signal_unless_gone, workload
from cloudless.contracts import node as node_contract
from cloudless.model import (
    EnrollSignal,
    LivenessSignal,
    NodeRecord,
    NodeState,
    ReplicaCrashed,
    ReplicaExited,
    ReplicaReadiness,
)
from cloudless.vocabulary import ReplicaPhase
from policies.liveness import Health, LivenessTable, Transition

log = structlog.get_logger("cloudless.liveness")

SWEEP_INTERVAL = 0.1
#: Node state changes published concurrently, each node's in order (sharded by node id):
#: a mass reconnect of thousands of nodes must not queue behind one signal at a time.
PUBLISHERS = 16
#: A changed not-ready reason (same readiness) is signalled at most this often per replica.
READINESS_MESSAGE_INTERVAL = 10.0
#: Phases of a replica not started yet (as its agent reports them): no readiness to tell.
_NOT_YET_STARTED = frozenset({ReplicaPhase.PENDING.value, ReplicaPhase.STARTING.value})

I = TypeVar("I")  # noqa: E741  (a signal's input type)
#: A replica event for a workload: (its workflow id, the signal, its input).
ReplicaEvent = tuple[str, Signal[Any], ReplicaExited | ReplicaCrashed | ReplicaReadiness]


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
        #: node -> epoch of the newest stream this gateway saw (0: none, or an old agent).
        self._epochs: dict[str, int] = {}
        self._tokens = itertools.count(1)
        self._outboxes: list[asyncio.Queue[Transition | NodeRecord]] = [
            asyncio.Queue() for _ in range(PUBLISHERS)
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self.reports: dict[str, gateway_pb2.HeartbeatRequest] = {}
        self.beats = 0
        #: Per-workload replica events (exits, readiness), delivered in order by one task.
        self._exits: asyncio.Queue[ReplicaEvent] = asyncio.Queue()
        self._reported: set[tuple[str, str]] = set()
        #: node -> replica -> (ready, message, when it was signalled): the last readiness
        #: each workload was told, so only changes are signalled. Rebuilt from each beat,
        #: so replicas a node no longer reports drop out.
        self._readiness: dict[str, dict[str, tuple[bool, str, float]]] = {}
        #: node -> replica -> the agent's crash count last signalled, so each crash is
        #: signalled once (rebuilt from each beat, like ``_readiness``). A gateway that
        #: (re)starts signals the counts it first sees; the workload ignores known ones.
        self._crashes: dict[str, dict[str, int]] = {}

    async def start(self) -> None:
        """Adopt the nodes the ledger lists as healthy, then start sweeping and publishing."""
        with contextlib.suppress(RPCError):
            snap = await LedgerHandle(self._client, self._cluster).snapshot()
            known = {
                n.node_id: _HEALTH_OF.get(n.state, Health.READY)
                for n in snap.nodes
                if n.state != NodeState.JOINING  # still enrolling: the probe decides
            }
            self.table.adopt(known, time.monotonic())
            log.info("liveness.adopted", nodes=len(known))
        self._tasks = [
            asyncio.create_task(self._sweep(), name="liveness-sweep"),
            *(
                asyncio.create_task(self._publish(q), name=f"liveness-publish-{i}")
                for i, q in enumerate(self._outboxes)
            ),
            asyncio.create_task(self._publish_exits(), name="replica-exits"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- stream events (called by the gateway's Heartbeat handler)

    def connected(self, node_id: str, epoch: int = 0, moved: bool = False) -> int:
        """A new stream. ``moved``: the agent came from another gateway (or just started),
        so this gateway claims the node with a Ready even if its table saw no change
        (say, a node it adopted as healthy after a restart). Without the claim, the
        gateway the node left could still mark it Offline."""
        token = next(self._tokens)
        self._streams[node_id] = token
        self._epochs[node_id] = epoch
        now = time.monotonic()
        t = self.table.connected(node_id, now)
        if t is None and moved:
            t = Transition(node_id, Health.READY, "heartbeat stream moved to this gateway", now)
        self._emit(t)
        return token

    def facts(self, record: NodeRecord) -> None:
        """What a (re)connecting agent offers now; queued ahead of its health change."""
        self._outbox(record.node_id).put_nowait(record)

    def beat(self, node_id: str, report: gateway_pb2.HeartbeatRequest) -> None:
        self.beats += 1
        self.reports[node_id] = report
        now = time.monotonic()
        transition = self.table.beat(node_id, now)
        if transition is not None:
            self._emit(transition)
        if not report.replicas and node_id not in self._readiness:
            self._crashes.pop(node_id, None)
            return  # the hot path of an idle node: nothing to compare
        before = self._readiness.get(node_id, {})
        after: dict[str, tuple[bool, str, float]] = {}
        crashes_before = self._crashes.get(node_id, {})
        crashes_after: dict[str, int] = {}
        for r in report.replicas:
            if r.crashes and not r.terminal:  # a final crash is signalled as the exit
                crashes_after[r.replica_id] = r.crashes
                if crashes_before.get(r.replica_id) != r.crashes:
                    self._exits.put_nowait(
                        (
                            workload.workflow_id(r.namespace, r.workload),
                            workload.REPLICA_CRASHED,
                            ReplicaCrashed(
                                replica_id=r.replica_id,
                                node_id=node_id,
                                crashes=r.crashes,
                                exit_code=r.crash_exit_code if r.has_crash_exit_code else None,
                                reason=r.crash_reason[-300:],
                            ),
                        )
                    )
            if r.terminal and (node_id, r.replica_id) not in self._reported:
                self._reported.add((node_id, r.replica_id))
                self._exits.put_nowait(
                    (
                        workload.workflow_id(r.namespace, r.workload),
                        workload.REPLICA_EXITED,
                        ReplicaExited(
                            replica_id=r.replica_id,
                            node_id=node_id,
                            phase=r.phase,
                            exit_code=r.exit_code if r.has_exit_code else None,
                            message=r.message[-500:],
                        ),
                    )
                )
            if r.terminal or (not r.ready and not r.ready_message):
                continue  # exits are signalled above; an agent too old to report readiness
            last = before.get(r.replica_id)
            if last is None and r.phase in _NOT_YET_STARTED:
                # Readiness is a Running replica's: a first report from before it ran says
                # nothing the workload does not know, and could arrive after the start
                # activity made it Running and mark it not ready. A replica seen before
                # (so restarting in place) is reported: it stopped being ready.
                continue
            after[r.replica_id] = self._readiness_change(node_id, r, last, now)
        if after:
            self._readiness[node_id] = after
        else:
            self._readiness.pop(node_id, None)
        if crashes_after:
            self._crashes[node_id] = crashes_after
        else:
            self._crashes.pop(node_id, None)

    def _readiness_change(
        self,
        node_id: str,
        r: agent_pb2.ReplicaStatus,
        last: tuple[bool, str, float] | None,
        now: float,
    ) -> tuple[bool, str, float]:
        """Signal a replica's readiness when it changed; returns what the workload knows.

        A replica without readiness gating is assumed ready while Running, so a healthy
        cluster signals nothing. A new reason for being not ready is signalled at most
        every ``READINESS_MESSAGE_INTERVAL``, so a probe whose output keeps changing cannot
        flood the workload's history; a flip of ``ready`` is signalled at once.
        """
        message = r.ready_message[-300:]
        if last is None and not r.readiness_gated:
            last = (True, "", -READINESS_MESSAGE_INTERVAL)
        if last is not None:
            ready, known, sent = last
            if ready == r.ready and (known == message or now - sent < READINESS_MESSAGE_INTERVAL):
                return last
        self._exits.put_nowait(
            (
                workload.workflow_id(r.namespace, r.workload),
                workload.REPLICA_READINESS,
                ReplicaReadiness(
                    replica_id=r.replica_id, node_id=node_id, ready=r.ready, message=message
                ),
            )
        )
        return (r.ready, message, now)

    def disconnected(self, node_id: str, token: int) -> None:
        if self._streams.get(node_id) != token:
            return  # an older stream of a node that already reconnected
        del self._streams[node_id]
        last = self.reports.get(node_id)
        graceful = bool(last and last.closing)
        self._emit(self.table.disconnected(node_id, time.monotonic(), graceful=graceful))

    # ---- background tasks

    def _emit(self, transition: Transition | None) -> None:
        """Queue a transition, stamped with the epoch of the stream it is about."""
        if transition is not None:
            epoch = self._epochs.get(transition.node_id, 0)
            self._outbox(transition.node_id).put_nowait(replace(transition, epoch=epoch))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            for transition in self.table.expire(time.monotonic()):
                self._emit(transition)

    async def _publish_exits(self) -> None:
        while True:
            workflow_id, signal, event = await self._exits.get()
            if isinstance(event, ReplicaExited):
                log.info("replica.exited", replica=event.replica_id, phase=event.phase)
            elif isinstance(event, ReplicaCrashed):
                log.info("replica.crashed", replica=event.replica_id, crashes=event.crashes)
            else:
                log.info("replica.readiness", replica=event.replica_id, ready=event.ready)
            handle = workload.WORKFLOW.handle(self._client, workflow_id)
            await _deliver(handle, signal, event, workflow_id)

    def _outbox(self, node_id: str) -> asyncio.Queue[Transition | NodeRecord]:
        """The queue of the publisher that owns ``node_id`` (so its changes stay ordered)."""
        return self._outboxes[hash(node_id) % len(self._outboxes)]

    @property
    def backlog(self) -> int:
        """State changes not yet written to Temporal."""
        return sum(q.qsize() for q in self._outboxes)

    async def _publish(self, queue: asyncio.Queue[Transition | NodeRecord]) -> None:
        while True:
            t = await queue.get()
            if isinstance(t, NodeRecord):
                handle = NodeHandle(self._client, t.node_id).handle
                await _deliver(handle, node_contract.FACTS, EnrollSignal(record=t), t.node_id)
                continue
            log.info("node.health", node=t.node_id, health=t.health.value, reason=t.reason)
            signal = LivenessSignal(
                health=t.health,
                reason=t.reason,
                at=datetime.now(UTC),
                gateway=self.gateway_id,
                graceful=t.graceful,
                epoch=t.epoch,
            )
            handle = NodeHandle(self._client, t.node_id).handle
            # Retried until delivered: a dropped transition would leave the state wrong.
            # A node never registered (a stray certificate) has no workflow to update.
            await _deliver(handle, node_contract.LIVENESS, signal, t.node_id)


async def _deliver(handle: WorkflowHandle[Any, Any], signal: Signal[I], arg: I, what: str) -> None:
    """Deliver a signal, retrying transient faults; a missing workflow is not an error."""

    def failed(err: RPCError) -> None:
        log.warning("signal.failed", target=what, error=str(err))

    if not await signal_unless_gone(
        handle, signal, arg, attempts=None, delay=0.2, max_delay=5.0, on_retry=failed
    ):
        log.warning("signal.no_workflow", target=what)


_HEALTH_OF = {
    NodeState.SUSPECT: Health.SUSPECT,
    NodeState.OFFLINE: Health.OFFLINE,
    NodeState.LEFT: Health.OFFLINE,
    NodeState.REMOVED: Health.OFFLINE,
}

__all__ = ["Health", "LivenessMonitor"]
