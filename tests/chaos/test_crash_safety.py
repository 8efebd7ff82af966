"""Crash safety of the control plane, with real processes: ``kill -9`` of the coordinator
in the middle of a placement, and of the Temporal dev server, then restarts. The end state
must be exactly right: every replica running once, none lost, none doubled."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
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
    spawn_temporal,
    start_processes,
    stop_processes,
    wait_until,
)
from cloudless.client import CloudlessClient
from cloudless.codec import codec_for
from cloudless.contracts.workload import workflow_id as workload_workflow_id
from cloudless.model import NodeState
from cloudless.temporal import connect
from cloudless.testing.cluster import stop_exec_replicas
from cloudless.testing.front import SideFront
from cloudless.testing.workloads import sleeper
from cloudless.tls import TLSMaterial, secure_channel
from cloudless.transit.client import embedded_transit_settings
from cloudless.vocabulary import AdminAction

pytestmark = pytest.mark.temporal

PORTS = DevPorts.shifted(1300)  # clear of dev (0), devstack (1100), rotation (1600)
CLUSTER = "chaos"


#: Fronts the tests' clients use (stopped by tear_down).
_fronts: list[SideFront] = []


async def connect_stack(state: Path) -> Client:
    """An admin client with the stack's payload codec (its transit lives in the state
    dir), through a front of the test's own, so it reads Temporal while the stack's
    coordinator (whose front is the only other door) is dead."""
    front = await SideFront(state, CLUSTER).start()
    _fronts.append(front)
    codec = codec_for(embedded_transit_settings(state))
    return await connect(front.target, wait=30, codec=codec)


def _group_gone(pgid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)  # the leader is our child: reap it
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def kill9(state: Path, role: str) -> None:
    """SIGKILL the role's process group and wait until it released what the restart
    needs: its port (not the dying process's socket seen as "listening"), or for the
    jailed Temporal, the whole group gone (the server and its SQLite file with it)."""
    pids = json.loads((state / DEV_FILE).read_text())["pids"]
    os.killpg(pids[role], signal.SIGKILL)
    if role == "temporal":
        wait_until(lambda: _group_gone(pids[role]), "the killed Temporal to exit", 30)
        return
    ports = {"coordinator": PORTS.gateway}
    ports.update({f"agent/{a.name}": a.port + PORTS.agent_offset for a in DEV_AGENTS})
    port = ports[role]
    wait_until(lambda: not port_open(port), f"the killed {role} to release :{port}", 30)


def freeze(state: Path, agents: list[DevAgent], how: signal.Signals) -> None:
    """SIGSTOP or SIGCONT agent processes (not their groups: replicas keep running)."""
    pids = json.loads((state / DEV_FILE).read_text())["pids"]
    for a in agents:
        os.kill(pids[f"agent/{a.name}"], how)


async def tear_down(state: Path) -> None:
    """Stop the stack's processes, then any replica process an agent left running."""
    while _fronts:
        await _fronts.pop().stop()
    await asyncio.to_thread(stop_processes, state)
    for a in DEV_AGENTS:
        await stop_exec_replicas(a.name, state / "agents" / a.name)


def record_pid(state: Path, role: str, pid: int) -> None:
    record_process(state, role, pid)


async def running(
    state: Path, workload_name: str, skip: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """replica id -> nodes whose agent reports it Running (``skip``: agents that are down)."""
    material = TLSMaterial.load(state / "coordinator")
    out: dict[str, list[str]] = {}
    for a in DEV_AGENTS:
        if a.name in skip:
            continue
        address = f"127.0.0.1:{a.port + PORTS.agent_offset}"
        async with secure_channel(address, a.name, material.ca_pem, material) as ch:
            listed = await agent_pb2_grpc.AgentServiceStub(ch).ListReplicas(
                agent_pb2.ListReplicasRequest(workload=workload_name), timeout=10
            )
        for r in listed.replicas:
            if r.phase == "Running":
                out.setdefault(r.replica_id, []).append(a.name)
    return out


#: Activities that place or start replicas: what "rescheduling in flight" means.
PLACING = frozenset({"place_replicas", "run_replicas"})
_CLOSED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}


async def open_activities(
    temporal: Client, workflow_id: str, after_signal: str | None = None
) -> tuple[list[str], list[str]]:
    """(open, completed) activity types in a workflow's history, counting only those
    scheduled after the first ``after_signal`` (if given). Read from the Temporal server,
    not from a worker, so it works while the coordinator is dead and shows exactly what
    was in flight when it died."""
    history = await temporal.get_workflow_handle(workflow_id).fetch_history()
    counting = after_signal is None
    scheduled: dict[int, str] = {}
    completed: list[str] = []
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            name = e.workflow_execution_signaled_event_attributes.signal_name
            counting = counting or name == after_signal
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED and counting:
            scheduled[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
        elif e.event_type in _CLOSED:
            attrs = getattr(e, _CLOSED[e.event_type])
            kind = scheduled.pop(attrs.scheduled_event_id, None)
            if kind and e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                completed.append(kind)
    return sorted(scheduled.values()), completed


def ledger_matches(snapshot: Any, placed: dict[str, str], key: str, cpu_millis: int) -> None:
    """The ledger's per-node allocations are exactly the replicas the workload places."""
    for node in snapshot.nodes:
        here = sum(1 for n in placed.values() if n == node.node_id)
        assert node.workloads.get(key, 0) == here, (node.node_id, node.workloads, here)
        assert node.allocated.cpu_millis == here * cpu_millis, (node.node_id, node.allocated)
        assert node.replicas == here, (node.node_id, node.replicas)


async def test_kill9_coordinator_mid_placement_and_temporal_restart(tmp_path: Path) -> None:
    state = tmp_path / "stack"
    try:
        await asyncio.to_thread(start_processes, state, CLUSTER, ports=PORTS, runtimes=("exec",))
        client = CloudlessClient(await connect_stack(state), CLUSTER)
        for a in DEV_AGENTS:
            assert await client.wait_node(a.name, timeout=60) is not None
        name = "crashy"
        outcome = await client.apply(sleeper(name, 12), wait=False)
        kill9(state, "coordinator")  # mid-placement: the reconcile has just begun
        # The history as the coordinator left it: the replicas had not been started.
        wid = workload_workflow_id("default", name)
        _open, done = await open_activities(client.temporal, wid)
        assert "run_replicas" not in done, done  # killed before the workload settled
        pid = await asyncio.to_thread(spawn_coordinator, state, CLUSTER, PORTS)
        record_pid(state, "coordinator", pid)

        status = await client.wait("default", name, outcome.generation, 90, all_ready=True)
        assert status.ready == 12, status
        live = await running(state, name)
        assert all(len(nodes) == 1 for nodes in live.values()), live  # nothing doubled
        assert set(live) == {r.replica_id for r in status.replicas}  # nothing lost

        # Temporal dies hard and restarts on the same SQLite file: nothing is lost.
        kill9(state, "temporal")
        pid = await asyncio.to_thread(spawn_temporal, state, PORTS)
        record_pid(state, "temporal", pid)
        client = CloudlessClient(await connect_stack(state), CLUSTER)
        after = await client.wait("default", name, outcome.generation, 60, all_ready=True)
        assert {r.replica_id for r in after.replicas} == set(live)
        again = await client.apply(sleeper(name, 12), wait=True, timeout=60)
        assert again.action == "unchanged"
        assert set(await running(state, name)) == set(live)
        await client.delete("default", name)
        assert await running(state, name) == {}
    finally:
        await tear_down(state)


async def restart_coordinator(state: Path) -> None:
    pid = await asyncio.to_thread(spawn_coordinator, state, CLUSTER, PORTS)
    record_pid(state, "coordinator", pid)


async def _settled_away(
    client: CloudlessClient, name: str, node: str, want: int, timeout: float = 120
) -> Any:
    """The workload once ``want`` replicas are ready and none is on ``node``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await client.workload_status("default", name)
        if status.ready == want and all(r.node_id != node for r in status.replicas):
            return status
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.25)  # polled: no event to await across a coordinator restart


async def test_kill9_coordinator_mid_drain(tmp_path: Path) -> None:
    state = tmp_path / "stack"
    name = "drainy"
    try:
        await asyncio.to_thread(start_processes, state, CLUSTER, ports=PORTS, runtimes=("exec",))
        client = CloudlessClient(await connect_stack(state), CLUSTER)
        for a in DEV_AGENTS:
            assert await client.wait_node(a.name, timeout=60) is not None
        outcome = await client.apply(sleeper(name, 9), wait=False)
        await client.wait("default", name, outcome.generation, 60, all_ready=True)

        # Mid-drain: the drain is under way when the coordinator dies.
        drain = asyncio.create_task(client.node_admin("zone-b-1", AdminAction.DRAIN, timeout=180))
        deadline = asyncio.get_running_loop().time() + 30
        while (await client.describe_node("zone-b-1")).status.state != NodeState.DRAINING:  # type: ignore[union-attr]
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        kill9(state, "coordinator")
        record_pid(
            state, "coordinator", await asyncio.to_thread(spawn_coordinator, state, CLUSTER, PORTS)
        )
        drained = await asyncio.wait_for(drain, 180)
        assert drained.state == NodeState.DRAINED, drained
        status = await _settled_away(client, name, "zone-b-1", 9)
        live = await running(state, name)
        assert all(len(nodes) == 1 for nodes in live.values()), live
        assert set(live) == {r.replica_id for r in status.replicas}

        await client.delete("default", name)
        assert await running(state, name) == {}
    finally:
        await tear_down(state)


@pytest.mark.timeout(480)
async def test_kill9_coordinator_mid_rescheduling(tmp_path: Path) -> None:
    """An agent dies; once its node is Offline and the workload is placing or starting the
    replacements, the coordinator is killed too. Temporal retries what was in flight once
    its timeout expires (up to 2 minutes for a start), and the end state is exact."""
    state = tmp_path / "stack"
    name, cpu = "resched", 50  # sleeper's default request: 50m
    try:
        await asyncio.to_thread(start_processes, state, CLUSTER, ports=PORTS, runtimes=("exec",))
        client = CloudlessClient(await connect_stack(state), CLUSTER)
        for a in DEV_AGENTS:
            assert await client.wait_node(a.name, timeout=60) is not None
        outcome = await client.apply(sleeper(name, 9), wait=True, timeout=60)
        assert outcome.status is not None and outcome.status.ready == 9
        placed_on = [r.node_id for r in outcome.status.replicas]
        # The node with the most replicas dies: they need a real move.
        edge = max(DEV_AGENTS, key=lambda a: placed_on.count(a.name))
        on_edge = {r.replica_id for r in outcome.status.replicas if r.node_id == edge.name}
        assert on_edge, outcome.status.replicas

        # The surviving agents are frozen (SIGSTOP; their connections stay open, so they
        # stay Ready for seconds): the replacements' start cannot complete, so the kill
        # below lands mid-rescheduling every time instead of racing a millisecond
        # placement. Their replica processes keep running (only the agent is stopped).
        survivors = [a for a in DEV_AGENTS if a is not edge]
        freeze(state, survivors, signal.SIGSTOP)
        try:
            kill9(state, f"agent/{edge.name}")
            # Wait, through Temporal's history, for the node to be declared Offline (its
            # workloads get ``replicas_lost``) and for a start to be in flight.
            wid = workload_workflow_id("default", name)
            deadline = asyncio.get_running_loop().time() + 30
            while (
                "run_replicas"
                not in (await open_activities(client.temporal, wid, "replicas_lost"))[0]
            ):
                assert asyncio.get_running_loop().time() < deadline, "no rescheduling seen"
                await asyncio.sleep(0.05)  # polled: history changes are not pushed to clients
            kill9(state, "coordinator")
        finally:
            # Resumed, an agent may still read the dead coordinator's start request from
            # its socket and start the replica: the retry must adopt it, not double it.
            freeze(state, survivors, signal.SIGCONT)
        in_flight, _done = await open_activities(client.temporal, wid, "replicas_lost")
        assert PLACING & set(in_flight), in_flight  # the kill landed mid-rescheduling
        record_pid(
            state, "coordinator", await asyncio.to_thread(spawn_coordinator, state, CLUSTER, PORTS)
        )

        status = await _settled_away(client, name, edge.name, 9, timeout=300)
        assert len(status.replicas) == 9, status.replicas
        assert not on_edge & {r.replica_id for r in status.replicas}  # replaced, not reused
        live = await running(state, name, skip=(edge.name,))
        assert all(len(nodes) == 1 for nodes in live.values()), live  # nothing doubled
        placed = {r.replica_id: r.node_id for r in status.replicas}
        assert {rid: nodes[0] for rid, nodes in live.items()} == placed  # nothing lost
        ledger_matches(await client.snapshot(), placed, f"default/{name}", cpu)

        # The agent returns: the copies that were replaced are stopped before it is Ready.
        proc, ready = await asyncio.to_thread(
            _spawn_agent, state, CLUSTER, PORTS, edge, ("exec",), None
        )
        record_pid(state, f"agent/{edge.name}", proc.pid)
        await asyncio.to_thread(wait_until, ready.exists, f"{edge.name} to restart", 60, proc)
        assert await client.wait_node(edge.name, [NodeState.READY], timeout=60) is not None
        live = await running(state, name)
        assert {rid: nodes for rid, nodes in live.items()} == {
            rid: [node] for rid, node in placed.items()
        }  # exactly one process per replica id, where the workload placed it
        ledger_matches(await client.snapshot(), placed, f"default/{name}", cpu)
        await client.delete("default", name)
        assert await running(state, name) == {}
    finally:
        await tear_down(state)
