"""Hollow nodes: a kubemark-style fleet of simulated nodes for measuring the control plane.

Each hollow node is the real agent minus the runtime: it enrolls through the gateway with a
token and its own key (so the enrollment workflow, the CA, ``node/<id>`` and the ledger all
do their real work), serves the real ``AgentService`` over mutual TLS on its own port (one
``grpc.aio`` server per node costs about 70 kB), and keeps a real heartbeat stream to the
gateway. Only the runtime driver is hollow: :class:`HollowDriver` accepts ``RunReplica``
and reports the replica Running without starting anything. Thousands fit in one process.

Capacities, zones, regions and labels are heterogeneous and seeded (:func:`fleet_specs`):
phones, laptops, PCs (some with a GPU), VPSes (some offering gVisor) and gateways (tainted
``NoSchedule``), advertising region, cost and latency through the reserved labels of
:mod:`cloudless.nodefacts`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import structlog
from temporalio.client import Client
from temporalio.service import RPCError

from agent.enroll import NodeFacts, enroll
from agent.heartbeat import HeartbeatClient
from agent.runtime.base import ReplicaPhase, ReplicaSpec, ReplicaStatus
from agent.server import AgentServicer
from cloudless import nodefacts, tls
from cloudless.api import agent_pb2_grpc, gateway_pb2
from cloudless.client import CloudlessClient
from cloudless.errors import EnrollmentError
from cloudless.logs import configure_logging
from cloudless.model import NodeState
from cloudless.pki import CertificateAuthority
from cloudless.testing.cluster import LocalCluster, free_port
from cloudless.tls import RotatingServerCredentials
from cloudless.tokens import TokenSigner

GIB = 2**30
log = structlog.get_logger("cloudless.testing.hollow")

PORT_BASE = 20_000
ENROLL_ATTEMPTS = 5


@dataclass(frozen=True)
class HollowSpec:
    name: str
    zone: str
    cpu_millis: int
    memory_bytes: int
    storage_bytes: int
    labels: dict[str, str]


#: kind, share of the fleet, cores, GiB of memory, cost per core-hour, latency ms.
_KINDS: tuple[tuple[str, float, tuple[int, ...], tuple[int, ...], float, float], ...] = (
    ("phone", 0.35, (4, 6, 8), (4, 6, 8, 12), 0.005, 60.0),
    ("laptop", 0.25, (4, 8, 12), (8, 16, 32), 0.01, 25.0),
    ("pc", 0.2, (8, 16, 24), (16, 32, 64), 0.02, 10.0),
    ("vps", 0.15, (2, 4, 8, 16), (4, 8, 16, 32), 0.04, 5.0),
    ("gateway", 0.05, (2, 4), (2, 4), 0.01, 15.0),
)


def fleet_specs(
    count: int, *, seed: int = 0, regions: int = 4, zones_per_region: int = 4, prefix: str = "h"
) -> list[HollowSpec]:
    """``count`` heterogeneous node specs, the same for the same seed."""
    rng = random.Random(seed)
    kinds = [k[0] for k in _KINDS]
    weights = [k[1] for k in _KINDS]
    by_kind = {k[0]: k for k in _KINDS}
    specs = []
    for i in range(count):
        kind, _, cores, mems, cost, latency = by_kind[rng.choices(kinds, weights)[0]]
        region = rng.randrange(regions)
        labels = {
            "kind": kind,
            "tier": "edge" if kind in ("phone", "gateway") else "standard",
            nodefacts.REGION: f"region-{region}",
            nodefacts.COST: f"{cost * rng.uniform(0.5, 1.5):.4f}",
            nodefacts.LATENCY_MS: f"{latency * rng.uniform(0.5, 2.0):.1f}",
        }
        if kind == "pc" and rng.random() < 0.3:
            labels[nodefacts.GPU] = "1"
        if kind == "vps" and rng.random() < 0.5:
            labels[nodefacts.RUNTIME_CLASS_PREFIX + "gvisor"] = "true"
        if kind == "gateway":
            labels[nodefacts.TAINT_PREFIX + "dedicated"] = "gateway.NoSchedule"
        if kind == "phone" and rng.random() < 0.3:
            labels[nodefacts.TAINT_PREFIX + "battery"] = "low.PreferNoSchedule"
        specs.append(
            HollowSpec(
                name=f"{prefix}{i:05d}",
                zone=f"r{region}-z{rng.randrange(zones_per_region)}",
                cpu_millis=rng.choice(cores) * 1000,
                memory_bytes=rng.choice(mems) * GIB,
                storage_bytes=64 * GIB,
                labels=labels,
            )
        )
    return specs


class HollowDriver:
    """A runtime driver that runs nothing: replicas are Running the moment they are asked
    for and stay so until stopped. Registered under every runtime name a node advertises."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._replicas: dict[str, ReplicaStatus] = {}

    async def available(self) -> bool:
        return True

    async def run(self, spec: ReplicaSpec) -> ReplicaStatus:
        status = ReplicaStatus(
            replica_id=spec.replica_id,
            namespace=spec.namespace,
            workload=spec.workload,
            phase=ReplicaPhase.RUNNING,
            generation=spec.generation,
            spec_hash=spec.spec_hash,
            runtime_id=f"hollow-{spec.replica_id}",
            started_at=time.time(),
        )
        self._replicas[spec.replica_id] = status
        return status

    async def stop(self, replica_id: str, grace_seconds: float = 10.0) -> ReplicaStatus | None:
        return self._replicas.pop(replica_id, None)

    async def list(self) -> list[ReplicaStatus]:
        return list(self._replicas.values())

    async def logs(
        self, replica_id: str, *, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[bytes]:
        if False:  # an empty async generator: hollow replicas print nothing
            yield b""

    async def close(self) -> None:
        return None


def shard_port(shard: int, shards: int, k: int) -> tuple[int, int]:
    """The first free port of shard ``shard`` of ``shards`` from its ``k``-th on, and the
    ``k`` to go on from. gRPC binds with SO_REUSEPORT, so two fleet processes picking the
    same port would share it (and answer for each other's nodes): shards walk disjoint
    sequences (``PORT_BASE + shard + k * shards``, below Linux's ephemeral range) and the
    servers bind without SO_REUSEPORT (:func:`serve_agent`)."""
    while True:
        port = PORT_BASE + shard + k * shards
        k += 1
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port, k


async def serve_agent(
    material: tls.TLSMaterial, address: str, drivers: dict[str, HollowDriver]
) -> tuple[grpc.aio.Server, RotatingServerCredentials]:
    """Serve the real ``AgentService`` of a hollow node at ``address`` over mutual TLS,
    as the agent does: its certificate replaceable for new handshakes (the credentials'
    ``update``, what the agent does after a renewal)."""
    server = grpc.aio.server(options=[*tls.SERVER_OPTIONS, ("grpc.so_reuseport", 0)])
    agent_pb2_grpc.add_AgentServiceServicer_to_server(
        AgentServicer(material.identity.name, material.identity.cluster, drivers), server
    )
    credentials = RotatingServerCredentials(material, require_client_auth=True)
    server.add_secure_port(address, credentials.credentials)
    await server.start()
    return server, credentials


@dataclass
class HollowNode:
    spec: HollowSpec
    address: str
    drivers: dict[str, HollowDriver]
    server: Any = None
    heartbeat: HeartbeatClient | None = None
    task: asyncio.Task[None] | None = None

    @property
    def replicas(self) -> int:
        return sum(len(d._replicas) for d in self.drivers.values())


@dataclass
class HollowFleet:
    """Enroll and run hollow nodes against a gateway (see :meth:`for_cluster`).

    ``mint_token(name)`` returns an enrollment token for a node; ``root`` holds the nodes'
    state directories (key, certificate).
    """

    gateway: str
    agent_gateway: str
    mint_token: Callable[[str], str]
    root: Path
    specs: list[HollowSpec]
    #: Enrollments in flight at once (each is a gateway RPC plus an enrollment workflow).
    concurrency: int = 8
    #: This process's share of a fleet split over ``shards`` processes (see :meth:`_port`).
    shard: int = 0
    shards: int = 1
    nodes: dict[str, HollowNode] = field(default_factory=dict)
    _next_port: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def for_cluster(
        cls, cluster: LocalCluster, specs: list[HollowSpec], concurrency: int = 8
    ) -> HollowFleet:
        return cls(
            gateway=cluster.gateway,
            agent_gateway=cluster.agent_gateway,
            mint_token=cluster.mint_token,
            root=cluster.root / "hollow",
            specs=specs,
            concurrency=concurrency,
        )

    async def start(self) -> float:
        """Enroll every node and start serving and beating; returns the seconds it took.
        The nodes become Ready shortly after (the coordinator probes them)."""
        started = time.monotonic()
        gate = asyncio.Semaphore(self.concurrency)

        async def one(spec: HollowSpec) -> None:
            async with gate:
                await self._launch(spec)

        await asyncio.gather(*(one(s) for s in self.specs))
        return time.monotonic() - started

    def _port(self) -> int:
        """A free port no other node of this fleet uses (see :func:`shard_port`)."""
        if self.shards == 1:
            return free_port()
        port, self._next_port = shard_port(self.shard, self.shards, self._next_port)
        return port

    async def _launch(self, spec: HollowSpec) -> None:
        address = f"127.0.0.1:{self._port()}"
        drivers = {"docker": HollowDriver("docker"), "exec": HollowDriver("exec")}
        node = HollowNode(spec=spec, address=address, drivers=drivers)
        state_dir = self.root / spec.name
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        facts = NodeFacts(
            name=spec.name,
            zone=spec.zone,
            address=address,
            cpu_millis=spec.cpu_millis,
            memory_bytes=spec.memory_bytes,
            storage_bytes=spec.storage_bytes,
            labels=spec.labels,
            runtimes=tuple(sorted(drivers)),
            agent_version="hollow",
        )
        # Like the real agent: enroll, then serve (the enrollment's probe of the agent
        # retries until the server is up).
        for attempt in range(ENROLL_ATTEMPTS):
            try:
                material = await enroll(state_dir, self.gateway, self.mint_token(spec.name), facts)
                break
            except EnrollmentError:
                # An overloaded control plane times out; tokens are bound to the node, so a
                # fresh one may enroll it again even if the first attempt got through late.
                if attempt == ENROLL_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(2**attempt)
        node.server, _ = await serve_agent(material, address, drivers)
        node.heartbeat = HeartbeatClient(
            self.agent_gateway,
            material,
            spec.name,
            drivers,
            facts=gateway_pb2.NodeFacts(
                zone=spec.zone,
                labels=spec.labels,
                capacity=gateway_pb2.Capacity(
                    cpu_millis=spec.cpu_millis,
                    memory_bytes=spec.memory_bytes,
                    storage_bytes=spec.storage_bytes,
                ),
                address=address,
                runtimes=sorted(drivers),
                agent_version="hollow",
            ),
        )
        node.task = asyncio.create_task(node.heartbeat.run(self._stop), name=f"hollow-{spec.name}")
        self.nodes[spec.name] = node

    async def stop(self) -> None:
        self._stop.set()
        tasks = [n.task for n in self.nodes.values() if n.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(n.server.stop(None) for n in self.nodes.values() if n.server is not None),
            return_exceptions=True,
        )


async def wait_ready(
    client: Client, cluster: str, names: set[str], timeout: float, interval: float = 0.5
) -> None:
    """Until the ledger lists every one of ``names`` as Ready (asked every ``interval``
    seconds; a ledger too busy to answer, as thousands of joining nodes make it, is asked
    again at the next)."""
    c = CloudlessClient(client, cluster)
    deadline = time.monotonic() + timeout
    ready: set[str] = set()
    while True:
        try:
            snap = await c.snapshot()
        except RPCError as err:  # "consistent query buffer is full", a query timing out
            log.warning("hollow.wait_ready", error=str(err))
        else:
            ready = {n.node_id for n in snap.nodes if n.state == NodeState.READY}
            if names <= ready:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(names - ready)} hollow nodes not Ready after {timeout}s")
        await asyncio.sleep(interval)


