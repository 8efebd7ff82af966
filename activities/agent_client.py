"""Pooled mTLS channels from the coordinator to node agents."""

from __future__ import annotations

import asyncio

import grpc

from cloudless.api import agent_pb2_grpc
from cloudless.tls import TLSMaterial, secure_channel

#: Seconds a channel replaced by a renewed certificate has to finish the RPCs it carries
#: (an agent RPC is bounded well below this) before it is closed.
RETIRE_GRACE = 300.0


class AgentClientPool:
    """One channel (and stub) per node at its current address; a node that re-enrolls
    elsewhere gets a new one and its old channel is closed.

    Looked up for every agent RPC (10,000 in a 10,000-replica burst), so the hit path is
    one dict lookup: no lock (the event loop is single-threaded and nothing here awaits
    before the maps are updated) and no stub construction, which builds a callable per
    RPC method.

    A channel presents the client certificate it was made with at every handshake,
    reconnections included, so when the coordinator's certificate is renewed
    (:meth:`update`) every channel is replaced: the next RPC to each node opens a new one
    with the new certificate, and the old ones close once their RPCs finished.
    """

    def __init__(self, material: TLSMaterial, *, retire_grace: float = RETIRE_GRACE) -> None:
        self._material = material
        self._retire_grace = retire_grace
        self._stubs: dict[str, tuple[str, grpc.aio.Channel, agent_pb2_grpc.AgentServiceStub]] = {}
        #: Channels replaced by :meth:`update`, closing once their RPCs are done.
        self._retiring: dict[asyncio.Task[None], grpc.aio.Channel] = {}

    @property
    def material(self) -> TLSMaterial:
        """What new channels present."""
        return self._material

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

    def update(self, material: TLSMaterial) -> None:
        """Dial with ``material`` from now on: every pooled channel is retired (closed once
        its RPCs finish, within the grace), and the next RPC to a node opens a new one."""
        self._material = material
        retired, self._stubs = self._stubs, {}
        for _, channel, _ in retired.values():
            task = asyncio.get_running_loop().create_task(channel.close(self._retire_grace))
            self._retiring[task] = channel
            task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def close(self) -> None:
        entries, self._stubs = list(self._stubs.values()), {}
        for _, channel, _ in entries:
            await channel.close(None)
        retiring, self._retiring = dict(self._retiring), {}
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        for channel in retiring.values():  # what they were waiting for ends now
            await channel.close(None)
