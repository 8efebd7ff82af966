"""Reservations never leak: a workload workflow that is terminated (or otherwise ends
without releasing) leaves nothing behind once the reaper has run, a workload applied
again frees what its last run left, and replicas no workload places are stopped. Real
Temporal, real agents over mTLS (exec runtime), the coordinator's reaper Schedule."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio.client import ScheduleActionExecutionStartWorkflow
from temporalio.testing import WorkflowEnvironment

from cloudless.api import agent_pb2, agent_pb2_grpc
from cloudless.client import CloudlessClient
from cloudless.contracts import reaper
from cloudless.contracts.workload import workflow_id
from cloudless.model import ReapReport
from cloudless.testing.cluster import LocalCluster, exec_cluster, running_on_agents
from cloudless.testing.workloads import sleeper
from cloudless.tls import TLSMaterial, secure_channel
from cloudless.workloads import replica_spec_proto
from tests.conftest import unique

pytestmark = pytest.mark.temporal

SLEEPER_CPU = 50  # millicores, as cloudless.testing.workloads.sleeper asks


@pytest.fixture(scope="module")
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    suffix = uuid.uuid4().hex[:5]
    async with exec_cluster(
        temporal_env.client,
        "reap",
        suffix=suffix,
        # The Schedule exists (as in production) but fires only when a test triggers it.
        coordinator_options={"reap_interval": timedelta(hours=1)},
    ) as c:
        try:  # agents added here, so that the Schedule goes even if one fails to start
            for i in range(2):
                await c.add_agent(f"r{i}-{suffix}", zone=f"zone-{i}", runtimes=["exec"])
            yield c
        finally:
            schedule = c.client.get_schedule_handle(reaper.schedule_id(c.cluster))
            await schedule.delete()


async def _reserved_cpu(c: CloudlessClient) -> int:
    return sum(n.allocated.cpu_millis for n in (await c.snapshot()).nodes)


async def test_a_terminated_workload_is_reaped_and_its_replicas_stopped(
    cluster: LocalCluster,
) -> None:
    c = CloudlessClient(cluster.client, cluster.cluster)
    before = await _reserved_cpu(c)
    name = unique("term")
    outcome = await c.apply(sleeper(name, 2), wait=True, timeout=60)
    assert outcome.status is not None and outcome.status.ready == 2
    assert await _reserved_cpu(c) == before + 2 * SLEEPER_CPU
    ids = {r.replica_id for r in outcome.status.replicas}
    assert set(await running_on_agents(cluster, name)) == ids

    await cluster.client.get_workflow_handle(workflow_id("default", name)).terminate("test")
    # Nothing released it: the leak the reaper exists for.
    assert await _reserved_cpu(c) == before + 2 * SLEEPER_CPU

    report = await c.reap(grace_seconds=0)
    reaped = {r.workload: r for r in report.workloads.reaped}
    assert f"default/{name}" in reaped, report
    assert sum(reaped[f"default/{name}"].replicas.values()) == 2
    assert "closed (Terminated)" in reaped[f"default/{name}"].reason
    assert await _reserved_cpu(c) == before
    stopped = {s.replica_id for s in report.orphans.stopped}
    assert ids <= stopped, report
    assert await running_on_agents(cluster, name) == {}
    # A second run finds nothing more to do.
    again = await c.reap(grace_seconds=0)
    assert not [r for r in again.workloads.reaped if r.workload == f"default/{name}"]
    assert not [s for s in again.orphans.stopped if s.workload == f"default/{name}"]


async def test_applying_again_after_a_terminate_frees_what_the_last_run_held(
    cluster: LocalCluster,
) -> None:
    c = CloudlessClient(cluster.client, cluster.cluster)
    before = await _reserved_cpu(c)
    name = unique("again")
    first = await c.apply(sleeper(name, 2), wait=True, timeout=60)
    assert first.status is not None and first.status.ready == 2
    old_ids = {r.replica_id for r in first.status.replicas}
    await cluster.client.get_workflow_handle(workflow_id("default", name)).terminate("test")

    second = await c.apply(sleeper(name, 2), wait=True, timeout=60)
    assert second.action == "created" and second.status is not None
    assert second.status.ready == 2 and second.status.owner > 0
    # The new run's claim released the old run's reservations: 2 replicas' worth, not 4.
    assert await _reserved_cpu(c) == before + 2 * SLEEPER_CPU
    new_ids = {r.replica_id for r in second.status.replicas}
    running = await running_on_agents(cluster, name)
    assert old_ids | new_ids == set(running)  # the old run's processes still run ...

    report = await c.reap(grace_seconds=0)
    assert not [r for r in report.workloads.reaped if r.workload == f"default/{name}"]
    assert old_ids <= {s.replica_id for s in report.orphans.stopped}
    assert set(await running_on_agents(cluster, name)) == new_ids  # ... until the reaper
    assert await _reserved_cpu(c) == before + 2 * SLEEPER_CPU
    await c.delete("default", name)
    assert await _reserved_cpu(c) == before


async def test_a_replica_nobody_placed_is_stopped_only_after_the_grace(
    cluster: LocalCluster,
) -> None:
    """A replica started straight on an agent (no workload placed it): the reaper leaves
    it while it is younger than the grace and stops it after."""
    c = CloudlessClient(cluster.client, cluster.cluster)
    name = unique("stray")
    node_id, agent = next(iter(cluster.agents.items()))
    material = TLSMaterial.load(cluster.coordinator_dir)
    spec = replica_spec_proto(
        sleeper(name, 1), replica_id=f"default-{name}-stray", generation=1, spec_hash="x"
    )
    async with secure_channel(agent.address, node_id, material.ca_pem, material) as ch:
        await agent_pb2_grpc.AgentServiceStub(ch).RunReplica(
            agent_pb2.RunReplicaRequest(spec=spec), timeout=30
        )
    assert await running_on_agents(cluster, name) == {spec.replica_id: [node_id]}

    young = await c.reap(grace_seconds=3600)
    assert spec.replica_id not in {s.replica_id for s in young.orphans.stopped}
    assert await running_on_agents(cluster, name) == {spec.replica_id: [node_id]}
    old = await c.reap(grace_seconds=0)
    assert [(s.node_id, s.reason) for s in old.orphans.stopped if s.workload.endswith(name)] == [
        (node_id, "workload gone")
    ]
    assert await running_on_agents(cluster, name) == {}


async def test_the_coordinator_keeps_a_reaper_schedule_that_reaps(
    cluster: LocalCluster,
) -> None:
    c = CloudlessClient(cluster.client, cluster.cluster)
    before = await _reserved_cpu(c)
    name = unique("sched")
    outcome = await c.apply(sleeper(name, 1), wait=True, timeout=60)
    assert outcome.status is not None and outcome.status.ready == 1
    await cluster.client.get_workflow_handle(workflow_id("default", name)).terminate("test")

    schedule = cluster.client.get_schedule_handle(reaper.schedule_id(cluster.cluster))
    desc = await schedule.describe()
    assert [i.every for i in desc.schedule.spec.intervals] == [timedelta(hours=1)]
    seen = {
        a.action.workflow_id
        for a in desc.info.recent_actions
        if isinstance(a.action, ScheduleActionExecutionStartWorkflow)
    }
    await schedule.trigger()
    started = None
    for _ in range(100):
        desc = await schedule.describe()
        fresh = [
            a.action
            for a in desc.info.recent_actions
            if isinstance(a.action, ScheduleActionExecutionStartWorkflow)
            and a.action.workflow_id not in seen
        ]
        if fresh:
            started = fresh[0]
            break
        await asyncio.sleep(0.1)
    assert started is not None, "the triggered Schedule started no reaper run"
    handle = cluster.client.get_workflow_handle(
        started.workflow_id, run_id=started.first_execution_run_id, result_type=ReapReport
    )
    report = await handle.result()
    assert f"default/{name}" in {r.workload for r in report.workloads.reaped}, report
    assert await _reserved_cpu(c) == before
    memo = await (await handle.describe()).memo()
    assert f"default/{name}" in memo["reaped_workloads"]
