"""The agent's side of liveness: one long-lived, mTLS-authenticated heartbeat stream.

Each beat carries resource usage and the state of every replica, so the control plane's
soft state can be rebuilt from agents alone. The stream reconnects with jittered
exponential backoff, so a fleet that lost its coordinator does not reconnect in lockstep.
Given several gateways (one per coordinator), a broken stream fails over to the next one.
Every stream carries an epoch that only grows, so the control plane can tell the node's
current stream from older ones that other gateways may still report on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence

import grpc
import psutil
import structlog

from agent.enroll import GATEWAY_SERVER_NAME, split_addresses
from agent.runtime.base import RuntimeDriver
from agent.secrets import SecretDelivery
from agent.server import AGENT_VERSION, status_to_proto
from agent.supervisor import Supervisor
from cloudless.api import gateway_pb2, gateway_pb2_grpc
from cloudless.tls import TLSMaterial, secure_channel

log = structlog.get_logger("cloudless.agent.heartbeat")

MIN_BACKOFF = 0.1
MAX_BACKOFF = 5.0


class HeartbeatClient:
    def __init__(
        self,
        gateway: str | Sequence[str],
        material: TLSMaterial,
        node_id: str,
        drivers: Mapping[str, RuntimeDriver],
        *,
        interval: float = 1.0,
        supervisor: Supervisor | None = None,
        facts: gateway_pb2.NodeFacts | None = None,
        secrets: SecretDelivery | None = None,
    ) -> None:
        self._gateways = split_addresses(gateway)
        if not self._gateways:
            raise ValueError("at least one gateway address is required")
        self._current = 0
        #: The gateway of the last stream that was answered (None: none yet this process).
        self._last: str | None = None
        self._epoch = 0
        self._material = material
        self._node_id = node_id
        self._drivers = drivers
        self._supervisor = supervisor
        self._facts = facts
        self._secrets = secrets
        self._refreshes: set[asyncio.Task[None]] = set()
        self.interval = interval
        self.acked = 0
        self.connected = asyncio.Event()
        self._closing = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        #: Set to send the next beat now (a crash to report), or when stopping.
        self._wake = asyncio.Event()

    @property
    def gateway(self) -> str:
        """The gateway the agent streams to (or tries next)."""
        return self._gateways[self._current]

    def connected_gateway(self) -> str | None:
        """The gateway whose stream is answering now; None between streams."""
        return self.gateway if self.connected.is_set() else None

    def _next_epoch(self) -> int:
        """Microseconds of wall clock, strictly growing within this process; across
        restarts it grows as long as the clock does not jump back."""
        self._epoch = max(self._epoch + 1, time.time_ns() // 1000)
        return self._epoch

    def pause(self) -> None:
        """Stop sending beats but keep the stream open: what a silent partition looks like
        from the gateway (used by tests and benchmarks)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def wake(self) -> None:
        """Send the next beat at once instead of after the interval: something the control
        plane should hear about promptly happened (a replica crashed)."""
        self._wake.set()

    def _invalidate(self, secrets: list[str]) -> None:
        """Drop updated secrets and refresh their files, off the heartbeat path: a slow
        fetch must never delay a beat."""
        if self._secrets is None or not secrets:
            return
        task = asyncio.create_task(self._secrets.invalidate(secrets), name="secret-refresh")
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    async def _report(self, seq: int) -> gateway_pb2.HeartbeatRequest:
        replicas = []
        if self._supervisor is not None:
            # Reuse the supervisor's listing when it is fresher than one beat.
            observed = await self._supervisor.observe(max_age=self.interval)
        else:
            observed = [(n, s) for n, d in self._drivers.items() for s in await d.list()]
        for name, status in observed:
            replicas.append(status_to_proto(status, name, self._node_id, self._supervisor))
        mem = psutil.virtual_memory()
        return gateway_pb2.HeartbeatRequest(
            seq=seq,
            usage=gateway_pb2.Usage(
                cpu_fraction=psutil.cpu_percent(interval=None) / 100.0,
                memory_used_bytes=mem.total - mem.available,
            ),
            replicas=replicas,
            agent_version=AGENT_VERSION,
            closing=self._closing,
        )

    async def _beats(
        self, stop: asyncio.Event, epoch: int = 0, moved: bool = False
    ) -> AsyncIterator[gateway_pb2.HeartbeatRequest]:
        seq = 0
        while True:
            await self._flowing.wait()
            seq += 1
            self._closing = stop.is_set()
            report = await self._report(seq)
            if seq == 1:
                report.stream_epoch, report.moved = epoch, moved
                if self._facts is not None:
                    report.facts.CopyFrom(self._facts)  # every new stream says what we offer
            yield report
            if self._closing:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            self._wake.clear()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a stream open until ``stop`` is set; then close it gracefully."""
        stopping = asyncio.create_task(self._wake_on(stop), name="heartbeat-stop")
        try:
            await self._run(stop)
        finally:
            stopping.cancel()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        """A stop wakes the beat loop at once, so the closing beat goes out without delay."""
        await stop.wait()
        self._wake.set()

    async def _run(self, stop: asyncio.Event) -> None:
        backoff = MIN_BACKOFF
        while not stop.is_set():
            gateway = self.gateway
            beats = self._beats(stop, self._next_epoch(), moved=gateway != self._last)
            try:
                async with secure_channel(
                    gateway, GATEWAY_SERVER_NAME, self._material.ca_pem, self._material
                ) as channel:
                    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
                    async for response in stub.Heartbeat(beats):
                        if not self.connected.is_set():
                            log.info("heartbeat.connected", gateway=gateway)
                            self._last = gateway
                            self.connected.set()
                            if self._secrets is not None:
                                # Invalidations sent while we were away are lost.
                                self._secrets.store.forget_all()
                        backoff = MIN_BACKOFF
                        self.acked = response.seq
                        if response.interval_seconds > 0:
                            self.interval = response.interval_seconds
                        self._invalidate(list(response.invalidated_secrets))
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.PERMISSION_DENIED:
                    log.error("heartbeat.denied", reason=err.details())
                else:
                    log.info("heartbeat.disconnected", reason=err.code().name)
            self.connected.clear()
            if stop.is_set():
                break
            if len(self._gateways) > 1:  # fail over: the next gateway, after the backoff
                self._current = (self._current + 1) % len(self._gateways)
                log.info("heartbeat.failover", gateway=self.gateway)
            delay = random.uniform(backoff / 2, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            backoff = min(MAX_BACKOFF, backoff * 2)
        for refresh in self._refreshes:
            refresh.cancel()  # the agent is stopping; the next start fetches anyway