def main() -> None:
    """Run a fleet in its own process (as kubemark does), so a benchmark measures the
    coordinator rather than the fleet competing with it for the interpreter.

    ``python -m cloudless.testing.hollow --gateway H:P --agent-gateway H:P
    --coordinator-dir DIR --cluster NAME --count N [--seed S] [--shard I/N] --root DIR``
    (``--shard`` splits one fleet over several processes, so it can use more cores); prints
    ``enrolled <n> <seconds>`` once every node enrolled, then runs until stdin closes.
    """
    parser = argparse.ArgumentParser()
    for flag in ("--gateway", "--agent-gateway", "--coordinator-dir", "--cluster", "--root"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prefix", default="h")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--shard", default="0/1", help="i/n: run every n-th node from the i-th (one process each)"
    )
    args = parser.parse_args()
    shard, shards = (int(x) for x in args.shard.split("/"))
    configure_logging("WARNING")  # JSON on stderr; stdout carries only the protocol line
    signer = TokenSigner.load(Path(args.coordinator_dir))
    ca_pem = CertificateAuthority.load(Path(args.coordinator_dir)).cert_pem.decode()

    def mint(name: str) -> str:
        token, _ = signer.mint(
            cluster=args.cluster, ca_pem=ca_pem, ttl=timedelta(minutes=30), node_name=name
        )
        return str(token)

    async def run() -> None:
        fleet = HollowFleet(
            gateway=args.gateway,
            agent_gateway=args.agent_gateway,
            mint_token=mint,
            root=Path(args.root),
            specs=fleet_specs(args.count, seed=args.seed, prefix=args.prefix)[shard::shards],
            concurrency=args.concurrency,
            shard=shard,
            shards=shards,
        )
        took = await fleet.start()
        print(f"enrolled {len(fleet.nodes)} {took:.2f}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        await fleet.stop()

    asyncio.run(run())


if __name__ == "__main__":
    main()
