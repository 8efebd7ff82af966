"""``cloudless-coordinator``: Temporal workers for every workflow and activity, plus the
agent gateway (gRPC over TLS).

On first start it bootstraps the cluster CA, the enrollment signing key and its own
certificate under the state directory; later starts reuse them. Many coordinators may
run against one Temporal cluster: Temporal spreads the tasks, the ledger serializes
placement, and agents may enroll through any gateway.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import grpc
import hvac
import structlog
import typer
from cryptography.hazmat.primitives import serialization
from temporalio.client import Client
from temporalio.converter import PayloadCodec
from temporalio.worker import PollerBehaviorSimpleMaximum, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.agent_client import AgentClientPool
from activities.agents import AgentActivities
from activities.certs import CertRotationActivities
from activities.ledger import LedgerActivities
from activities.membership import MembershipActivities
from activities.pki import NODE_CERT_VALIDITY, PKIActivities
from activities.reaper import ReaperActivities
from cloudless import config, tls
from cloudless.api import gateway_pb2_grpc, secrets_pb2_grpc
from cloudless.clientconfig import ClientFlags, client_settings
from cloudless.codec import (
    ENV_INSECURE_PLAINTEXT,
    INSECURE_PLAINTEXT_FLAG,
    require_codec,
    transit_codec,
)
from cloudless.contracts import LedgerHandle
from cloudless.contracts.certs import coordinator_task_queue, instance_identity
from cloudless.contracts.names import ledger_task_queue, task_queue
from cloudless.durations import parse_duration
from cloudless.errors import CloudlessError
from cloudless.grpc_options import (
    GrpcHandshakeTimeout,
    GrpcIdleTimeout,
    GrpcMaxConnections,
    GrpcMaxStreams,
)
from cloudless.http import ConnectionLimits
from cloudless.logs import configure_logging
from cloudless.model import CAStageResult, ReaperInput, RegisterUserInput
from cloudless.pki import (
    CertificateAuthority,
    cert_fingerprint,
    cert_not_after,
    cert_serial,
    load_trust_bundle,
)
from cloudless.pki import rotation as ca_rotation
from cloudless.pki.rotation import trust_bundle
from cloudless.process import raise_open_files_limit, stop_on_signals
from cloudless.revocation import RevocationList
from cloudless.secrets.access import AccessTokens, load_or_create_key
from cloudless.secrets.audit import DEFAULT_RETENTION_DAYS, AuditLog
from cloudless.secrets.masterkey import DEFAULT_KEY_NAME, MasterKey
from cloudless.secrets.model import RotationInput
from cloudless.temporal import TemporalTarget, connect, ensure_search_attributes
from cloudless.temporal_options import (
    TemporalAddress,
    TemporalApiKeyFile,
    TemporalNamespace,
    TemporalTLSCA,
    TemporalTLSCert,
    TemporalTLSKey,
    TemporalTLSOnOff,
    TemporalTLSServerName,
)
from cloudless.tls import (
    CA_FILE,
    CERT_FILE,
    DEFAULT_GRPC_LIMITS,
    GrpcLimits,
    RotatingServerCredentials,
    TLSMaterial,
)
from cloudless.tokens import TokenSigner, TokenVerifier
from cloudless.transit.client import transit_mount, transit_settings
from cloudless.vocabulary import AccessRole
from workers.certs import (
    COORDINATOR_CERT_VALIDITY,
    AdminRevoked,
    CoordinatorCertificates,
    admin_spec,
    check_validity,
    coordinator_spec,
    ensure_cert_rotation_schedule,
    ensure_pair,
    instance_name,
    write_trust,
)
from workers.codec_server import LIMITS as CODEC_LIMITS
from workers.codec_server import CodecServer, CodecServerConfig, ListenError
from workers.front.service import Front, FrontConfig
from workers.gateway import GatewayServicer
from workers.gcpolicy import GcPolicy
from workers.liveness import LivenessMonitor
from workers.reaper import ensure_reaper_schedule
from workers.secrets import SecretsRuntime, ensure_rotation_schedule
from workflows import LEDGER_WORKFLOWS, SHARED_QUEUE_WORKFLOWS

log = structlog.get_logger("cloudless.coordinator")

#: Seconds an enrollment connection lives at most (its RPCs then get GrpcLimits.age_grace,
#: longer than an enrollment's own two-minute limit, to finish).
GATEWAY_MAX_CONNECTION_AGE = 600.0


@dataclass(frozen=True)
class ClusterPKI:
    ca: CertificateAuthority
    signer: TokenSigner
    material: TLSMaterial


def bootstrap_pki(
    directory: Path,
    cluster: str,
    coordinator_name: str = "coordinator",
    *,
    validity: timedelta = COORDINATOR_CERT_VALIDITY,
) -> ClusterPKI:
    """Create (first start) or load the CA, signing key and this coordinator's cert
    (issued anew when missing or past two thirds of its lifetime)."""
    check_validity(validity)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = CertificateAuthority.bootstrap(directory, cluster)
    signer = TokenSigner.load_or_create(directory)
    ensure_pair(coordinator_spec(directory, cluster, coordinator_name), ca, validity=validity)
    # The CA certificate is already in ``directory`` (ca.crt), where TLSMaterial looks.
    assert (directory / CA_FILE).exists()
    return ClusterPKI(ca=ca, signer=signer, material=TLSMaterial.load(directory))


def bootstrap_admin(
    state_dir: Path,
    ca: CertificateAuthority,
    cluster: str,
    *,
    validity: timedelta = COORDINATOR_CERT_VALIDITY,
) -> Path:
    """The local admin's client certificate (``<state>/admin/``), used by ``cloudlessctl``
    for the mTLS services (secrets), like kubeadm's admin.conf. Returns its directory."""
    directory = config.admin_dir(state_dir)
    ensure_pair(admin_spec(directory, cluster), ca, validity=validity)
    write_trust(directory, trust_bundle(config.coordinator_dir(state_dir)))
    return directory


