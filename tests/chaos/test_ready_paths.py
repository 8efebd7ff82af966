"""Every way a node comes back to Ready runs a reconcile first (issue #10, item 2).

Real Temporal, the real coordinator (``LocalCluster``) and real agent *processes*
(``python -m agent.main``), so they can be frozen (SIGSTOP), stopped (SIGTERM) and killed
(SIGKILL) like on a device. Each test moves a replica while its node is away, or leaves
something there the ledger does not place, lets the node come back, and then compares
what actually runs (``docker ps``, the process table) with the workload and the ledger:

- (a) frozen until Offline and replaced, then SIGTERM + SIGCONT and a restart, on a node
  that flapped before: the old stream's Suspect arrives after the Offline, during the
  flap hold of its Ready (docker; the issue's recipe);
- (b) frozen until Suspect only (its connection reset, as a NAT or a keepalive would),
  then thawed (docker);
- (c) stopped gracefully, or killed, and started again while its replica was moved by a
  rolling update (exec);
- (d) killed (SIGKILL) until Offline and restarted: ``test_crash_safety.py``
  (``test_kill9_coordinator_mid_rescheduling``);
- (e) a first enrollment on a device with containers from a previous life (docker);
- (f) of the same class: a stop given up while the node stays Ready (a one-way partition
  made with iptables), which asks the node to reconcile (exec).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from agent.runtime.base import (
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    LABEL_NODE,
    LABEL_REPLICA,
    LABEL_WORKLOAD,
)
from cloudless.client import CloudlessClient
from cloudless.contracts.workload import workflow_id as workload_workflow_id
from cloudless.images import BUSYBOX_TAG
from cloudless.model import NodeAdminInput, NodeState, WorkloadStatus
from cloudless.spec import Workload, parse_workload
from cloudless.testing.cluster import LocalCluster, exec_cluster, free_port, stop_exec_replicas
from cloudless.vocabulary import AdminAction
from tests.conftest import unavailable

pytestmark = pytest.mark.temporal

REPO = Path(__file__).resolve().parents[2]
CPU_MILLIS = 50  # what every workload here requests per replica
#: A container's main process that ends on SIGTERM (a bare ``sleep`` as PID 1 ignores it,
#: and every stop would wait out the grace period).
SLEEP_UNTIL_TERM = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


# ------------------------------------------------------------------ agents as processes


@dataclass
class AgentProcess:
    """One ``cloudless-agent`` process of a LocalCluster, restartable on its state dir."""

    cluster: LocalCluster
    name: str
    runtime: str
    listen: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    proc: subprocess.Popen[bytes] | None = None

    @property
    def state_dir(self) -> Path:
        return self.cluster.root / "agents" / self.name

    @property
    def log(self) -> Path:
        return self.cluster.root / f"agent-{self.name}.log"

    async def start(self, *, enroll: bool = False) -> None:
        """Start the process (enrolling with a fresh token if ``enroll``); return once it
        serves. Whether its node is Ready is for the caller to await."""
        ready = self.state_dir / "ready"
        ready.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if enroll:
            env["CLOUDLESS_TOKEN"] = self.cluster.mint_token(self.name)
        self.proc = proc = await asyncio.to_thread(self._spawn, env, ready)
        async with asyncio.timeout(60):
            while not ready.exists():
                assert proc.poll() is None, f"{self.name} exited: {self.log.read_text()[-2000:]}"
                await asyncio.sleep(0.05)  # polled: a file appearing is not an event here

    def _spawn(self, env: dict[str, str], ready: Path) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            return subprocess.Popen(
                [
                    sys.executable, "-m", "agent.main", "--name", self.name,
                    "--zone", "zone-a", "--cpu", "2", "--memory", "2Gi",
                    "--listen", self.listen, "--gateway", self.cluster.gateway,
                    "--runtime", self.runtime, "--state-dir", str(self.state_dir),
                    "--ready-file", str(ready),
                ],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO, env=env, start_new_session=True,
            )  # fmt: skip

    def signal(self, signum: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    async def exited(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(asyncio.to_thread(self.proc.wait), timeout)
        self.proc = None
        return code

    def heartbeat_socket(self) -> tuple[int, int]:
        """(local port, gateway port) of the agent's heartbeat stream."""
        assert self.proc is not None
        gateway = int(self.cluster.agent_gateway.rsplit(":", 1)[1])
        conns = psutil.Process(self.proc.pid).net_connections(kind="tcp")
        (local,) = {c.laddr.port for c in conns if c.raddr and c.raddr.port == gateway}
        return local, gateway

    def replica_processes(self) -> set[str]:
        """Replica ids of the exec processes that run, from the process table (a replica
        runs in ``<state>/replicas/<id>/work``), not from the agent's records."""
        root = self.state_dir / "replicas"
        found = set()
        for p in psutil.process_iter(["cwd", "status"]):
            cwd = p.info["cwd"]
            if cwd and p.info["status"] != psutil.STATUS_ZOMBIE and cwd.startswith(f"{root}/"):
                found.add(Path(cwd).relative_to(root).parts[0])
        return found

    async def close(self) -> None:
        """Stop the process (thawing it first) and any exec replica it left running."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)
                os.killpg(self.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait)
            self.proc = None
        await stop_exec_replicas(self.name, self.state_dir)


@dataclass
class Harness:
    cluster: LocalCluster
    client: CloudlessClient
    docker: Any
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    #: Workloads applied (names in ``default``), ended at teardown if a test did not.
    workloads: list[str] = field(default_factory=list)

    async def end_workloads(self) -> None:
        """Terminate the workflows of workloads a failed test left behind: they share the
        Temporal namespace with later tests, whose listings would query them."""
        for name in self.workloads:
            handle = self.client.temporal.get_workflow_handle(workload_workflow_id("default", name))
            with contextlib.suppress(RPCError):
                await handle.terminate("test teardown")

    async def add(self, role: str, runtime: str) -> AgentProcess:
        agent = AgentProcess(self.cluster, f"{role}-{self.suffix}", runtime)
        self.agents[role] = agent
        await agent.start(enroll=True)
        await self.ready(agent)
        return agent

    async def ready(self, agent: AgentProcess) -> None:
        node = await self.client.wait_node(agent.name, [NodeState.READY], timeout=90)
        assert node is not None and node.state == NodeState.READY, (agent.name, node)

    async def state(self, agent: AgentProcess, state: NodeState, timeout: float = 60) -> None:
        node = await self.client.wait_node(agent.name, [state], timeout=timeout)
        assert node is not None and node.state == state, (agent.name, node)

    async def states(self, agent: AgentProcess) -> list[NodeState]:
        """The node's recorded transitions, oldest first."""
        status = await self.client.node(agent.name).describe()
        assert status is not None
        return [t.state for t in status.transitions]

    async def flap(self, agent: AgentProcess) -> None:
        """Kill the agent (SIGKILL), wait for Offline, start it again and wait for Ready:
        one unplanned departure, as a chaos campaign makes them."""
        agent.signal(signal.SIGKILL)
        await agent.exited()
        await self.state(agent, NodeState.OFFLINE)
        await agent.start()
        await self.ready(agent)

    async def apply_on(self, workload: Workload, agent: AgentProcess) -> WorkloadStatus:
        """Apply ``workload`` with every other node cordoned, so that it lands on
        ``agent``; uncordon them again."""
        others = [a for a in self.agents.values() if a is not agent]
        for other in others:
            await self.client.node(other.name).admin(NodeAdminInput(action=AdminAction.CORDON))
        self.workloads.append(workload.metadata.name)
        outcome = await self.client.apply(workload, wait=True, timeout=90)
        for other in others:
            await self.client.node(other.name).admin(NodeAdminInput(action=AdminAction.UNCORDON))
        assert outcome.status is not None and outcome.status.ready == workload.spec.replicas
        assert {r.node_id for r in outcome.status.replicas} == {agent.name}
        return outcome.status

    def containers(self, workload: str) -> dict[str, list[str]]:
        """replica id -> nodes, of the running containers ``docker ps`` lists."""
        out: dict[str, list[str]] = {}
        for c in self.docker.containers.list(
            filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_WORKLOAD}={workload}"]}
        ):
            node = c.labels[LABEL_NODE]
            if node.endswith(self.suffix):
                out.setdefault(c.labels[LABEL_REPLICA], []).append(node)
        return out

    def processes(self) -> dict[str, list[str]]:
        """replica id -> nodes, of the running exec replica processes."""
        out: dict[str, list[str]] = {}
        for agent in self.agents.values():
            for rid in agent.replica_processes():
                out.setdefault(rid, []).append(agent.name)
        return out

    async def runs_exactly_what_is_placed(
        self, name: str, running: dict[str, list[str]]
    ) -> WorkloadStatus:
        """What runs (one copy of each replica, where its workload placed it) equals the
        workload's replicas and the ledger's allocations."""
        status = await self.client.workload_status("default", name)
        placed = {r.replica_id: r.node_id for r in status.replicas}
        assert running == {rid: [node] for rid, node in placed.items()}, (running, placed)
        snapshot = await self.client.snapshot()
        for node in snapshot.nodes:
            here = sum(1 for n in placed.values() if n == node.node_id)
            assert node.workloads.get(f"default/{name}", 0) == here, (node.node_id, node)
            assert node.allocated.cpu_millis == here * CPU_MILLIS, (node.node_id, node)
        return status


