"""Several coordinators, one agent given all their gateways: enrollment through any,
heartbeat failover, and a node's liveness owned by the gateway holding its stream."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import cast

import pytest
from temporalio.testing import WorkflowEnvironment

from cloudless.client import CloudlessClient
from cloudless.model import NodeState, ReplicaPhase
from cloudless.testing.cluster import LocalCluster, exec_cluster, free_port
from cloudless.testing.workloads import sleeper
from policies.liveness import Health
from tests.conftest import unique
from workers.coordinator import Coordinator

pytestmark = pytest.mark.temporal

GRACE = 1.5


@pytest.fixture
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    async with exec_cluster(
        temporal_env.client, "mgw", heartbeat_ttl=4.0, suspect_grace=GRACE
    ) as c:
        yield c


async def test_agent_fails_over_and_the_left_gateway_cannot_mark_it_offline(
    cluster: LocalCluster,
) -> None:
    first = cast(Coordinator, cluster.coordinator)
    assert first.liveness is not None and first._agent_server is not None
    c = CloudlessClient(cluster.client, cluster.cluster)
    name = f"mg-{uuid.uuid4().hex[:4]}"
    dead = f"127.0.0.1:{free_port()}"  # nobody listens: enrollment moves on
    # The second coordinator's addresses are known before it runs (ports picked now).
    second_gateway, second_agent = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    handle = await cluster.add_agent(
        name,
        runtimes=["exec"],
        gateways=[dead, cluster.gateway, second_gateway],
        agent_gateways=[cluster.agent_gateway, second_agent],
    )
    recorded = json.loads((handle.state_dir / "node.json").read_text())
    assert recorded["gateway"] == cluster.gateway
    assert recorded["gateways"] == [dead, cluster.gateway, second_gateway]
    assert handle.heartbeat.gateway == cluster.agent_gateway

    w = unique("mgw")
    outcome = await c.apply(sleeper(w, 2), wait=True, timeout=60)
    assert outcome.status is not None and outcome.status.ready == 2
    before = {r.replica_id for r in outcome.status.replicas}
    owner = (await c.describe_node(name)).status
    assert owner is not None and owner.gateway == first.liveness.gateway_id
    seen = len(owner.transitions)

    # The second coordinator starts now: it adopts the node as healthy from the ledger,
    # so the node's arrival there is no health change for its table.
    second: Coordinator = await cluster.add_coordinator(
        gateway_listen=second_gateway, agent_listen=second_agent
    )

    # The first coordinator's agent listener goes away; the coordinator itself lives on,
    # so its table sees a broken stream and reports Suspect, then Offline after the grace.
    await first._agent_server.stop(grace=None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    target = second_agent
    while not (handle.heartbeat.connected.is_set() and handle.heartbeat.gateway == target):
        assert loop.time() < deadline, "the agent did not fail over"
        await asyncio.sleep(0.05)
    deadline = loop.time() + 10
    while first.liveness.table.health(name) is not Health.OFFLINE:
        assert loop.time() < deadline, "the left gateway never wrote the node off"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # its stale Offline has been delivered by now

    details = await c.describe_node(name)
    status = details.status
    assert status is not None
    assert status.state == NodeState.READY, status.transitions
    assert second.liveness is not None and status.gateway == second.liveness.gateway_id
    since = [t.state for t in status.transitions[seen:]]
    assert NodeState.OFFLINE not in since, since  # at most a Suspect blip
    now = await c.workload_status("default", w)
    assert {r.replica_id for r in now.replicas} == before  # nothing rescheduled
    assert all(r.phase == ReplicaPhase.RUNNING and not r.lost for r in now.replicas)

    # The second gateway owns the node now: a crash is still noticed, through it.
    await cluster.kill_agent(name)
    node = await c.wait_node(name, [NodeState.OFFLINE], timeout=15)
    assert node is not None and node.state == NodeState.OFFLINE
    await c.delete("default", w)
