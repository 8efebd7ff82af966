"""A second front to a dev stack's jailed Temporal, in the test's own process.

A stack's Temporal is reachable only through a coordinator's front. Chaos tests kill
that coordinator and must go on reading Temporal's history meanwhile, as an operator
would through another coordinator's front; this is that other front (the same class,
with the stack coordinator's certificate), and the test's admin client connects to it.
"""

from __future__ import annotations

from pathlib import Path

from cloudless.cli.devstack import jail_dir
from cloudless.model import RevokedCertificate
from cloudless.revocation import RevocationList
from cloudless.temporal import TemporalTarget, TemporalTLS
from cloudless.tls import GATEWAY_SERVER_NAME, TLSMaterial
from workers.front.service import FRONTEND_SOCKET
from workers.front.temporal_proxy import TemporalFront


async def _nothing_revoked() -> list[RevokedCertificate]:
    return []


class SideFront:
    """``await start()``, connect to :attr:`target`, ``await stop()``."""

    def __init__(self, state_dir: Path, cluster: str) -> None:
        self.state_dir = state_dir
        self.front = TemporalFront(
            "127.0.0.1:0",
            f"unix:{jail_dir(state_dir) / FRONTEND_SOCKET}",
            TLSMaterial.load(state_dir / "coordinator"),
            cluster,
            local_listen=None,  # no coordinator of this process to let in
        )

    async def start(self) -> SideFront:
        # Nothing is revoked in a test's stack; the gate opens at once (a coordinator's
        # front waits for its ledger's list instead).
        self.front.proxy.revocations = RevocationList(_nothing_revoked)
        await self.front.start()
        return self

    @property
    def target(self) -> TemporalTarget:
        admin = TLSMaterial.load(self.state_dir / "admin")
        return TemporalTarget(
            f"127.0.0.1:{self.front.port}",
            tls=TemporalTLS(admin.ca_pem, admin.cert_pem, admin.key_pem, GATEWAY_SERVER_NAME),
        )

    async def stop(self) -> None:
        await self.front.stop()