def _fingerprints(bundle: bytes) -> list[str]:
    return [
        cert_fingerprint(c.public_bytes(serialization.Encoding.PEM))
        for c in load_trust_bundle(bundle)
    ]


def _admin_record(cert_pem: bytes) -> RegisterUserInput:
    return RegisterUserInput(
        name="admin",
        role=AccessRole.ADMIN.value,
        serial=cert_serial(cert_pem),
        not_after=cert_not_after(cert_pem),
    )


async def _register_admin(ledger_handle: LedgerHandle, directory: Path) -> None:
    """The local admin is a user like the others: listed, and revocable by serial.
    Retried until the ledger answers (it runs on this process's workers)."""
    inp = _admin_record((directory / CERT_FILE).read_bytes())
    for attempt in itertools.count():
        try:
            await ledger_handle.register_user(inp, rpc_timeout=timedelta(seconds=30))
            return
        except Exception as err:  # retried: the ledger may be busy or restarting
            log.warning("coordinator.admin_not_registered", error=str(err), attempt=attempt)
            await asyncio.sleep(min(30.0, 0.5 * 2**attempt))


@dataclass(frozen=True)
class SecretsSettings:
    rotation_interval: timedelta = timedelta(days=90)
    audit_retention_days: int = DEFAULT_RETENTION_DAYS
    rotation_batch_size: int = 100
    rotation_batch_interval: float = 0.0
    rotation_settle_seconds: float = 30.0


@dataclass(frozen=True)
class ReaperSettings:
    interval: timedelta = timedelta(minutes=1)
    grace: float = 60.0


async def _start_codec_server(
    settings: CodecServerConfig, codec: PayloadCodec, directory: Path
) -> CodecServer | None:
    """The UI's codec endpoint; a taken port is not fatal (another coordinator on this
    host may already serve it), a refused configuration is."""
    try:
        return await CodecServer.from_config(settings, codec, directory).start()
    except ListenError as err:
        log.warning("coordinator.codec_endpoint_not_started", reason=str(err))
        return None


#: Our own packages, imported once per process instead of once per workflow run.
PASSTHROUGH = ("workflows", "activities", "cloudless", "policies")


#: Concurrent long polls of the main worker (see where they are used).
WORKFLOW_TASK_POLLS = 16
ACTIVITY_TASK_POLLS = 16


