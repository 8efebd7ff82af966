"""Membership and churn: a killed agent's replicas move elsewhere; when it comes back its
stale replicas are stopped, so no replica id runs on two nodes; cordon and drain."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment

from cloudless.client import CloudlessClient
from cloudless.model import NodeAdminInput, NodeState, ReplicaPhase
from cloudless.spec import parse_workload
from cloudless.testing.cluster import LocalCluster, exec_cluster, running_on_agents
from cloudless.testing.workloads import sleeper
from cloudless.vocabulary import AdminAction
from tests.conftest import unique

pytestmark = pytest.mark.temporal


@pytest.fixture(scope="module")
async def churn_cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    suffix = uuid.uuid4().hex[:5]
    async with exec_cluster(
        temporal_env.client, "churn", suffix=suffix, heartbeat_ttl=3.0, suspect_grace=0.5
    ) as cluster:
        for i, zone in enumerate(["zone-a", "zone-b", "zone-c"]):
            await cluster.add_agent(f"n{i}-{suffix}", zone=zone, runtimes=["exec"])
        yield cluster


async def test_killed_agent_replicas_move_and_return_is_reconciled(
    churn_cluster: LocalCluster,
) -> None:
    c = CloudlessClient(churn_cluster.client, churn_cluster.cluster)
    name = unique("churn")
    outcome = await c.apply(sleeper(name, 3), wait=True, timeout=60)
    assert outcome.status is not None and outcome.status.ready == 3
    victim = outcome.status.replicas[0].node_id
    on_victim = {r.replica_id for r in outcome.status.replicas if r.node_id == victim}

    await churn_cluster.kill_agent(victim)
    node = await c.wait_node(victim, [NodeState.OFFLINE], timeout=20)
    assert node is not None and node.state == NodeState.OFFLINE
    status = await c.wait(
        "default", name, outcome.generation, 30, all_ready=True, avoid_node=victim
    )
    assert status.ready == 3
    assert all(r.node_id != victim for r in status.replicas)
    assert not on_victim & {r.replica_id for r in status.replicas}

    # The agent returns; its replicas were moved, so it must stop them before Ready.
    await churn_cluster.restart_agent(victim)
    details = await c.describe_node(victim)
    assert details.status is not None
    states = [t.state.value for t in details.status.transitions]
    assert states[-3:] == ["Suspect", "Offline", "Ready"], states
    running = await running_on_agents(churn_cluster, name)
    assert all(len(nodes) == 1 for nodes in running.values()), running  # never twice
    assert set(running) == {r.replica_id for r in status.replicas}
    await c.delete("default", name)


async def test_cordon_stops_placements_and_drain_moves_replicas(
    churn_cluster: LocalCluster,
) -> None:
    c = CloudlessClient(churn_cluster.client, churn_cluster.cluster)
    name = unique("drain")
    outcome = await c.apply(sleeper(name, 3, minAvailable=2), wait=True, timeout=60)
    assert outcome.status is not None and outcome.status.ready == 3
    target = outcome.status.replicas[0].node_id
    handle = c.node(target)

    cordoned = await handle.admin(NodeAdminInput(action=AdminAction.CORDON))
    assert cordoned.state == NodeState.CORDONED
    scaled = await c.scale("default", name, 6)
    s6 = await c.wait("default", name, scaled.generation, 30, all_ready=True)
    before = sum(1 for r in outcome.status.replicas if r.node_id == target)
    assert sum(1 for r in s6.replicas if r.node_id == target) == before  # none added

    drained = await handle.admin(NodeAdminInput(action=AdminAction.DRAIN))
    assert drained.state == NodeState.DRAINED
    after = await c.wait("default", name, scaled.generation, 30, all_ready=True)
    assert after.ready == 6 and all(r.node_id != target for r in after.replicas)
    assert all(r.phase == ReplicaPhase.RUNNING for r in after.replicas)
    running = await running_on_agents(churn_cluster, name)
    assert target not in {n for nodes in running.values() for n in nodes}

    back = await handle.admin(NodeAdminInput(action=AdminAction.UNCORDON))
    assert back.state == NodeState.READY
    await c.delete("default", name)


async def test_replica_the_agent_gives_up_on_is_replaced(churn_cluster: LocalCluster) -> None:
    """restartPolicy Never: the agent leaves a crashed replica down and reports it as
    terminal in its heartbeat; the workload replaces it."""
    c = CloudlessClient(churn_cluster.client, churn_cluster.cluster)
    name = unique("crash")
    w = parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "runtime": "exec",
                "restartPolicy": "Never",
                "container": {"command": ["sleep"], "args": ["600"]},
                "resources": {"cpu": "50m", "memory": "8Mi"},
            },
        }
    )
    outcome = await c.apply(w, wait=True, timeout=60)
    assert outcome.status is not None
    (first,) = outcome.status.replicas
    from agent.runtime.exec import ExecDriver

    driver = ExecDriver(first.node_id, churn_cluster.agents[first.node_id].state_dir)
    (st,) = [s for s in await driver.list() if s.replica_id == first.replica_id]
    os.kill(int(st.runtime_id), signal.SIGKILL)  # the process dies; nobody restarts it
    # The report arrives with the next heartbeat; each wait returns once settled.
    deadline = asyncio.get_running_loop().time() + 30
    status = outcome.status
    while first.replica_id in {r.replica_id for r in status.replicas}:
        assert asyncio.get_running_loop().time() < deadline, status
        status = await c.wait("default", name, outcome.generation, 5, all_ready=True)
    assert status.ready == 1
    assert status.replicas[0].replica_id != first.replica_id
    await c.delete("default", name)


async def test_agent_returning_with_new_address_and_labels_is_updated(
    churn_cluster: LocalCluster,
) -> None:
    from cloudless.testing.cluster import free_port

    c = CloudlessClient(churn_cluster.client, churn_cluster.cluster)
    name = sorted(churn_cluster.agents)[-1]
    await churn_cluster.kill_agent(name)
    await c.wait_node(name, [NodeState.OFFLINE], timeout=20)
    moved_to = f"127.0.0.1:{free_port()}"
    await churn_cluster.restart_agent(
        name, listen=moved_to, advertise=moved_to, labels={"roamed": "yes"}
    )  # waits for Ready: reconciliation reached the agent at its new address
    details = await c.describe_node(name)
    assert details.node.address == moved_to and details.node.labels == {"roamed": "yes"}
    assert details.status is not None
    assert any("updated" in t.reason and "address" in t.reason for t in details.status.transitions)
