"""``cloudless-coordinator``: Temporal workers for every workflow and activity, plus the
agent gateway (gRPC over TLS).

On first start it bootstraps the cluster CA, the enrollment signing key and its own
certificate under the state directory; later starts reuse them. Many coordinators may
run against one Temporal cluster: Temporal spreads the tasks, the ledger serializes
placement, and agents may enroll through any gateway.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import grpc
import structlog
import typer
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

from activities.agent_client import AgentClientPool
from activities.agents import AgentActivities
from activities.ledger import LedgerActivities
from activities.membership import MembershipActivities
from activities.pki import PKIActivities
from agent.enroll import GATEWAY_SERVER_NAME
from cloudless import config, tls
from cloudless.api import gateway_pb2_grpc
from cloudless.errors import CloudlessError
from cloudless.logs import configure_logging
from cloudless.model import ClusterWorkflowInput
from cloudless.naming import cluster_workflow_id, task_queue
from cloudless.pki import (
    CertificateAuthority,
    Identity,
    cert_not_after,
    write_private_file,
    write_public_file,
)
from cloudless.process import stop_on_signals
from cloudless.temporal import connect, ensure_search_attributes
from cloudless.tls import CA_FILE, CERT_FILE, KEY_FILE, TLSMaterial, server_credentials
from cloudless.tokens import TokenSigner, TokenVerifier
from workers.gateway import GatewayServicer
from workers.liveness import LivenessMonitor
from workflows import ALL_WORKFLOWS
from workflows.cluster import ClusterWorkflow

log = structlog.get_logger("cloudless.coordinator")

#: Re-issue the coordinator's own certificate when it has less than this left.
RENEW_BEFORE = timedelta(days=7)
COORDINATOR_CERT_VALIDITY = timedelta(days=90)


@dataclass(frozen=True)
class ClusterPKI:
    ca: CertificateAuthority
    signer: TokenSigner
    material: TLSMaterial


def bootstrap_pki(
    directory: Path, cluster: str, coordinator_name: str = "coordinator"
) -> ClusterPKI:
    """Create (first start) or load the CA, signing key and this coordinator's cert."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = CertificateAuthority.bootstrap(directory, cluster)
    signer = TokenSigner.load_or_create(directory)
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    renew = True
    if key_path.exists() and cert_path.exists():
        renew = cert_not_after(cert_path.read_bytes()) - datetime.now(UTC) < RENEW_BEFORE
    if renew:
        key_pem, cert_pem = ca.issue(
            Identity(cluster=cluster, role="coordinator", name=coordinator_name),
            dns_names=[GATEWAY_SERVER_NAME, "localhost"],
            ip_addresses=["127.0.0.1"],
            validity=COORDINATOR_CERT_VALIDITY,
        )
        write_private_file(key_path, key_pem)
        write_public_file(cert_path, cert_pem)
        log.info("pki.coordinator_cert_issued", not_after=cert_not_after(cert_pem).isoformat())
    # The CA certificate is already in ``directory`` (ca.crt), where TLSMaterial looks.
    assert (directory / CA_FILE).exists()
    return ClusterPKI(ca=ca, signer=signer, material=TLSMaterial.load(directory))