def workflow_runner() -> SandboxedWorkflowRunner:
    """The sandbox with our packages passed through.

    Why: the default sandbox re-imports (and recompiled) every non-passthrough module for
    each new workflow run; ``workflows/__init__`` imports all eight workflow modules, so
    every enrollment, node and workload workflow paid for all of them. Profiling a
    1,000-node enrollment put ~47 % of the coordinator's event-loop thread there. Our
    workflow modules keep no module-level mutable state, and the sandbox still applies its
    runtime restrictions (clock, randomness, I/O) to passed-through code.
    """
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
    )


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
    #: Bounds of the gateway's and the agent listener's connections.
    grpc_limits: GrpcLimits = DEFAULT_GRPC_LIMITS
    #: Seconds an enrollment connection lives at most: that listener takes connections
    #: without a client certificate (see docs/design/enrollment-and-pki.md, "Floods").
    gateway_max_age: float = GATEWAY_MAX_CONNECTION_AGE
    liveness: LivenessMonitor | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _workers: list[Worker] = field(default_factory=list)
    _server: grpc.aio.Server | None = None
    _pool: AgentClientPool | None = None
    gateway_port: int = 0
    agent_port: int = 0
    _agent_server: grpc.aio.Server | None = None
    #: Transit (hvac) for the secrets master key; None: SecretsService disabled.
    transit: hvac.Client | None = None
    secrets_key: str = DEFAULT_KEY_NAME
    key_rotation_interval: timedelta = timedelta(days=90)
    rotation_settle_seconds: float = 30.0
    rotation_batch_size: int = 100
    rotation_batch_interval: float = 0.0
    audit_retention_days: int = DEFAULT_RETENTION_DAYS
    audit: AuditLog | None = None
    secrets_runtime: SecretsRuntime | None = None
    #: The client's payload codec; with ``codec_server`` the UI can decode through us.
    #: Required: without it ``start`` refuses, unless ``insecure_plaintext_payloads``.
    codec: PayloadCodec | None = None
    #: The explicit opt-out from payload encryption, for tests that run without transit.
    insecure_plaintext_payloads: bool = False
    codec_server: CodecServerConfig | None = None
    _codec_http: CodecServer | None = None
    #: Certificates of removed nodes, refused by the gateway and SecretsService.
    revocations: RevocationList | None = None
    #: The process's garbage-collector policy (``workers.gcpolicy``); the process entry
    #: point sets it, in-process test clusters leave the interpreter's defaults alone.
    gc_policy: GcPolicy | None = None
    #: How often the reaper Schedule runs (None: this coordinator leaves the Schedule as
    #: it is, or absent; tests run the reaper on demand instead).
    reap_interval: timedelta | None = timedelta(minutes=1)
    #: Replicas an agent started less than this long ago are not stopped by the reaper.
    reap_grace: float = 60.0
    #: Lifetime of the node certificates this coordinator issues (enrollment, renewal);
    #: agents renew at about two thirds of it. Tests shorten it to seconds.
    node_cert_validity: timedelta = NODE_CERT_VALIDITY
    #: Lifetime of the certificates it issues itself (its own and the local admin's),
    #: renewed at about two thirds of it while it runs. Tests shorten it to seconds.
    coordinator_cert_validity: timedelta = COORDINATOR_CERT_VALIDITY
    #: This process's front (``workers.front``), if it serves one: it gets each renewed
    #: certificate too.
    front: Front | None = None
    #: The renewer of its own certificates (:mod:`workers.certs`), once started.
    certificates: CoordinatorCertificates | None = None
    _renewing: asyncio.Event = field(default_factory=asyncio.Event)
    #: Signs node certificates (enrollment, renewal); re-trusted by a CA rotation.
    _signer: PKIActivities | None = None

    async def start(self) -> None:
        self._check_codec()
        directory = config.coordinator_dir(self.state_dir)
        pki = bootstrap_pki(directory, self.cluster, validity=self.coordinator_cert_validity)
        if self.codec is not None and self.codec_server is not None:
            self._codec_http = await _start_codec_server(
                self.codec_server, self.codec, config.coordinator_dir(self.state_dir)
            )
        await ensure_search_attributes(self.client)
        ledger_handle = LedgerHandle(self.client, self.cluster)
        await ledger_handle.start()
        self._pool = AgentClientPool(pki.material)
        admin = bootstrap_admin(
            self.state_dir, pki.ca, self.cluster, validity=self.coordinator_cert_validity
        )
        instance = instance_name(socket.gethostname(), self.agent_listen)
        trust = await asyncio.to_thread(trust_bundle, directory)
        certificates = self.certificates = CoordinatorCertificates(
            pki.ca,
            coordinator_spec(directory, self.cluster),
            admin=admin_spec(admin, self.cluster),
            validity=self.coordinator_cert_validity,
            instance=instance,
            trust=trust,
        )
        rotation = CertRotationActivities(self.client, certificates.renew, self._ca_stage)
        revocations = self.revocations = RevocationList(ledger_handle.revoked_certificates)
        secrets = self.secrets_runtime = await self._start_secrets(revocations)
        ledger = LedgerActivities(self.client, self.cluster)
        ledger.revocations = revocations
        agents = AgentActivities(self._pool)
        certs = self._signer = PKIActivities(pki.ca, node_validity=self.node_cert_validity)
        certs.retrust(pki.ca, trust)
        membership = MembershipActivities(self.client, self._pool, self.cluster)
        reaper = ReaperActivities(self.client, self._pool, self.cluster, ledger)
        worker = Worker(
            self.client,
            task_queue=task_queue(self.cluster),
            workflows=list(SHARED_QUEUE_WORKFLOWS),
            activities=[
                ledger.place_replicas,
                ledger.explain_placement,
                ledger.commit_plan,
                ledger.claim_workload,
                ledger.publish_node,
                ledger.consume_enrollment_token,
                ledger.register_node,
                agents.run_replicas,
                agents.stop_replica,
                agents.probe_agent,
                certs.sign_node_certificate,
                membership.notify_workloads,
                membership.reconcile_node,
                membership.request_reconcile,
                membership.wait_node_empty,
                membership.wait_node_released,
                membership.retire_node,
                ledger.remove_node,
                reaper.reap_workloads,
                reaper.reap_orphans,
                membership.find_leftovers,
                rotation.coordinator_instances,
                *(secrets.activities() if secrets else ()),
            ],
            # How the cert-rotation run finds this instance among the queue's pollers.
            identity=instance_identity(instance, os.getpid(), socket.gethostname()),
            max_concurrent_activities=200,
            # The SDK's default of 5 workflow-task polls leaves ONE for the non-sticky
            # queue, where every new workflow's first task (each apply's update-with-start)
            # arrives: a burst of applies then starts ~12 workflows a second however idle
            # the process is. More polls, half of them non-sticky; activities likewise.
            workflow_task_poller_behavior=PollerBehaviorSimpleMaximum(WORKFLOW_TASK_POLLS),
            nonsticky_to_sticky_poll_ratio=0.5,
            activity_task_poller_behavior=PollerBehaviorSimpleMaximum(ACTIVITY_TASK_POLLS),
            workflow_runner=workflow_runner(),
        )
        self._tasks.append(asyncio.create_task(worker.run(), name="temporal-worker"))
        # The ledger alone, on its own queue (see cloudless.contracts.names.ledger_task_queue).
        ledger_worker = Worker(
            self.client,
            task_queue=ledger_task_queue(self.cluster),
            workflows=list(LEDGER_WORKFLOWS),
            max_cached_workflows=8,
            max_concurrent_workflow_tasks=4,
            workflow_runner=workflow_runner(),
        )
        self._tasks.append(asyncio.create_task(ledger_worker.run(), name="ledger-worker"))
        self._workers = [worker, ledger_worker]
        # Load the scheduler's node index now, so the first placement does not wait for a
        # snapshot of the whole cluster; from here on it follows this process's writes.
        self._tasks.append(asyncio.create_task(self._warm_index(ledger), name="warm-index"))
        if self.gc_policy is not None:
            self._tasks.append(asyncio.create_task(self.gc_policy.run(), name="gc-policy"))
        # An Update the ledger worker (started above) answers: not awaited here.
        self._tasks.append(
            asyncio.create_task(_register_admin(ledger_handle, admin), name="register-admin")
        )
        self.ledger_activities = ledger  # its scheduler soft state, for benchmarks and tests
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
        agent_server = tls.server(self.grpc_limits)
        agent_credentials = RotatingServerCredentials(pki.material, require_client_auth=True)
        self.agent_port = agent_server.add_secure_port(
            self.agent_listen, agent_credentials.credentials
        )
        # Loaded before the listeners open: a removed node is refused from the first call.
        await revocations.start()
        servicer = GatewayServicer(
            self.client,
            self.cluster,
            verifier,
            self.liveness,
            agent_port=self.agent_port,
            revocations=revocations,
        )
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, agent_server)
        if secrets is not None:
            secrets.servicer.on_change = servicer.invalidations.publish
            secrets_pb2_grpc.add_SecretsServiceServicer_to_server(secrets.servicer, agent_server)
        await agent_server.start()
        self._agent_server = agent_server
        server = tls.server(replace(self.grpc_limits, max_age=self.gateway_max_age))
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
        gateway_credentials = RotatingServerCredentials(pki.material, require_client_auth=False)
        self.gateway_port = server.add_secure_port(
            self.gateway_listen, gateway_credentials.credentials
        )
        await server.start()
        self._server = server
        # Every user of the coordinator's certificate, for its renewals (workers.certs).
        certificates.push_to("enrollment listener", gateway_credentials.update)
        certificates.push_to("agent listener", agent_credentials.update)
        certificates.push_to("agent channels", self._pool.update)
        if self.front is not None:
            certificates.push_to("front", self.front.update)

        async def register(cert_pem: bytes) -> None:
            # Renewing a revoked bundle would register a new serial: the revocation undone.
            if revocations.revoked((admin / CERT_FILE).read_bytes()) is not None:
                raise AdminRevoked(
                    "the local admin's certificate was revoked (`cloudlessctl user revoke "
                    "admin`), so it is not renewed. To issue a new one, stop the "
                    f"coordinator, delete {admin}, and start it again"
                )
            await ledger_handle.register_user(
                _admin_record(cert_pem), rpc_timeout=timedelta(seconds=30)
            )

        certificates.register_admin = register
        # Only now, with every user of the certificate known: a renewal that came earlier
        # would reach none of them, and the listeners would serve the old one until it
        # expired. This instance's own queue: renewing its certificates (workflows.certs).
        own_worker = Worker(
            self.client,
            task_queue=coordinator_task_queue(self.cluster, instance),
            activities=[rotation.renew_coordinator_certificates, rotation.rotate_ca_stage],
            identity=instance_identity(instance, os.getpid(), socket.gethostname()),
            max_concurrent_activities=2,
        )
        self._tasks.append(asyncio.create_task(own_worker.run(), name="instance-worker"))
        self._workers.append(own_worker)
        self._tasks.append(
            asyncio.create_task(certificates.run(self._renewing), name="coordinator-certs")
        )
        await ensure_cert_rotation_schedule(
            self.client, self.cluster, self.coordinator_cert_validity
        )
        if self.reap_interval is not None:
            await ensure_reaper_schedule(
                self.client,
                ReaperInput(cluster=self.cluster, grace_seconds=self.reap_grace),
                self.reap_interval,
            )
        log.info(
            "coordinator.started",
            cluster=self.cluster,
            gateway=self.gateway_listen,
            agent_gateway=self.agent_listen,
            task_queue=task_queue(self.cluster),
        )

    async def _ca_stage(self, stage: str) -> CAStageResult:
        """Take the cluster CA (in this instance's directory) through ``stage`` of its
        rotation, then issue and trust as the directory now says, everywhere in the
        process (:mod:`cloudless.pki.rotation`)."""
        assert self.certificates is not None and self._signer is not None
        directory = config.coordinator_dir(self.state_dir)
        step = {"prepare": ca_rotation.prepare, "switch": ca_rotation.switch}.get(
            stage, ca_rotation.retire
        )
        trust = await asyncio.to_thread(step, directory)
        ca = await asyncio.to_thread(CertificateAuthority.load, directory)
        self._signer.retrust(ca, trust)
        renewal = await self.certificates.retrust(ca, trust)
        log.info("pki.ca_stage", stage=stage, issuer=ca.fingerprint, trusted=_fingerprints(trust))
        return CAStageResult(
            instance=renewal.instance,
            stage=stage,
            trusted=_fingerprints(trust),
            issuer=ca.fingerprint,
            certificates=renewal.certificates,
        )

    @staticmethod
    async def _warm_index(ledger: LedgerActivities) -> None:
        try:
            await ledger.scheduler.current()
        except Exception as err:  # the first placement loads it instead
            log.warning("scheduler.index_not_warmed", error=str(err))

    def _check_codec(self) -> None:
        """Fail closed before anything is written: no codec, no start (unless opted out)."""
        require_codec(
            self.codec, who="the coordinator", insecure_plaintext=self.insecure_plaintext_payloads
        )
        if self.codec is None:
            log.warning(
                "coordinator.INSECURE_PLAINTEXT_PAYLOADS",
                detail="payload encryption is off: workflow payloads reach Temporal in "
                "plaintext; never run a real cluster like this",
            )

    async def _start_secrets(self, revocations: RevocationList) -> SecretsRuntime | None:
        if self.transit is None:
            log.warning("coordinator.secrets_disabled", hint="configure transit (VAULT_ADDR)")
            return None
        directory = config.coordinator_dir(self.state_dir)
        master = MasterKey(self.transit, self.secrets_key, transit_mount())
        await asyncio.to_thread(master.ensure)
        self.audit = AuditLog(
            directory / "audit",
            coordinator=socket.gethostname(),
            retention_days=self.audit_retention_days,
        )
        self.audit.start()
        plan = RotationInput(
            cluster=self.cluster,
            key_name=self.secrets_key,
            batch_size=self.rotation_batch_size,
            batch_interval_seconds=self.rotation_batch_interval,
            settle_seconds=self.rotation_settle_seconds,
        )
        runtime = SecretsRuntime.build(
            self.client,
            self.cluster,
            master,
            AccessTokens(load_or_create_key(directory), self.cluster),
            self.audit,
            rotation_plan=plan,
            revocations=revocations,
        )
        await ensure_rotation_schedule(self.client, plan, self.key_rotation_interval)
        return runtime

    async def stop(self) -> None:
        self._renewing.set()
        if self._codec_http is not None:
            await self._codec_http.stop()
        if self._server is not None:
            await self._server.stop(grace=2)
        if self._agent_server is not None:
            await self._agent_server.stop(grace=2)
        if self.liveness is not None:
            await self.liveness.stop()
        if self.revocations is not None:
            await self.revocations.stop()
        if self._tasks:
            await asyncio.gather(*(w.shutdown() for w in self._workers))
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()
        if self.audit is not None:
            self.audit.close()


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main_command(
    temporal_address: TemporalAddress = None,
    temporal_namespace: TemporalNamespace = None,
    temporal_tls: TemporalTLSOnOff = None,
    temporal_tls_ca: TemporalTLSCA = None,
    temporal_tls_cert: TemporalTLSCert = None,
    temporal_tls_key: TemporalTLSKey = None,
    temporal_tls_server_name: TemporalTLSServerName = None,
    temporal_api_key_file: TemporalApiKeyFile = None,
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
    codec_listen: Annotated[
        str,
        typer.Option(
            envvar="CLOUDLESS_CODEC_LISTEN",
            help="host:port of the Temporal UI codec endpoint; empty disables it.",
        ),
    ] = CodecServerConfig.listen,
    codec_allow_origin: Annotated[
        list[str] | None,
        typer.Option(help="Temporal UI origin allowed to call the codec endpoint (repeat)."),
    ] = None,
    codec_tls_cert: Annotated[Path | None, typer.Option(help="PEM cert for the endpoint.")] = None,
    codec_tls_key: Annotated[Path | None, typer.Option(help="PEM key for the endpoint.")] = None,
    codec_insecure_allow_plaintext: Annotated[
        bool, typer.Option(help="Plain HTTP on a non-loopback address (behind a TLS proxy).")
    ] = False,
    codec_max_connections: Annotated[
        int,
        typer.Option(
            envvar="CLOUDLESS_CODEC_MAX_CONNECTIONS",
            min=1,
            help="Connections the codec endpoint holds at most.",
        ),
    ] = CODEC_LIMITS.max_connections,
    codec_max_connections_per_peer: Annotated[
        int,
        typer.Option(
            envvar="CLOUDLESS_CODEC_MAX_CONNECTIONS_PER_PEER",
            min=1,
            help="Codec endpoint connections per client address.",
        ),
    ] = CODEC_LIMITS.max_per_peer,
    codec_header_timeout: Annotated[
        float,
        typer.Option(
            envvar="CLOUDLESS_CODEC_HEADER_TIMEOUT",
            help="Seconds to send a request head (or TLS handshake) to codec.",
        ),
    ] = CODEC_LIMITS.header_timeout,
    codec_body_timeout: Annotated[
        float,
        typer.Option(
            envvar="CLOUDLESS_CODEC_BODY_TIMEOUT",
            help="Seconds to send a request body to the codec endpoint.",
        ),
    ] = CODEC_LIMITS.body_timeout,
    codec_idle_timeout: Annotated[
        float,
        typer.Option(
            envvar="CLOUDLESS_CODEC_IDLE_TIMEOUT",
            help="Seconds a kept-alive codec connection may stay silent.",
        ),
    ] = CODEC_LIMITS.idle_timeout,
    grpc_max_connections: GrpcMaxConnections = DEFAULT_GRPC_LIMITS.max_connections,
    grpc_max_streams: GrpcMaxStreams = DEFAULT_GRPC_LIMITS.max_streams,
    grpc_handshake_timeout: GrpcHandshakeTimeout = DEFAULT_GRPC_LIMITS.handshake_timeout,
    grpc_idle_timeout: GrpcIdleTimeout = DEFAULT_GRPC_LIMITS.idle_timeout,
    gateway_max_connection_age: Annotated[
        float,
        typer.Option(
            envvar="CLOUDLESS_GATEWAY_MAX_CONNECTION_AGE",
            help="Seconds an enrollment (--gateway-listen) connection lives at most.",
        ),
    ] = GATEWAY_MAX_CONNECTION_AGE,
    key_rotation_interval: Annotated[
        str,
        typer.Option(
            envvar="CLOUDLESS_KEY_ROTATION_INTERVAL",
            help="How often the Schedule rotates the secrets master key (e.g. 90d, 12h).",
        ),
    ] = "90d",
    audit_retention_days: Annotated[
        int, typer.Option(envvar="CLOUDLESS_AUDIT_RETENTION_DAYS", min=1, help="Audit log days.")
    ] = DEFAULT_RETENTION_DAYS,
    rotation_batch_size: Annotated[
        int,
        typer.Option(
            envvar="CLOUDLESS_ROTATION_BATCH_SIZE", min=1, help="Data keys rewrapped per batch."
        ),
    ] = 100,
    rotation_batch_interval: Annotated[
        float,
        typer.Option(
            envvar="CLOUDLESS_ROTATION_BATCH_INTERVAL",
            min=0.0,
            help="Seconds between rewrap batches (spreads the load on transit).",
        ),
    ] = 0.0,
    rotation_settle_seconds: Annotated[
        float,
        typer.Option(
            envvar="CLOUDLESS_ROTATION_SETTLE_SECONDS",
            min=0.0,
            help="Quiet time with nothing left to rewrap before old key versions are disabled.",
        ),
    ] = 30.0,
    reap_interval: Annotated[
        str,
        typer.Option(
            envvar="CLOUDLESS_REAP_INTERVAL",
            help="How often the reaper Schedule releases reservations nobody owns and stops "
            "replicas no workload places (e.g. 1m, 30s).",
        ),
    ] = "1m",
    reap_grace: Annotated[
        str,
        typer.Option(
            envvar="CLOUDLESS_REAP_GRACE",
            help="Replicas an agent started less than this long ago are left to the next "
            "reaper run (e.g. 60s).",
        ),
    ] = "60s",
    node_cert_validity: Annotated[
        str,
        typer.Option(
            envvar="CLOUDLESS_NODE_CERT_VALIDITY",
            help="Lifetime of the node certificates this coordinator issues at enrollment "
            "and renewal (e.g. 30d, 12h); agents renew at about two thirds of it.",
        ),
    ] = "30d",
    coordinator_cert_validity: Annotated[
        str,
        typer.Option(
            envvar="CLOUDLESS_COORDINATOR_CERT_VALIDITY",
            help="Lifetime of the certificates the coordinator issues itself (its own and "
            "the local admin's, e.g. 90d, 12h); renewed in place at about two thirds of it.",
        ),
    ] = "90d",
    insecure_plaintext_payloads: Annotated[
        bool,
        typer.Option(
            INSECURE_PLAINTEXT_FLAG,
            envvar=ENV_INSECURE_PLAINTEXT,
            help="Run WITHOUT payload encryption (plaintext in Temporal). Tests only.",
        ),
    ] = False,
    temporal_jail: Annotated[
        Path | None,
        typer.Option(
            envvar="CLOUDLESS_TEMPORAL_JAIL",
            help="Directory of a jailed Temporal's Unix sockets (`dev up` makes one): serve "
            "the front for it, and reach Temporal through that front.",
        ),
    ] = None,
    front_listen: Annotated[
        str,
        typer.Option(
            envvar="CLOUDLESS_FRONT_LISTEN",
            help="host:port of the front's Temporal API (mutual TLS); with --temporal-jail.",
        ),
    ] = config.DEFAULT_TEMPORAL_ADDRESS,
    front_ui_listen: Annotated[
        str,
        typer.Option(
            envvar="CLOUDLESS_FRONT_UI_LISTEN",
            help="host:port of the front's Temporal UI (HTTPS, login); empty: no UI.",
        ),
    ] = config.DEFAULT_UI_LISTEN,
) -> None:
    """Run the coordinator until SIGINT/SIGTERM."""
    configure_logging()
    raise_open_files_limit()  # before any listener sizes its cap from it
    try:
        grpc_limits = GrpcLimits(
            max_connections=grpc_max_connections,
            max_streams=grpc_max_streams,
            handshake_timeout=grpc_handshake_timeout,
            idle_timeout=grpc_idle_timeout,
        )
        # Checked here, with the other limits, rather than when the gateway starts.
        replace(grpc_limits, max_age=gateway_max_connection_age)
        codec_server = None
        if codec_listen:
            codec_server = CodecServerConfig(
                codec_listen,
                tuple(codec_allow_origin or CodecServerConfig.origins),
                codec_tls_cert,
                codec_tls_key,
                codec_insecure_allow_plaintext,
                ConnectionLimits(
                    max_connections=codec_max_connections,
                    max_per_peer=codec_max_connections_per_peer,
                    header_timeout=codec_header_timeout,
                    body_timeout=codec_body_timeout,
                    idle_timeout=codec_idle_timeout,
                ),
            )
        # A service reads no operator config file: flags, environment and defaults only.
        temporal = client_settings(
            ClientFlags(
                temporal_address=temporal_address,
                temporal_namespace=temporal_namespace,
                temporal_tls=temporal_tls,
                temporal_tls_ca=temporal_tls_ca,
                temporal_tls_cert=temporal_tls_cert,
                temporal_tls_key=temporal_tls_key,
                temporal_tls_server_name=temporal_tls_server_name,
                temporal_api_key_file=temporal_api_key_file,
            ),
            use_config=False,
        )
        asyncio.run(
            _run(
                temporal.target(),
                cluster,
                state_dir or config.state_dir(),
                gateway_listen,
                agent_listen,
                heartbeat_ttl,
                suspect_grace,
                codec_server,
                SecretsSettings(
                    rotation_interval=parse_duration(key_rotation_interval),
                    audit_retention_days=audit_retention_days,
                    rotation_batch_size=rotation_batch_size,
                    rotation_batch_interval=rotation_batch_interval,
                    rotation_settle_seconds=rotation_settle_seconds,
                ),
                insecure_plaintext_payloads,
                grpc_limits,
                gateway_max_connection_age,
                ReaperSettings(
                    interval=parse_duration(reap_interval),
                    grace=parse_duration(reap_grace).total_seconds(),
                ),
                parse_duration(node_cert_validity),
                FrontConfig(front_listen, temporal_jail, front_ui_listen or None)
                if temporal_jail is not None
                else None,
                check_validity(parse_duration(coordinator_cert_validity)),
            )
        )
    except CloudlessError as err:
        typer.echo(f"cloudless-coordinator: {err}", err=True)
        raise typer.Exit(1) from err