@contextlib.contextmanager
def removing_containers(docker: Any, suffix: str) -> Iterator[None]:
    try:
        yield
    finally:
        managed = {"label": f"{LABEL_MANAGED}=true"}
        for c in docker.containers.list(all=True, filters=managed) if docker else ():
            if c.labels.get(LABEL_NODE, "").endswith(suffix):
                with contextlib.suppress(Exception):
                    c.remove(force=True)


@contextlib.asynccontextmanager
async def harness(
    temporal_env: WorkflowEnvironment, docker: Any, *, ttl: float, grace: float
) -> AsyncIterator[Harness]:
    """A cluster with the given liveness timings; its agents are added by the test.
    ``docker``: the engine's client, or None for a test of exec replicas only."""
    async with exec_cluster(
        temporal_env.client,
        "ready",
        suffix=uuid.uuid4().hex[:6],
        heartbeat_ttl=ttl,
        suspect_grace=grace,
    ) as cluster:
        h = Harness(cluster, CloudlessClient(cluster.client, cluster.cluster), docker)
        with removing_containers(docker, h.suffix):
            try:
                yield h
            finally:
                await h.end_workloads()
                for agent in h.agents.values():
                    await agent.close()


def docker_sleeper(name: str) -> Workload:
    return parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "runtime": "docker",
                "container": {"image": BUSYBOX_TAG, "command": SLEEP_UNTIL_TERM},
                "resources": {"cpu": f"{CPU_MILLIS}m", "memory": "16Mi"},
            },
        }
    )


