"""NFR-A1 scenario: replicas keep serving through a coordinator outage, and the agents
reconcile when it ends. Shared by ``tests/chaos/test_coordinator_outage.py`` (a compressed
outage) and ``bench/outage_soak.py`` (15 minutes by default).

Real processes throughout: the dev stack (transit, the Temporal dev server, a coordinator
and three agents, each its own process) with the docker runtime. Three workloads, each
pinned to one zone and publishing its own host port on 127.0.0.1:

* ``web`` (zone-a-1, busybox httpd): probed over HTTP for the whole outage; its agent is
  killed with SIGKILL and started again mid-outage, and must adopt the container;
* ``crashy`` (zone-b-1, httpd, ``restartPolicy: Always``): its container is killed
  mid-outage; the agent must restart it on its own;
* ``oneshot`` (edge-1, ``restartPolicy: Never``): its container is killed mid-outage; the
  agent leaves it down and reports the exit once a coordinator is back, and the workload
  replaces it.

The coordinator is killed with SIGKILL before any of this and started again at the end.
The caller asserts on the :class:`OutageReport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client

from cloudless.api import agent_pb2, agent_pb2_grpc
from cloudless.cli.devstack import (
    DEV_AGENTS,
    DEV_FILE,
    DevAgent,
    DevPorts,
    _spawn_agent,
    port_open,
    record_process,
    spawn_coordinator,
    start_processes,
    stop_processes,
    wait_until,
)
from cloudless.client import CloudlessClient
from cloudless.codec import codec_for
from cloudless.images import BUSYBOX_TAG, build_busybox_image
from cloudless.model import NodeState, ReplicaPhase, WorkloadStatus
from cloudless.spec import Workload, parse_workload
from cloudless.temporal import connect
from cloudless.testing.cluster import free_port
from cloudless.testing.front import SideFront
from cloudless.tls import TLSMaterial, secure_channel
from cloudless.transit.client import embedded_transit_settings

CLUSTER = "outage"
#: Labels agent.runtime.base puts on every container (cloudless may not import agent).
LABEL_REPLICA = "dev.cloudless.replica"
LABEL_WORKLOAD = "dev.cloudless.workload"
WEB, CRASHY, ONESHOT = "web", "crashy", "oneshot"
#: Which dev agent runs which workload (placement pins them by zone).
HOMES: dict[str, DevAgent] = {
    WEB: DEV_AGENTS[0],  # zone-a-1: its agent is restarted during the outage
    CRASHY: DEV_AGENTS[1],  # zone-b-1: its container is killed and restarted
    ONESHOT: DEV_AGENTS[2],  # edge-1: its container is killed and stays down
}


@dataclass
class Probe:
    """One HTTP GET of the web replica: when (seconds into the outage), ok, and how long."""

    at: float
    ok: bool
    seconds: float
    error: str = ""


@dataclass
class OutageReport:
    """What happened; the test and the benchmark decide what is good enough."""

    outage_seconds: float = 0.0
    probes: list[Probe] = field(default_factory=list)
    #: replica ids the workflows listed before the outage, per workload
    before: dict[str, str] = field(default_factory=dict)
    #: container id of ``web`` before and after its agent restarted
    web_container: tuple[str, str] = ("", "")
    #: when ``web``'s agent was killed and when its restart was serving (probe time base)
    web_agent_down: tuple[float, float] = (0.0, 0.0)
    #: the agent's view of ``crashy`` after the kill: (restarts, phase, restart reason)
    crashy_restart: tuple[int, str, str] = (0, "", "")
    seconds_to_crashy_restart: float = 0.0
    #: the agent's view of ``oneshot`` after the kill: (phase, terminal, exit code)
    oneshot_exit: tuple[str, bool, int] = ("", False, 0)
    #: "heartbeat.connected" lines per agent log: before the restart, and after
    reconnects: dict[str, tuple[int, int]] = field(default_factory=dict)
    seconds_to_reconnect: float = 0.0
    seconds_to_converge: float = 0.0
    after: dict[str, WorkloadStatus] = field(default_factory=dict)
    #: replica id -> nodes whose agent runs it, across all three workloads, at the end
    running: dict[str, list[str]] = field(default_factory=dict)
    #: replica id -> number of running containers labelled with it, at the end
    containers: dict[str, int] = field(default_factory=dict)
    node_states: dict[str, NodeState] = field(default_factory=dict)

    @property
    def failed_probes(self) -> list[Probe]:
        return [p for p in self.probes if not p.ok]


def httpd_workload(name: str, host_port: int, zone: str, restart_policy: str) -> Workload:
    """A busybox httpd replica publishing ``host_port`` on 127.0.0.1, pinned to ``zone``."""
    return parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "runtime": "docker",
                "restartPolicy": restart_policy,
                "container": {
                    "image": BUSYBOX_TAG,
                    "command": ["sh", "-c"],
                    "args": [
                        "mkdir -p /www && echo ok > /www/index.html && "
                        "exec httpd -f -p 8080 -h /www"
                    ],
                    "ports": [{"containerPort": 8080, "hostPort": host_port}],
                },
                "resources": {"cpu": "50m", "memory": "16Mi"},
                "placement": {"zones": [zone]},
            },
        }
    )


async def http_get(port: int, timeout: float = 2.0) -> Probe:
    """GET / on 127.0.0.1:``port``; ok means an HTTP 200 with the page's body."""
    start = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        try:
            writer.write(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            await writer.drain()
            body = await asyncio.wait_for(reader.read(), timeout)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        ok = body.startswith(b"HTTP/1.") and b" 200 " in body.split(b"\r\n", 1)[0]
        ok = ok and body.rstrip().endswith(b"ok")
        return Probe(0.0, ok, time.monotonic() - start, "" if ok else repr(body[:80]))
    except (OSError, TimeoutError) as err:
        return Probe(0.0, False, time.monotonic() - start, f"{type(err).__name__}: {err}")


class Prober:
    """Probes a port every ``interval`` seconds in the background and keeps every result."""

    def __init__(self, port: int, interval: float) -> None:
        self.port, self.interval = port, interval
        self.probes: list[Probe] = []
        self._origin = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def elapsed(self) -> float:
        """Seconds since probing started: the time base of :attr:`Probe.at`."""
        return time.monotonic() - self._origin

    def start(self) -> None:
        self._origin = time.monotonic()
        self._task = asyncio.create_task(self._run(), name=f"probe-{self.port}")

    async def _run(self) -> None:
        while True:
            tick = time.monotonic()
            probe = await http_get(self.port)
            probe.at = tick - self._origin
            self.probes.append(probe)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - tick)))

    async def stop(self) -> list[Probe]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.probes


