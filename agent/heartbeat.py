"""The agent's side of liveness: one long-lived, mTLS-authenticated heartbeat stream.

Each beat carries resource usage and the state of every replica, so the control plane's
soft state can be rebuilt from agents alone. The stream reconnects with jittered
exponential backoff, so a fleet that lost its coordinator does not reconnect in lockstep.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Mapping

import grpc
import psutil
import structlog

from agent.enroll import GATEWAY_SERVER_NAME
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
        gateway: str,
        material: TLSMaterial,
        node_id: str,
        drivers: Mapping[str, RuntimeDriver],
        *,
        interval: float = 1.0,
        supervisor: Supervisor | None = None,
        facts: gateway_pb2.NodeFacts | None = None,
        secrets: SecretDelivery | None = None,
    ) -> None:
        self._gateway = gateway
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

    def pause(self) -> None:
        """Stop sending beats but keep the stream open: what a silent partition looks like
        from the gateway (used by tests and benchmarks)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

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

    async def _beats(self, stop: asyncio.Event) -> AsyncIterator[gateway_pb2.HeartbeatRequest]:
        seq = 0
        while True:
            await self._flowing.wait()
            seq += 1
            self._closing = stop.is_set()
            report = await self._report(seq)
            if seq == 1 and self._facts is not None:
                report.facts.CopyFrom(self._facts)  # every new stream says what we offer
            yield report
            if self._closing:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a stream open until ``stop`` is set; then close it gracefully."""
        backoff = MIN_BACKOFF
        while not stop.is_set():
            try:
                async with secure_channel(
                    self._gateway, GATEWAY_SERVER_NAME, self._material.ca_pem, self._material
                ) as channel:
                    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
                    async for response in stub.Heartbeat(self._beats(stop)):
                        if not self.connected.is_set():
                            log.info("heartbeat.connected", gateway=self._gateway)
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
            delay = random.uniform(backoff / 2, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            backoff = min(MAX_BACKOFF, backoff * 2)
        for refresh in self._refreshes:
            refresh.cancel()  # the agent is stopping; the next start fetches anyway
