"""Hollow nodes (``cloudless.testing.hollow``): simulated nodes that enroll, beat and accept
replicas like real agents, so the control plane can be exercised at scale on one machine."""

from __future__ import annotations

import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from cloudless.client import CloudlessClient
from cloudless.model import NodeState, ReplicaPhase
from cloudless.spec import parse_workload
from cloudless.testing.cluster import LocalCluster
from cloudless.testing.hollow import HollowFleet, fleet_specs, wait_ready

pytestmark = [pytest.mark.temporal]

NODES = 40


@pytest.fixture(scope="module")
async def hollow(
    temporal_env: WorkflowEnvironment,
) -> AsyncIterator[tuple[HollowFleet, LocalCluster]]:
    suffix = uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory(prefix="cl-") as d:
        cluster = LocalCluster(temporal_env.client, Path(d), cluster=f"h-{suffix}")
        await cluster.start()
        fleet = HollowFleet.for_cluster(cluster, fleet_specs(NODES, seed=7, prefix=f"h{suffix}-"))
        try:
            await fleet.start()
            await wait_ready(cluster.client, cluster.cluster, set(fleet.nodes), timeout=300)
            yield fleet, cluster
        finally:
            await fleet.stop()
            await cluster.close()


def test_fleet_specs_are_heterogeneous_and_seeded() -> None:
    specs = fleet_specs(500, seed=1)
    assert specs == fleet_specs(500, seed=1)
    kinds = Counter(s.labels["kind"] for s in specs)
    assert set(kinds) == {"phone", "laptop", "pc", "vps", "gateway"}
    assert len({s.zone for s in specs}) == 16
    assert len({s.cpu_millis for s in specs}) >= 5


async def test_hollow_nodes_enroll_and_run_a_workload(
    hollow: tuple[HollowFleet, LocalCluster],
) -> None:
    fleet, cluster = hollow
    client = CloudlessClient(cluster.client, cluster.cluster)
    snap = await client.snapshot()
    nodes = {n.node_id: n for n in snap.nodes}
    assert len(nodes) == NODES and all(n.state == NodeState.READY for n in nodes.values())
    assert all(n.region.startswith("region-") for n in nodes.values())
    w = parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": "fleet", "labels": {"app": "fleet"}},
            "spec": {
                "replicas": 80,
                "strategy": "zone-spread",
                "container": {"image": "cloudless/busybox:latest"},
                "resources": {"cpu": "100m", "memory": "64Mi"},
            },
        }
    )
    out = await client.apply(w, wait=True, timeout=120)
    status = await client.wait("default", "fleet", out.generation, 120, all_ready=True)
    assert status.ready == 80
    # Every replica is where the control plane put it, on a hollow node, and nowhere else.
    placed = Counter(r.node_id for r in status.replicas if r.phase == ReplicaPhase.RUNNING)
    running = {name: node.replicas for name, node in fleet.nodes.items() if node.replicas}
    assert running == dict(placed)
    # No gateway (tainted NoSchedule) got any.
    gateways = {s.name for s in fleet.specs if s.labels["kind"] == "gateway"}
    assert not gateways & set(placed)
    await client.delete("default", "fleet")
    assert all(node.replicas == 0 for node in fleet.nodes.values())