class OutageStack:
    """The dev stack under test, with the handful of operations the scenario needs."""

    def __init__(self, state: Path, ports: DevPorts) -> None:
        self.state, self.ports = state, ports
        self.client: CloudlessClient | None = None
        self.front: SideFront | None = None
        # Unique workload names: the Docker engine may be shared with other stacks, and
        # cleanup must remove only this run's containers.
        suffix = os.urandom(3).hex()
        self.names = {role: f"{role}-{suffix}" for role in (WEB, CRASHY, ONESHOT)}

    # ------------------------------------------------------------ processes

    def _pids(self) -> dict[str, int]:
        pids: dict[str, int] = json.loads((self.state / DEV_FILE).read_text())["pids"]
        return pids

    def _record_pid(self, role: str, pid: int) -> None:
        record_process(self.state, role, pid)

    def kill9(self, role: str, port: int) -> None:
        """SIGKILL a role's process group; return once its port is released."""
        os.killpg(self._pids()[role], signal.SIGKILL)
        wait_until(lambda: not port_open(port), f"the killed {role} to release :{port}", 30)

    def agent_port(self, a: DevAgent) -> int:
        return a.port + self.ports.agent_offset

    async def start(self) -> CloudlessClient:
        import docker

        engine = docker.from_env(version="auto")
        try:
            build_busybox_image(engine)
        finally:
            engine.close()
        await asyncio.to_thread(
            start_processes, self.state, CLUSTER, ports=self.ports, runtimes=("docker",)
        )
        codec = codec_for(embedded_transit_settings(self.state))
        # Through a front of our own: the stack's coordinator (the other door) is killed.
        self.front = await SideFront(self.state, CLUSTER).start()
        temporal: Client = await connect(self.front.target, wait=30, codec=codec)
        self.client = CloudlessClient(temporal, CLUSTER)
        for a in DEV_AGENTS:
            await self.client.wait_node(a.name, [NodeState.READY], timeout=60)
        return self.client

    async def restart_coordinator(self) -> None:
        pid = await asyncio.to_thread(spawn_coordinator, self.state, CLUSTER, self.ports)
        self._record_pid("coordinator", pid)

    async def restart_agent(self, a: DevAgent) -> None:
        """Start an enrolled agent again; it serves without any coordinator."""
        proc, ready = await asyncio.to_thread(
            _spawn_agent, self.state, CLUSTER, self.ports, a, ("docker",), None
        )
        self._record_pid(f"agent/{a.name}", proc.pid)
        log = self.state / "logs" / f"agent-{a.name}.log"
        await asyncio.to_thread(wait_until, ready.exists, f"{a.name} to restart", 60, proc, log)

    def reconnects(self, a: DevAgent) -> int:
        """How often this agent's heartbeat stream was answered by a gateway (its log)."""
        log = self.state / "logs" / f"agent-{a.name}.log"
        return log.read_text(errors="replace").count('"heartbeat.connected"')

    async def close(self) -> None:
        if self.client is not None:
            for name in self.names.values():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.client.delete("default", name), 30)
        if self.front is not None:
            await self.front.stop()
        await asyncio.to_thread(stop_processes, self.state)
        await asyncio.to_thread(self.remove_containers)

    # ------------------------------------------------------------ agents and containers

    async def list_replicas(self, a: DevAgent, workload: str = "") -> list[Any]:
        material = TLSMaterial.load(self.state / "coordinator")
        address = f"127.0.0.1:{self.agent_port(a)}"
        async with secure_channel(address, a.name, material.ca_pem, material) as ch:
            listed = await agent_pb2_grpc.AgentServiceStub(ch).ListReplicas(
                agent_pb2.ListReplicasRequest(workload=workload), timeout=10
            )
        return list(listed.replicas)

    async def agent_view(self, a: DevAgent, replica_id: str) -> Any:
        found = [r for r in await self.list_replicas(a) if r.replica_id == replica_id]
        return found[0] if found else None

    async def running(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for a in DEV_AGENTS:
            for r in await self.list_replicas(a):
                if r.phase == ReplicaPhase.RUNNING:
                    out.setdefault(r.replica_id, []).append(a.name)
        return out

    def _our_containers(self, running_only: bool) -> list[Any]:
        import docker

        engine = docker.from_env(version="auto")
        try:
            return [
                c
                for name in self.names.values()
                for c in engine.containers.list(
                    all=not running_only, filters={"label": [f"{LABEL_WORKLOAD}={name}"]}
                )
            ]
        finally:
            engine.close()

    def containers(self) -> dict[str, list[str]]:
        """replica id -> ids of the running containers labelled with it (docker's view)."""
        out: dict[str, list[str]] = {}
        for c in self._our_containers(running_only=True):
            out.setdefault(c.labels[LABEL_REPLICA], []).append(c.id)
        return out

    def remove_containers(self) -> None:
        """Containers outlive agents by design; remove this run's leftovers."""
        for c in self._our_containers(running_only=False):
            with contextlib.suppress(Exception):
                c.remove(force=True)

    @staticmethod
    def kill_container(replica_id: str) -> None:
        """SIGKILL a replica's container behind its agent's back (a crash, an OOM kill)."""
        import docker

        engine = docker.from_env(version="auto")
        try:
            (c,) = engine.containers.list(filters={"label": [f"{LABEL_REPLICA}={replica_id}"]})
            c.kill()
        finally:
            engine.close()


async def eventually(
    check: Callable[[], Any], what: str, timeout: float, interval: float = 0.2
) -> Any:
    """Poll an async ``check`` until it returns something truthy (there is no event to
    subscribe to across processes); fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def run_outage(
    state: Path,
    *,
    outage: float,
    ports: DevPorts,
    probe_interval: float = 0.2,
    progress: Callable[[str], None] = lambda _m: None,
) -> OutageReport:
    """Run the whole scenario; tears the stack down whatever happens."""
    report = OutageReport()
    stack = OutageStack(state, ports)
    web_port, crashy_port, oneshot_port = free_port(), free_port(), free_port()
    prober = Prober(web_port, probe_interval)
    try:
        client = await stack.start()
        progress("stack up; applying web, crashy, oneshot")
        ports_of = {WEB: web_port, CRASHY: crashy_port, ONESHOT: oneshot_port}
        policies = {WEB: "Always", CRASHY: "Always", ONESHOT: "Never"}
        for role, name in stack.names.items():
            spec = httpd_workload(name, ports_of[role], HOMES[role].zone, policies[role])
            applied = await client.apply(spec, wait=True, timeout=90)
            assert applied.status is not None and applied.status.ready == 1, applied
            (replica,) = applied.status.replicas
            assert replica.node_id == HOMES[role].name, replica
            report.before[role] = replica.replica_id
        assert (await http_get(web_port)).ok and (await http_get(crashy_port)).ok

        prober.start()
        # Blocking steps run in threads, so the probes keep their pace throughout.
        await asyncio.to_thread(stack.kill9, "coordinator", ports.gateway)
        began = time.monotonic()
        progress(f"coordinator killed; outage of {outage:.0f}s begins")

        # A replica crashes: the agent restarts it by itself (restartPolicy Always).
        crashy_id = report.before[CRASHY]
        await asyncio.to_thread(stack.kill_container, crashy_id)
        killed = time.monotonic()

        async def restarted() -> Any:
            r = await stack.agent_view(HOMES[CRASHY], crashy_id)
            ok = r is not None and r.restarts >= 1 and r.phase == ReplicaPhase.RUNNING
            return r if ok and (await http_get(crashy_port)).ok else None

        r = await eventually(restarted, "the agent to restart crashy", 60)
        report.crashy_restart = (r.restarts, r.phase, r.restart_reason)
        report.seconds_to_crashy_restart = time.monotonic() - killed
        progress(f"crashy restarted by its agent in {report.seconds_to_crashy_restart:.1f}s")

        # A run-once replica dies: the agent leaves it down and holds the exit to report.
        oneshot_id = report.before[ONESHOT]
        await asyncio.to_thread(stack.kill_container, oneshot_id)

        async def gave_up() -> Any:
            r = await stack.agent_view(HOMES[ONESHOT], oneshot_id)
            return r if r is not None and r.terminal else None

        r = await eventually(gave_up, "the agent to mark oneshot terminal", 30)
        report.oneshot_exit = (r.phase, r.terminal, r.exit_code)

        # The web replica's own agent dies and comes back: it adopts the container.
        home = HOMES[WEB]
        before = await stack.agent_view(home, report.before[WEB])
        down = prober.elapsed()
        await asyncio.to_thread(stack.kill9, f"agent/{home.name}", stack.agent_port(home))
        await stack.restart_agent(home)
        report.web_agent_down = (down, prober.elapsed())
        after = await stack.agent_view(home, report.before[WEB])
        report.web_container = (before.runtime_id, after.runtime_id if after else "")
        progress("web's agent restarted without a coordinator")

        # The rest of the outage: nothing to do but keep probing.
        await asyncio.sleep(max(0.0, outage - (time.monotonic() - began)))
        report.outage_seconds = time.monotonic() - began
        counts = {a.name: stack.reconnects(a) for a in DEV_AGENTS}
        await stack.restart_coordinator()
        back = time.monotonic()
        progress(f"coordinator back after {report.outage_seconds:.0f}s")

        async def reconnected() -> bool:
            return all(stack.reconnects(a) > counts[a.name] for a in DEV_AGENTS)

        await eventually(reconnected, "every agent to reconnect", 60)
        report.seconds_to_reconnect = time.monotonic() - back
        report.reconnects = {a.name: (counts[a.name], stack.reconnects(a)) for a in DEV_AGENTS}

        async def converged() -> dict[str, WorkloadStatus] | None:
            out = {
                role: await client.workload_status("default", name)
                for role, name in stack.names.items()
            }
            replaced = out[ONESHOT].replicas and all(
                r.replica_id != oneshot_id for r in out[ONESHOT].replicas
            )
            settled = all(
                s.ready == 1 and all(r.phase == ReplicaPhase.RUNNING for r in s.replicas)
                for s in out.values()
            )
            return out if replaced and settled else None

        report.after = await eventually(converged, "the workloads to converge", 120)
        report.seconds_to_converge = time.monotonic() - back
        report.probes = await prober.stop()
        report.running = await stack.running()
        report.containers = {k: len(v) for k, v in stack.containers().items()}
        for a in DEV_AGENTS:
            node = await client.wait_node(a.name, [NodeState.READY], timeout=30)
            report.node_states[a.name] = node.state if node else NodeState.OFFLINE
        return report
    finally:
        await prober.stop()
        await stack.close()
