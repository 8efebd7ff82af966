"""Crash safety of the control plane, with real processes: ``kill -9`` of the coordinator
in the middle of a placement, and of the Temporal dev server, then restarts. The end state
must be exactly right: every replica running once, none lost, none doubled."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

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
    port_open,
    spawn_coordinator,
    spawn_temporal,
    start_processes,
    stop_processes,
    wait_until,
)
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
    port = {"temporal": PORTS.temporal, "coordinator": PORTS.gateway}[role]
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
