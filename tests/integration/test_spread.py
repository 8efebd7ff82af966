"""Where replicas actually land (issue 10, item 7), on the real Temporal dev server and agents:
``examples/hello.yaml`` puts one replica on each of the dev cluster's three nodes, with its
own ``strategy: spread`` and with the default strategy; ``spread`` fills every node once
before any twice; and a replacement after a drain or a lost node goes where the workload has
no replica yet, so no node holds more than ``replicas - minAvailable`` while there is room.

The distribution is asserted twice: as the control plane records it and as the agents
report what they run. The cluster has the dev cluster's shape (zone-a 2 CPU / 2 GiB,
zone-b 4 / 4, edge 1 / 1) with the exec runtime, so no container engine is needed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.testing import WorkflowEnvironment

from cloudless.client import CloudlessClient
from cloudless.model import NodeState, ReplicaPhase, WorkloadStatus
from cloudless.spec import Workload, parse_workload
from cloudless.testing.cluster import LocalCluster, exec_cluster, running_on_agents
from cloudless.testing.workloads import sleeper
from cloudless.vocabulary import AdminAction
from tests.conftest import unique

pytestmark = pytest.mark.temporal

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello.yaml"


@pytest.fixture(scope="module")
async def three_nodes(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    suffix = uuid.uuid4().hex[:5]
    async with exec_cluster(
        temporal_env.client, "spread", suffix=suffix, heartbeat_ttl=3.0, suspect_grace=0.5
    ) as cluster:
        for name, zone, cpu, memory in (
            ("zone-a", "zone-a", "2", "2Gi"),
            ("zone-b", "zone-b", "4", "4Gi"),
            ("edge", "edge", "1", "1Gi"),
        ):
            await cluster.add_agent(
                f"{name}-{suffix}", zone=zone, cpu=cpu, memory=memory, runtimes=["exec"]
            )
        yield cluster


def hello(name: str, **spec: Any) -> Workload:
    """examples/hello.yaml as shipped (replicas, minAvailable, strategy, resources), run by
    the exec runtime: ``sleep`` instead of busybox httpd in a container. ``spec`` overrides
    fields; a value of None removes one (the default then applies)."""
    data = yaml.safe_load(HELLO.read_text())
    data["metadata"]["name"] = name
    data["spec"]["runtime"] = "exec"
    data["spec"]["container"] = {"command": ["sleep"], "args": ["3600"]}
    for key, value in spec.items():
        if value is None:
            data["spec"].pop(key, None)
        else:
            data["spec"][key] = value
    return parse_workload(data)


async def until(
    c: CloudlessClient,
    name: str,
    predicate: Callable[[WorkloadStatus], bool],
    timeout: float = 60.0,
) -> WorkloadStatus:
    """Await a workload status satisfying ``predicate``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await c.workload_status("default", name)
        if predicate(status):
            return status
        assert loop.time() < deadline, status
        await asyncio.sleep(0.1)


def running(status: WorkloadStatus) -> list[str]:
    """Nodes of the Running replicas, one entry per replica."""
    return [r.node_id for r in status.replicas if r.phase == ReplicaPhase.RUNNING]


async def on_agents(cluster: LocalCluster, name: str) -> Counter[str]:
    """Replicas per node as the agents report them; each replica runs on one node only."""
    where = await running_on_agents(cluster, name)
    assert all(len(nodes) == 1 for nodes in where.values()), where
    return Counter(nodes[0] for nodes in where.values())


async def placed(cluster: LocalCluster, c: CloudlessClient, w: Workload) -> Counter[str]:
    """Apply, wait until every replica runs, and return replicas per node (checked against
    what the agents run)."""
    replicas = w.spec.replicas
    outcome = await c.apply(w, wait=True, timeout=60)
    status = await until(c, w.metadata.name, lambda s: len(running(s)) == replicas)
    recorded = Counter(running(status))
    assert outcome.status is not None
    assert await on_agents(cluster, w.metadata.name) == recorded
    return recorded


