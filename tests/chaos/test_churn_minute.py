"""One minute of continuous churn: agents join and die every few seconds while a workload
runs. At the end every dead agent comes back once. Invariants: the workload converges to
its desired count, no replica id runs on two nodes, the ledger's allocations match the
replicas exactly, nothing is lost."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid

import pytest
from temporalio.testing import WorkflowEnvironment

from agent.runtime.exec import ExecDriver
from cloudless.client import CloudlessClient
from cloudless.spec import parse_workload
from cloudless.testing.cluster import exec_cluster

pytestmark = pytest.mark.temporal

SECONDS = float(os.environ.get("CLOUDLESS_CHURN_SECONDS", "60"))
REPLICAS = 6
CPU = 50


async def test_one_minute_of_churn(temporal_env: WorkflowEnvironment) -> None:
    rng = random.Random(20261125)
    async with exec_cluster(
        temporal_env.client,
        "minute",
        suffix=uuid.uuid4().hex[:4],
        heartbeat_ttl=3.0,
        suspect_grace=0.5,
    ) as cluster:
        root = cluster.root
        c = CloudlessClient(cluster.client, cluster.cluster)
        names = iter(f"m{i}" for i in range(1000))
        killed: list[str] = []
        for _ in range(4):
            await cluster.add_agent(next(names), runtimes=["exec"])
        w = parse_workload(
            {
                "apiVersion": "cloudless.dev/v1",
                "kind": "Workload",
                "metadata": {"name": "churny"},
                "spec": {
                    "replicas": REPLICAS,
                    "runtime": "exec",
                    "strategy": "spread",
                    "container": {"command": ["sleep"], "args": ["900"]},
                    "resources": {"cpu": f"{CPU}m", "memory": "8Mi"},
                },
            }
        )
        outcome = await c.apply(w, wait=True, timeout=60)
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(2.0, 4.0))  # the churn's own pace
            alive = list(cluster.agents)
            if len(alive) > 3 and rng.random() < 0.5:
                victim = rng.choice(alive)
                await cluster.kill_agent(victim)
                killed.append(victim)
            else:
                await cluster.add_agent(next(names), runtimes=["exec"], wait_ready=False)
        # Every node that died comes back once; its stale replicas must be stopped.
        for name in killed:
            await cluster.restart_agent(name)
        for name in cluster.agents:
            await cluster.wait_node_ready(name, timeout=60)
        status = await c.wait("default", "churny", outcome.generation, 90, all_ready=True)
        assert status.ready == REPLICAS and len(status.replicas) == REPLICAS

        runs: dict[str, list[str]] = {}
        for name in cluster.agents:
            for s in await ExecDriver(name, root / "agents" / name).list():
                if s.phase.value == "Running":
                    runs.setdefault(s.replica_id, []).append(name)
        assert all(len(nodes) == 1 for nodes in runs.values()), runs  # never twice
        assert {rid: nodes[0] for rid, nodes in runs.items()} == {
            r.replica_id: r.node_id for r in status.replicas
        }  # exactly what the control plane records: nothing lost, nothing extra
        snap = await c.snapshot()
        assert sum(n.allocated.cpu_millis for n in snap.nodes) == REPLICAS * CPU
        assert sum(n.replicas for n in snap.nodes) == REPLICAS
        assert len(killed) >= 3  # the churn really happened
        await c.delete("default", "churny")
