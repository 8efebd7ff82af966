"""The front as one service of the coordinator: what it listens on, where Temporal is,
and how the coordinator itself reaches Temporal through it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from temporalio.converter import PayloadCodec

from cloudless.http import parse_listen, tls_context
from cloudless.logins import LoginVerifier
from cloudless.revocation import RevocationList
from cloudless.temporal import TemporalTarget, TemporalTLS
from cloudless.tls import CERT_FILE, GATEWAY_SERVER_NAME, KEY_FILE, TLSMaterial
from cloudless.tokens import TokenSigner
from workers.front.temporal_proxy import TemporalFront
from workers.front.ui import UiFront

#: File names of the jail's sockets (``cloudless.cli.jail --forward NAME=...``).
FRONTEND_SOCKET = "frontend.sock"
UI_SOCKET = "ui.sock"


@dataclass(frozen=True)
class FrontConfig:
    """``--front-listen`` (Temporal's gRPC API, mutual TLS), ``--front-ui-listen`` (the
    UI, HTTPS) and where the private Temporal is (``--temporal-jail``: the directory of
    the jail's Unix sockets)."""

    listen: str
    jail: Path
    ui_listen: str | None = None

    @property
    def upstream(self) -> str:
        return f"unix:{self.jail / FRONTEND_SOCKET}"

    @property
    def ui_upstream(self) -> str:
        return str(self.jail / UI_SOCKET)


class Front:
    """Starts and stops the front's listeners with the coordinator's certificate."""

    def __init__(
        self,
        config: FrontConfig,
        cluster: str,
        coordinator_dir: Path,
        codec: PayloadCodec | None,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.directory = coordinator_dir
        self.material = TLSMaterial.load(coordinator_dir)
        self.temporal = TemporalFront(config.listen, config.upstream, self.material, cluster)
        self.ui: UiFront | None = None
        if config.ui_listen:
            host, port = parse_listen(
                config.ui_listen, flag="--front-ui-listen", example="127.0.0.1:8233"
            )
            verifier = LoginVerifier(TokenSigner.load(coordinator_dir).public_key_pem(), cluster)
            context = tls_context(coordinator_dir / CERT_FILE, coordinator_dir / KEY_FILE)
            self.ui = UiFront((host, port), config.ui_upstream, verifier, codec, context)

    def attach(self, revocations: RevocationList) -> None:
        """The coordinator's revocation list, once it is loaded: from then on people's
        certificates are let in (and revoked ones refused)."""
        self.temporal.proxy.revocations = revocations
        if self.ui is not None:
            self.ui.revocations = revocations

    async def start(self) -> Front:
        await self.temporal.start()
        if self.ui is not None:
            await self.ui.start()
        return self

    def target(self, namespace: str) -> TemporalTarget:
        """How this process reaches Temporal: through its own front, as the coordinator."""
        host = self.config.listen.rpartition(":")[0] or "127.0.0.1"
        if host in ("0.0.0.0", "[::]", "::"):
            host = "127.0.0.1"
        return TemporalTarget(
            f"{host}:{self.temporal.port}",
            namespace,
            TemporalTLS(
                self.material.ca_pem,
                self.material.cert_pem,
                self.material.key_pem,
                GATEWAY_SERVER_NAME,
            ),
        )

    async def stop(self) -> None:
        if self.ui is not None:
            await self.ui.stop()
        await self.temporal.stop()
