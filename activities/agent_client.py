"""Pooled mTLS channels from the coordinator to node agents."""

from __future__ import annotations

import grpc

from cloudless.api import agent_pb2_grpc
from cloudless.tls import TLSMaterial, secure_channel


class AgentClientPool:
    """One channel (and stub) per node at its current address; a node that re-enrolls
    elsewhere gets a new one and its old channel is closed.

    Looked up for every agent RPC (10,000 in a 10,000-replica burst), so the hit path is
    one dict lookup: no lock (the event loop is single-threaded and nothing here awaits
    before the maps are updated) and no stub construction, which builds a callable per
    RPC method."""

    def __init__(self, material: TLSMaterial) -> None:
        self._material = material
        self._stubs: dict[str, tuple[str, grpc.aio.Channel, agent_pb2_grpc.AgentServiceStub]] = {}

    async def stub(self, node_id: str, address: str) -> agent_pb2_grpc.AgentServiceStub:
        entry = self._stubs.get(node_id)
        if entry is not None and entry[0] == address:
            return entry[2]
        channel = secure_channel(address, node_id, self._material.ca_pem, self._material)
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        self._stubs[node_id] = (address, channel, stub)
        if entry is not None:  # the node moved: its old channel is of no further use
            await entry[1].close(None)
        return stub

    async def close(self) -> None:
        entries, self._stubs = list(self._stubs.values()), {}
        for _, channel, _ in entries:
            await channel.close(None)