async def _run(
    temporal: TemporalTarget,
    cluster: str,
    state_dir: Path,
    listen: str,
    agent_listen: str = config.DEFAULT_AGENT_GATEWAY,
    heartbeat_ttl: float = 10.0,
    suspect_grace: float = 1.0,
    codec_server: CodecServerConfig | None = None,
    secrets: SecretsSettings | None = None,
    insecure_plaintext_payloads: bool = False,
    grpc_limits: GrpcLimits = DEFAULT_GRPC_LIMITS,
    gateway_max_age: float = GATEWAY_MAX_CONNECTION_AGE,
    reaper: ReaperSettings | None = None,
    node_cert_validity: timedelta = NODE_CERT_VALIDITY,
    front_config: FrontConfig | None = None,
    coordinator_cert_validity: timedelta = COORDINATOR_CERT_VALIDITY,
) -> None:
    secrets = secrets or SecretsSettings()
    reaper = reaper or ReaperSettings()
    transit = transit_settings(state_dir)
    # Refuse before connecting: nothing may reach Temporal without the codec.
    codec = require_codec(
        transit_codec(state_dir),
        who="cloudless-coordinator",
        insecure_plaintext=insecure_plaintext_payloads,
    )
    front = None
    if front_config is not None:
        # The jailed Temporal is reachable only through the front: serve it first (with
        # this coordinator's certificate), then connect through it like any client.
        directory = config.coordinator_dir(state_dir)
        bootstrap_pki(directory, cluster, validity=coordinator_cert_validity)
        front = await Front(front_config, cluster, directory, codec).start()
        temporal = front.target(temporal.namespace)
    try:
        client = await connect(temporal, wait=10, codec=codec)
    except RuntimeError as err:
        if front is not None:
            await front.stop()
        raise CloudlessError(
            f"cannot reach Temporal at {temporal.address} ({err}); start it, or check "
            "--temporal-address and the --temporal-tls-* / --temporal-api-key-file options"
        ) from err
    if front is not None:
        front.audit.attach(client, cluster)
    coordinator = Coordinator(
        client=client,
        cluster=cluster,
        state_dir=state_dir,
        gateway_listen=listen,
        agent_listen=agent_listen,
        heartbeat_ttl=heartbeat_ttl,
        suspect_grace=suspect_grace,
        grpc_limits=grpc_limits,
        gateway_max_age=gateway_max_age,
        codec=codec,
        insecure_plaintext_payloads=insecure_plaintext_payloads,
        codec_server=codec_server,
        transit=transit.client() if transit else None,
        key_rotation_interval=secrets.rotation_interval,
        audit_retention_days=secrets.audit_retention_days,
        rotation_batch_size=secrets.rotation_batch_size,
        rotation_batch_interval=secrets.rotation_batch_interval,
        rotation_settle_seconds=secrets.rotation_settle_seconds,
        gc_policy=GcPolicy(),
        reap_interval=reaper.interval,
        reap_grace=reaper.grace,
        node_cert_validity=node_cert_validity,
        coordinator_cert_validity=coordinator_cert_validity,
        front=front,
    )
    await coordinator.start()
    if front is not None and coordinator.revocations is not None:
        front.attach(coordinator.revocations)
    await stop_on_signals().wait()
    await coordinator.stop()
    if front is not None:
        await front.stop()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
