"""Crash safety of the control plane, with real processes: ``kill -9`` of the coordinator
in the middle of a placement, and of the Temporal dev server, then restarts. The end state
must be exactly right: every replica running once, none lost, none doubled."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from agent.runtime.exec import ExecDriver
from cloudless.api import agent_pb2, agent_pb2_grpc
from cloudless.client import CloudlessClient
from cloudless.codec import codec_for
from cloudless.devstack import (
    DEV_AGENTS,
    DEV_FILE,
    DevPorts,
    _spawn_agent,
    port_open,
    spawn_coordinator,
    spawn_temporal,
    start_processes,
    stop_processes,
    wait_until,
)
from cloudless.model import NodeState
from cloudless.temporal import connect
from cloudless.testing.workloads import sleeper
from cloudless.tls import TLSMaterial, secure_channel
from cloudless.transit.client import embedded_transit_settings

pytestmark = pytest.mark.temporal

PORTS = DevPorts.shifted(1300)  # clear of dev (0), devstack (1100), rotation (1600)
CLUSTER = "chaos"


async def connect_stack(state: Path) -> Client:
    """A client with the stack's payload codec (its transit lives in the state dir)."""
    codec = codec_for(embedded_transit_settings(state))
    return await connect(f"127.0.0.1:{PORTS.temporal}", wait=30, codec=codec)


def kill9(state: Path, role: str) -> None:
    """SIGKILL the role's process group and wait until its port is released, so that the
    restart binds it (instead of seeing the dying process's socket as "listening")."""
    pids = json.loads((state / DEV_FILE).read_text())["pids"]
    os.killpg(pids[role], signal.SIGKILL)
    ports = {"temporal": PORTS.temporal, "coordinator": PORTS.gateway}
    ports.update({f"agent/{a.name}": a.port + PORTS.agent_offset for a in DEV_AGENTS})
    port = ports[role]
    wait_until(lambda: not port_open(port), f"the killed {role} to release :{port}", 30)


def record_pid(state: Path, role: str, pid: int) -> None:
    path = state / DEV_FILE
    data = json.loads(path.read_text())
    data["pids"][role] = pid
    path.write_text(json.dumps(data))


async def running(state: Path, workload_name: str) -> dict[str, list[str]]:
    """replica id -> nodes whose agent reports it Running."""
    material = TLSMaterial.load(state / "coordinator")
    out: dict[str, list[str]] = {}
    for a in DEV_AGENTS:
        address = f"127.0.0.1:{a.port + PORTS.agent_offset}"
        async with secure_channel(address, a.name, material.ca_pem, material) as ch:
            listed = await agent_pb2_grpc.AgentServiceStub(ch).ListReplicas(
                agent_pb2.ListReplicasRequest(workload=workload_name), timeout=10
            )
        for r in listed.replicas:
            if r.phase == "Running":
                out.setdefault(r.replica_id, []).append(a.name)
    return out


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
        await asyncio.to_thread(stop_processes, state)
        for a in DEV_AGENTS:
            d = state / "agents" / a.name
            if (d / "replicas").exists():
                drv = ExecDriver(a.name, d)
                for s in await drv.list():
                    await drv.stop(s.replica_id, 1.0)


async def restart_coordinator(state: Path) -> None:
    pid = await asyncio.to_thread(spawn_coordinator, state, CLUSTER, PORTS)
    record_pid(state, "coordinator", pid)


async def _settled_away(client: CloudlessClient, name: str, node: str, want: int) -> Any:
    """The workload once ``want`` replicas are ready and none is on ``node``."""
    deadline = asyncio.get_running_loop().time() + 120
    while True:
        status = await client.workload_status("default", name)
        if status.ready == want and all(r.node_id != node for r in status.replicas):
            return status
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.25)  # polled: no event to await across a coordinator restart


async def test_kill9_coordinator_mid_drain_and_mid_rescheduling(tmp_path: Path) -> None:
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
        drain = asyncio.create_task(client.node_admin("zone-b-1", "drain", timeout=180))
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

        # Mid-rescheduling: an agent dies, and so does the coordinator right after.
        await client.node_admin("zone-b-1", "uncordon")
        edge = next(a for a in DEV_AGENTS if a.name == "edge-1")
        on_edge = {r.replica_id for r in status.replicas if r.node_id == edge.name}
        kill9(state, f"agent/{edge.name}")
        kill9(state, "coordinator")
        record_pid(
            state, "coordinator", await asyncio.to_thread(spawn_coordinator, state, CLUSTER, PORTS)
        )
        status = await _settled_away(client, name, edge.name, 9)
        assert not on_edge & {r.replica_id for r in status.replicas}  # replaced, not reused
        # The agent returns: whatever was moved away is stopped, nothing runs twice.
        proc, ready = await asyncio.to_thread(
            _spawn_agent, state, CLUSTER, PORTS, edge, ("exec",), None
        )
        record_pid(state, f"agent/{edge.name}", proc.pid)
        await asyncio.to_thread(wait_until, ready.exists, "edge-1 to restart", 60, proc)
        assert await client.wait_node(edge.name, [NodeState.READY], timeout=60) is not None
        live = await running(state, name)
        assert all(len(nodes) == 1 for nodes in live.values()), live
        assert set(live) == {r.replica_id for r in status.replicas}
        await client.delete("default", name)
        assert await running(state, name) == {}
    finally:
        await asyncio.to_thread(stop_processes, state)
        for a in DEV_AGENTS:
            d = state / "agents" / a.name
            if (d / "replicas").exists():
                drv = ExecDriver(a.name, d)
                for s in await drv.list():
                    await drv.stop(s.replica_id, 1.0)