@dataclass
class Coordinator:
    """Everything one coordinator process runs; also used in-process by tests."""

    client: Client
    cluster: str
    state_dir: Path
    gateway_listen: str = config.DEFAULT_GATEWAY
    agent_listen: str = config.DEFAULT_AGENT_GATEWAY
    heartbeat_ttl: float = 10.0
    suspect_grace: float = 1.0
    heartbeat_interval: float = 1.0
    liveness: LivenessMonitor | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _server: grpc.aio.Server | None = None
    _pool: AgentClientPool | None = None
    gateway_port: int = 0
    agent_port: int = 0
    _agent_server: grpc.aio.Server | None = None

    async def start(self) -> None:
        pki = bootstrap_pki(config.coordinator_dir(self.state_dir), self.cluster)
        await ensure_search_attributes(self.client)
        await self.client.start_workflow(
            ClusterWorkflow.run,
            ClusterWorkflowInput(cluster=self.cluster),
            id=cluster_workflow_id(self.cluster),
            task_queue=task_queue(self.cluster),
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        self._pool = AgentClientPool(pki.material)
        ledger = LedgerActivities(self.client, self.cluster)
        agents = AgentActivities(self._pool)
        certs = PKIActivities(pki.ca)
        membership = MembershipActivities(self.client, self._pool, self.cluster)
        worker = Worker(
            self.client,
            task_queue=task_queue(self.cluster),
            workflows=list(ALL_WORKFLOWS),
            activities=[
                ledger.place_replicas,
                ledger.commit_plan,
                ledger.publish_node,
                ledger.consume_enrollment_token,
                ledger.register_node,
                agents.run_replica,
                agents.stop_replica,
                agents.probe_agent,
                certs.sign_node_certificate,
                membership.notify_workloads,
                membership.reconcile_node,
                membership.wait_node_empty,
            ],
            max_concurrent_activities=200,
        )
        self._tasks.append(asyncio.create_task(worker.run(), name="temporal-worker"))
        self._worker = worker
        verifier = TokenVerifier(pki.signer.public_key_pem(), self.cluster)
        self.liveness = LivenessMonitor(
            self.client,
            self.cluster,
            gateway_id=f"{socket.gethostname()}/{self.agent_listen}",
            ttl=self.heartbeat_ttl,
            suspect_grace=self.suspect_grace,
            interval=self.heartbeat_interval,
        )
        await self.liveness.start()
        # Two listeners: enrollment needs no client certificate (the token authenticates
        # it); everything else requires one, which gRPC cannot make optional per method.
        agent_server = tls.server()
        self.agent_port = agent_server.add_secure_port(
            self.agent_listen, server_credentials(pki.material, require_client_auth=True)
        )
        servicer = GatewayServicer(
            self.client, self.cluster, verifier, self.liveness, agent_port=self.agent_port
        )
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, agent_server)
        await agent_server.start()
        self._agent_server = agent_server
        server = tls.server()
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
        self.gateway_port = server.add_secure_port(
            self.gateway_listen, server_credentials(pki.material, require_client_auth=False)
        )
        await server.start()
        self._server = server
        log.info(
            "coordinator.started",
            cluster=self.cluster,
            gateway=self.gateway_listen,
            agent_gateway=self.agent_listen,
            task_queue=task_queue(self.cluster),
        )

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=2)
        if self._agent_server is not None:
            await self._agent_server.stop(grace=2)
        if self.liveness is not None:
            await self.liveness.stop()
        if self._tasks:
            await self._worker.shutdown()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main_command(
    temporal_address: Annotated[
        str, typer.Option(envvar=config.ENV_TEMPORAL_ADDRESS)
    ] = config.DEFAULT_TEMPORAL_ADDRESS,
    temporal_namespace: Annotated[
        str, typer.Option(envvar=config.ENV_TEMPORAL_NAMESPACE)
    ] = config.DEFAULT_TEMPORAL_NAMESPACE,
    cluster: Annotated[str, typer.Option(envvar=config.ENV_CLUSTER)] = config.DEFAULT_CLUSTER,
    state_dir: Annotated[Path | None, typer.Option(envvar=config.ENV_STATE_DIR)] = None,
    gateway_listen: Annotated[str, typer.Option(help="host:port for the agent gateway.")] = (
        config.DEFAULT_GATEWAY
    ),
    agent_listen: Annotated[
        str, typer.Option(help="host:port for the agents' mTLS endpoint (heartbeats).")
    ] = config.DEFAULT_AGENT_GATEWAY,
    heartbeat_ttl: Annotated[
        float, typer.Option(help="Seconds without a heartbeat before a node is Offline.")
    ] = 10.0,
    suspect_grace: Annotated[
        float, typer.Option(help="Seconds a node with a broken stream stays Suspect.")
    ] = 1.0,
) -> None:
    """Run the coordinator until SIGINT/SIGTERM."""
    configure_logging()
    try:
        asyncio.run(
            _run(
                temporal_address,
                temporal_namespace,
                cluster,
                state_dir or config.state_dir(),
                gateway_listen,
                agent_listen,
                heartbeat_ttl,
                suspect_grace,
            )
        )
    except CloudlessError as err:
        typer.echo(f"cloudless-coordinator: {err}", err=True)
        raise typer.Exit(1) from err


async def _run(
    address: str,
    namespace: str,
    cluster: str,
    state_dir: Path,
    listen: str,
    agent_listen: str = config.DEFAULT_AGENT_GATEWAY,
    heartbeat_ttl: float = 10.0,
    suspect_grace: float = 1.0,
) -> None:
    try:
        client = await connect(address, namespace, wait=10)
    except RuntimeError as err:
        raise CloudlessError(
            f"cannot reach Temporal at {address} ({err}); start it or set --temporal-address"
        ) from err
    coordinator = Coordinator(
        client=client,
        cluster=cluster,
        state_dir=state_dir,
        gateway_listen=listen,
        agent_listen=agent_listen,
        heartbeat_ttl=heartbeat_ttl,
        suspect_grace=suspect_grace,
    )
    await coordinator.start()
    await stop_on_signals().wait()
    await coordinator.stop()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
