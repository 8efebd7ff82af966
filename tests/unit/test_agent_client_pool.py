"""The coordinator's pool of agent channels: one per node, replaced when the node moves."""

from __future__ import annotations

from pathlib import Path

import grpc

from activities.agent_client import AgentClientPool
from cloudless.pki import CertificateAuthority, Identity
from cloudless.tls import TLSMaterial


def _material(tmp_path: Path) -> TLSMaterial:
    ca = CertificateAuthority.bootstrap(tmp_path / "ca", "pool")
    key, cert = ca.issue(Identity("pool", "coordinator", "coordinator"))
    return TLSMaterial(key, cert, ca.cert_pem)


async def test_a_node_keeps_its_stub_until_it_moves(tmp_path: Path) -> None:
    pool = AgentClientPool(_material(tmp_path))
    try:
        first = await pool.stub("n1", "127.0.0.1:1")
        assert await pool.stub("n1", "127.0.0.1:1") is first  # no new channel per RPC
        other = await pool.stub("n2", "127.0.0.1:2")
        assert other is not first
        old_channel = pool._stubs["n1"][1]
        moved = await pool.stub("n1", "127.0.0.1:3")
        assert moved is not first
        assert pool._stubs["n1"][0] == "127.0.0.1:3"
        assert old_channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN  # not leaked
        assert pool._stubs["n2"][1].get_state() != grpc.ChannelConnectivity.SHUTDOWN
        assert len(pool._stubs) == 2
    finally:
        await pool.close()
    assert pool._stubs == {}
