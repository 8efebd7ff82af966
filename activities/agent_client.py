"""Pooled mTLS channels from the coordinator to node agents."""

from __future__ import annotations

import asyncio

import grpc

from cloudless.api import agent_pb2_grpc
from cloudless.tls import TLSMaterial, secure_channel


class AgentClientPool:
    """One channel per (node, address); a node that re-enrolls elsewhere gets a new one."""

    def __init__(self, material: TLSMaterial) -> None:
        self._material = material
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._lock = asyncio.Lock()

    async def stub(self, node_id: str, address: str) -> agent_pb2_grpc.AgentServiceStub:
        key = (node_id, address)
        async with self._lock:
            channel = self._channels.get(key)
            if channel is None:
                stale = [k for k in self._channels if k[0] == node_id]
                for k in stale:
                    await self._channels.pop(k).close(None)
                channel = secure_channel(address, node_id, self._material.ca_pem, self._material)
                self._channels[key] = channel
        return agent_pb2_grpc.AgentServiceStub(channel)

    async def close(self) -> None:
        async with self._lock:
            for channel in self._channels.values():
                await channel.close(None)
            self._channels.clear()