def exec_sleeper(name: str, version: str = "1", replicas: int = 1) -> Workload:
    """``sleep`` processes (exec runtime); another ``version`` is a rolling update."""
    return parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "runtime": "exec",
                "container": {
                    "command": ["sleep"],
                    "args": ["3600"],
                    "env": [{"name": "VERSION", "value": version}],
                },
                "resources": {"cpu": f"{CPU_MILLIS}m", "memory": "8Mi"},
            },
        }
    )


def plant(docker: Any, node: str, workload: str, replica_id: str) -> None:
    """A container the agent of ``node`` lists as its own, that no ledger placed there
    (what a lost stop or a previous life leaves behind)."""
    docker.containers.run(
        BUSYBOX_TAG,
        SLEEP_UNTIL_TERM,
        name=f"cloudless-{replica_id}",
        labels={
            LABEL_MANAGED: "true",
            LABEL_NODE: node,
            LABEL_NAMESPACE: "default",
            LABEL_WORKLOAD: workload,
            LABEL_REPLICA: replica_id,
        },
        detach=True,
    )


def reset_connection(local: int, remote: int) -> None:
    """Reset both ends of one loopback TCP connection (``ss -K``), as a NAT box that
    dropped its mapping or a keepalive timeout would."""
    if os.geteuid() != 0 or shutil.which("ss") is None:
        unavailable("resetting a connection needs root and ss (iproute2)")
    query = (
        f"( sport = :{local} and dport = :{remote} ) or ( sport = :{remote} and dport = :{local} )"
    )
    done = subprocess.run(["ss", "-K", "-t", query], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        unavailable(f"ss -K failed (kernel without SOCK_DESTROY?): {done.stderr.strip()}")


@contextlib.contextmanager
def unreachable(listen: str) -> Iterator[None]:
    """Reject every connection to ``listen`` (the agent's port) with a reset, while the
    agent's own connections out (its heartbeats) keep flowing: a one-way partition."""
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        unavailable("a one-way partition needs root and iptables")
    host, port = listen.rsplit(":", 1)
    rule = ["INPUT", "-p", "tcp", "-d", host, "--dport", port]
    rule += ["-j", "REJECT", "--reject-with", "tcp-reset"]
    done = subprocess.run(["iptables", "-I", *rule], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        unavailable(f"iptables refused the rule: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], capture_output=True, check=False)


async def polled(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    """Poll ``check`` until it holds: for what has no event to await (a workflow's
    history, the process table)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def activities_scheduled(h: Harness, workflow_id: str, kind: str) -> int:
    history = await h.client.temporal.get_workflow_handle(workflow_id).fetch_history()
    return sum(
        1
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == kind
    )


# ------------------------------------------------------------------ the paths


@pytest.mark.docker
async def test_a_frozen_until_offline_then_restarted(
    temporal_env: WorkflowEnvironment, docker_client: Any, busybox_image: str
) -> None:
    """(a) The issue's recipe: SIGSTOP until Offline and the replica is replaced, then
    SIGTERM + SIGCONT, and a restart. The thawed agent beats once (Ready) and closes its
    stream (Suspect). On a node that already flapped twice, as in the campaign that found
    the issue, flap damping holds that Ready back, the Suspect cancels it, and the node
    went Offline → Suspect → Ready with no reconcile anywhere."""
    async with harness(temporal_env, docker_client, ttl=3.0, grace=1.0) as h:
        away = await h.add("away", "docker")
        home = await h.add("home", "docker")
        for _ in range(2):
            await h.flap(away)
        name = f"frozen-{h.suffix}"
        first = await h.apply_on(docker_sleeper(name), away)

        away.signal(signal.SIGSTOP)
        await h.state(away, NodeState.OFFLINE)
        moved = await h.client.wait(
            "default", name, first.generation, 60, all_ready=True, avoid_node=away.name
        )
        assert {r.node_id for r in moved.replicas} == {home.name} and moved.ready == 1
        assert len(h.containers(name)) == 2  # the frozen node's copy still runs

        away.signal(signal.SIGTERM)
        away.signal(signal.SIGCONT)
        await away.exited()
        await away.start()
        await h.ready(away)  # after a 10 s flap hold
        states = await h.states(away)  # Offline is left for Ready only, never for Suspect
        assert (NodeState.OFFLINE, NodeState.SUSPECT) not in set(itertools.pairwise(states))
        await h.runs_exactly_what_is_placed(name, h.containers(name))
        await h.client.delete("default", name, wait=True)
        assert h.containers(name) == {}


@pytest.mark.docker
async def test_b_frozen_until_suspect_then_thawed(
    temporal_env: WorkflowEnvironment, docker_client: Any, busybox_image: str
) -> None:
    """(b) SIGSTOP, and the frozen agent's connection is reset: Suspect (not Offline:
    the grace and the TTL are long here). Meanwhile a container appears on the node that
    no ledger placed there. SIGCONT: the agent reconnects, and the node is Ready only
    once that container is gone."""
    async with harness(temporal_env, docker_client, ttl=30.0, grace=30.0) as h:
        away = await h.add("away", "docker")
        await h.add("home", "docker")
        name = f"blip-{h.suffix}"
        placed = await h.apply_on(docker_sleeper(name), away)

        away.signal(signal.SIGSTOP)
        reset_connection(*away.heartbeat_socket())
        await h.state(away, NodeState.SUSPECT)
        stray = f"default-{name}-stray"
        plant(docker_client, away.name, name, stray)
        assert stray in h.containers(name)

        away.signal(signal.SIGCONT)
        await h.ready(away)
        states = await h.states(away)
        assert states[-2:] == [NodeState.SUSPECT, NodeState.READY], states
        status = await h.runs_exactly_what_is_placed(name, h.containers(name))
        assert {r.replica_id for r in status.replicas} == {r.replica_id for r in placed.replicas}
        await h.client.delete("default", name, wait=True)
        assert h.containers(name) == {}


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["graceful", "killed"])
async def test_c_restarted_while_its_replica_was_moved(
    temporal_env: WorkflowEnvironment, how: signal.Signals
) -> None:
    """(c) The agent stops (gracefully: Suspect for up to the TTL; or killed: Suspect for
    the grace, long here) and a rolling update moves its replica meanwhile: the stop of
    the old replica cannot reach the agent and is given up, the old process keeps
    running. The agent starts again before the node is Offline: Suspect → Ready, and the
    old process is stopped on the way."""
    async with harness(temporal_env, None, ttl=40.0, grace=40.0) as h:
        away = await h.add("away", "exec")
        home = await h.add("home", "exec")
        name = f"moved-{h.suffix}"
        first = await h.apply_on(exec_sleeper(name), away)
        (old,) = first.replicas

        away.signal(how)
        await away.exited()
        await h.state(away, NodeState.SUSPECT)
        outcome = await h.client.apply(exec_sleeper(name, version="2"), wait=False)
        moved = await h.client.wait(
            "default", name, outcome.generation, 60, all_ready=True, avoid_node=away.name
        )
        assert {r.node_id for r in moved.replicas} == {home.name}
        assert old.replica_id in h.processes()  # its stop was given up: it still runs

        await away.start()
        await h.ready(away)
        states = await h.states(away)
        assert NodeState.OFFLINE not in states, states
        status = await h.runs_exactly_what_is_placed(name, h.processes())
        assert old.replica_id not in {r.replica_id for r in status.replicas}
        await h.client.delete("default", name, wait=True)
        assert h.processes() == {}


@pytest.mark.docker
async def test_e_first_enrollment_with_containers_from_a_previous_life(
    temporal_env: WorkflowEnvironment, docker_client: Any, busybox_image: str
) -> None:
    """(e) A device that ran an agent under the same name before (another cluster, or a
    wiped state dir) still has its containers: Joining → Ready stops them all, whether
    their workload is unknown here or exists with its replicas elsewhere."""
    async with harness(temporal_env, docker_client, ttl=10.0, grace=1.0) as h:
        home = await h.add("home", "docker")
        name = f"web-{h.suffix}"
        await h.apply_on(docker_sleeper(name), home)
        device = AgentProcess(h.cluster, f"device-{h.suffix}", "docker")
        plant(docker_client, device.name, name, f"default-{name}-old01")  # a workload here
        plant(docker_client, device.name, f"gone-{h.suffix}", "default-gone-old02")  # none
        assert len(h.containers(name)) == 2

        h.agents["device"] = device
        await device.start(enroll=True)
        await h.ready(device)
        states = await h.states(device)
        assert states == [NodeState.JOINING, NodeState.READY], states
        await h.runs_exactly_what_is_placed(name, h.containers(name))
        assert h.containers(f"gone-{h.suffix}") == {}
        await h.client.delete("default", name, wait=True)
        assert h.containers(name) == {}


async def test_f_a_stop_given_up_while_the_node_stays_ready(
    temporal_env: WorkflowEnvironment,
) -> None:
    """(f) Not a way into Ready, but the same class: the coordinator cannot reach the
    agent while its heartbeats keep arriving (a one-way partition), so the node never
    leaves Ready. A scale-down's stop is given up and the replica released; the workload
    asks the node to reconcile, which retries until the agent is reachable again and
    stops the replica there, the node Ready throughout."""
    async with harness(temporal_env, None, ttl=10.0, grace=1.0) as h:
        away = await h.add("away", "exec")
        name = f"oneway-{h.suffix}"
        await h.apply_on(exec_sleeper(name, replicas=2), away)
        node_workflow = f"node/{away.name}"
        reconciles = await activities_scheduled(h, node_workflow, "reconcile_node")

        with unreachable(away.listen):
            outcome = await h.client.scale("default", name, 1)
            status = await h.client.wait("default", name, outcome.generation, 60)
            assert len(status.replicas) == 1
            assert len(h.processes()) == 2  # the stop was given up: it still runs

            async def reconciling() -> bool:  # the node's reconcile is under way, failing
                return await activities_scheduled(h, node_workflow, "reconcile_node") > reconciles

            await polled(reconciling, "the node to reconcile")

        async def stopped() -> bool:  # its next retry reaches the agent
            return len(h.processes()) == 1

        await polled(stopped, "the given-up replica to be stopped")
        await h.runs_exactly_what_is_placed(name, h.processes())
        assert await h.states(away) == [NodeState.JOINING, NodeState.READY]
        await h.client.delete("default", name, wait=True)
        assert h.processes() == {}
