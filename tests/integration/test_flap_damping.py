"""Flap damping on the real dev server: planned agent restarts are not churn, repeated
crashes hold the node back and lower its reliability inputs, and a held node still
applies admin updates at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from cloudless.client import CloudlessClient
from cloudless.contracts.node import workflow_id as node_workflow_id
from cloudless.model import NodeState, NodeStatus
from cloudless.testing.cluster import LocalCluster, exec_cluster
from cloudless.vocabulary import AdminAction
from workflows.node import NodeWorkflow

pytestmark = pytest.mark.temporal


@pytest.fixture(scope="module")
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    async with exec_cluster(temporal_env.client, "flap", heartbeat_ttl=3.0, suspect_grace=0.5) as c:
        yield c


async def status_of(c: CloudlessClient, name: str) -> NodeStatus:
    details = await c.describe_node(name)
    assert details.status is not None
    return details.status


async def test_graceful_restarts_are_not_churn(cluster: LocalCluster) -> None:
    c = CloudlessClient(cluster.client, cluster.cluster)
    name = f"calm-{uuid.uuid4().hex[:4]}"
    await cluster.add_agent(name, runtimes=["exec"])
    for _ in range(4):  # more than the damping threshold
        await cluster.stop_agent(name)  # sends `closing`: a planned restart
        node = await c.wait_node(name, [NodeState.SUSPECT], timeout=10)
        assert node is not None and node.state == NodeState.SUSPECT
        started = asyncio.get_running_loop().time()
        await cluster.restart_agent(name)
        assert asyncio.get_running_loop().time() - started < 5  # never held
    status = await status_of(c, name)
    assert status.churn == [] and status.offline_seconds == 0.0
    assert status.planned_since is None and status.held_until is None
    node = await c.wait_node(name, [NodeState.READY], timeout=5)
    assert node is not None and node.churn == 0 and node.uptime_ratio == 1.0

    # A restart that outlasts the TTL was an outage after all, counted from when it left.
    await cluster.stop_agent(name)
    left = datetime.now(UTC)
    node = await c.wait_node(name, [NodeState.OFFLINE], timeout=10)
    assert node is not None and node.state == NodeState.OFFLINE
    await cluster.restart_agent(name)
    status = await status_of(c, name)
    assert len(status.churn) == 1 and abs((status.churn[0] - left).total_seconds()) < 1
    assert status.offline_seconds >= cluster.heartbeat_ttl and status.planned_since is None


async def test_crashes_damp_and_admin_updates_apply_during_the_hold(
    cluster: LocalCluster,
) -> None:
    c = CloudlessClient(cluster.client, cluster.cluster)
    name = f"flappy-{uuid.uuid4().hex[:4]}"
    await cluster.add_agent(name, runtimes=["exec"])
    for i in range(3):
        await cluster.kill_agent(name)  # a crash: the stream breaks
        node = await c.wait_node(name, [NodeState.OFFLINE], timeout=10)
        assert node is not None and node.state == NodeState.OFFLINE
        await cluster.restart_agent(name, wait_ready=i < 2)
    # The third return is held (3 crashes within 10 minutes: 10 s).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    status = await status_of(c, name)
    while status.held_until is None:
        assert loop.time() < deadline, status
        await asyncio.sleep(0.1)
        status = await status_of(c, name)
    assert len(status.churn) == 3
    held_until = status.held_until
    cordoned = await c.node_admin(name, AdminAction.CORDON, timeout=5)  # not queued behind the hold
    assert datetime.now(UTC) < held_until
    assert cordoned.admin == "Cordoned" and cordoned.state == NodeState.OFFLINE
    node = await c.wait_node(name, [NodeState.CORDONED], timeout=20)
    assert node is not None and node.state == NodeState.CORDONED
    assert datetime.now(UTC) >= held_until  # Ready (hence Cordoned) only after the hold
    assert node.churn == 3 and node.uptime_ratio < 1.0  # reliability inputs dropped
    back = await c.node_admin(name, AdminAction.UNCORDON, timeout=10)
    assert back.state == NodeState.READY and back.held_until is None
    history = await c.temporal.get_workflow_handle(node_workflow_id(name)).fetch_history()
    replayer = Replayer(workflows=[NodeWorkflow], data_converter=cluster.client.data_converter)
    await replayer.replay_workflow(history)  # the hold, its patch and the cordon replay
