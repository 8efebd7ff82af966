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
from workers.front.audit import AuditSink
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
        #: What the front decided, on its way to ``audit/<cluster>`` (see
        #: ``workers/front/audit.py``); the coordinator attaches its client once connected.
        self.audit = AuditSink()
        self.temporal = TemporalFront(config.listen, config.upstream, self.material, cluster)
        self.temporal.proxy.audit = self.audit.record
        self.ui: UiFront | None = None
        if config.ui_listen:
            host, port = parse_listen(
                config.ui_listen, flag="--front-ui-listen", example="127.0.0.1:8233"
            )
            verifier = LoginVerifier(TokenSigner.load(coordinator_dir).public_key_pem(), cluster)
            context = tls_context(coordinator_dir / CERT_FILE, coordinator_dir / KEY_FILE)
            self.ui = UiFront((host, port), config.ui_upstream, verifier, codec, context)
            self.ui.audit = self.audit.record

    def attach(self, revocations: RevocationList) -> None:
        """The coordinator's revocation list, once it is loaded: from then on people's
        certificates are let in (and revoked ones refused)."""
        self.temporal.proxy.revocations = revocations
        if self.ui is not None:
            self.ui.revocations = revocations

    def update(self, material: TLSMaterial) -> None:
        """Serve the coordinator's renewed certificate on every listener of the front
        from the next handshake on (``workers.certs``)."""
        self.material = material
        self.temporal.update(material)
        if self.ui is not None:
            self.ui.update(material.cert_pem, material.key_pem, self.directory)

    async def start(self) -> Front:
        await self.audit.start()
        await self.temporal.start()
        if self.ui is not None:
            await self.ui.start()
        return self

    def target(self, namespace: str) -> TemporalTarget:
        """How this process reaches Temporal: through its own front's local door, with
        the per-process API key and no client certificate, so that renewing the
        coordinator's certificate never touches the client (the SDK cannot change a
        client's TLS settings after it connected). The door's certificate is verified against
        a CA of this process alone, so rotating the cluster CA never touches it either."""
        assert self.temporal.local is not None, "the front's local door is not configured"
        if self.temporal.local_port == 0:
            raise RuntimeError("the front is not started: its local door has no port yet")
        return TemporalTarget(
            f"127.0.0.1:{self.temporal.local_port}",
            namespace,
            TemporalTLS(self.temporal.local_material.ca_pem, None, None, GATEWAY_SERVER_NAME),
            api_key=self.temporal.local.key,
        )

    async def stop(self) -> None:
        # First, while the coordinator's client still reaches Temporal through this front.
        await self.audit.stop()
        if self.ui is not None:
            await self.ui.stop()
        await self.temporal.stop()