@pytest.mark.parametrize("strategy", ["spread", None], ids=["as-shipped", "default-strategy"])
async def test_hello_yaml_lands_one_replica_per_node(
    three_nodes: LocalCluster, strategy: str | None
) -> None:
    c = CloudlessClient(three_nodes.client, three_nodes.cluster)
    name = unique("hello")
    w = hello(name, strategy=strategy)
    assert (w.spec.replicas, w.spec.min_available) == (3, 2)
    assert w.spec.strategy == (strategy or "binpack")
    per_node = await placed(three_nodes, c, w)
    assert per_node == Counter(dict.fromkeys(three_nodes.agents, 1)), per_node
    await c.delete("default", name)


async def test_spread_fills_every_node_once_before_any_twice(three_nodes: LocalCluster) -> None:
    c = CloudlessClient(three_nodes.client, three_nodes.cluster)
    name = unique("spread")
    # minAvailable 0 sets no cap of its own: the spreading is the strategy's alone.
    w = hello(name, replicas=5, minAvailable=0, strategy="spread")
    per_node = await placed(three_nodes, c, w)
    assert set(per_node) == set(three_nodes.agents), per_node
    assert sorted(per_node.values()) == [1, 2, 2], per_node
    # scaled up, the new replicas go to the node with the fewest first
    await c.scale("default", name, 6)
    status = await until(c, name, lambda s: len(running(s)) == 6)
    assert Counter(running(status)) == Counter(dict.fromkeys(three_nodes.agents, 2))
    assert await on_agents(three_nodes, name) == Counter(running(status))
    await c.delete("default", name)


async def test_a_drained_nodes_replacement_respects_the_cap(three_nodes: LocalCluster) -> None:
    c = CloudlessClient(three_nodes.client, three_nodes.cluster)
    name = unique("capped")
    # Default strategy (binpack), two replicas, minAvailable 1: at most one per node.
    w = sleeper(name, 2, strategy="binpack", minAvailable=1)
    first = await placed(three_nodes, c, w)
    assert sorted(first.values()) == [1, 1], first
    target = sorted(first)[0]
    survivor = next(n for n in first if n != target)
    empty = next(n for n in three_nodes.agents if n not in first)
    await c.node_admin(target, AdminAction.DRAIN, "spread test", timeout=60)
    try:
        status = await until(
            c,
            name,
            lambda s: len(running(s)) == 2 and target not in running(s),
        )
        # The replacement took the empty node, not a second slot next to the survivor.
        assert Counter(running(status)) == Counter({survivor: 1, empty: 1}), status
        assert await on_agents(three_nodes, name) == Counter({survivor: 1, empty: 1})
    finally:
        await c.node_admin(target, AdminAction.UNCORDON)
        await c.delete("default", name)


async def test_a_lost_nodes_replacement_respects_the_cap(three_nodes: LocalCluster) -> None:
    c = CloudlessClient(three_nodes.client, three_nodes.cluster)
    name = unique("lost")
    w = sleeper(name, 2, strategy="binpack", minAvailable=1)
    first = await placed(three_nodes, c, w)
    assert sorted(first.values()) == [1, 1], first
    lost = sorted(first)[0]
    survivor = next(n for n in first if n != lost)
    empty = next(n for n in three_nodes.agents if n not in first)
    await three_nodes.kill_agent(lost)
    try:
        status = await until(
            c,
            name,
            lambda s: sorted(running(s)) == sorted([survivor, empty]),
        )
        assert Counter(running(status)) == Counter({survivor: 1, empty: 1}), status
        assert await on_agents(three_nodes, name) == Counter({survivor: 1, empty: 1})
    finally:
        await three_nodes.restart_agent(lost)
        node = await c.wait_node(lost, [NodeState.READY], 30)
        assert node is not None and node.state == NodeState.READY
        await c.delete("default", name)
