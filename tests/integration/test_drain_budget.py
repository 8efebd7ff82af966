"""Drain on a full cluster: the disruption budget holds, the drain waits for room, and the
`cloudlessctl node` subcommands drive it (run in-process against the real dev server).

Two agents with room for exactly two replicas each run a workload of four with
``maxUnavailable: 25%`` (one replica). Draining one node cannot surge, so the workload
retires one old replica, and no more, then waits; the drain finishes once a third node
joins and the replacements run there.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer
from typer.testing import Result

from cloudless.client import CloudlessClient
from cloudless.contracts.workload import workflow_id as workload_workflow_id
from cloudless.model import ReplicaPhase, WorkloadStatus
from cloudless.testing.cli import ctl, run_ctl
from cloudless.testing.cluster import LocalCluster, exec_cluster, running_on_agents
from cloudless.testing.workloads import sleeper
from tests.conftest import unique
from workflows.workload import WorkloadWorkflow

pytestmark = pytest.mark.temporal

SLOT_CPU = "500m"  # two per node: each agent offers one core


@pytest.fixture
async def full_cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    suffix = uuid.uuid4().hex[:5]
    async with exec_cluster(temporal_env.client, "budget", suffix=suffix) as cluster:
        for name in (f"a-{suffix}", f"b-{suffix}"):
            await cluster.add_agent(name, cpu="1", runtimes=["exec"])
        yield cluster


async def node_state(cluster: LocalCluster, name: str) -> str:
    listed = await ctl(cluster, "node", "list", "-o", "json")
    assert listed.exit_code == 0, listed.output
    return str(next(n["state"] for n in json.loads(listed.output) if n["node_id"] == name))


async def test_cli_cordon_uncordon_list_describe(full_cluster: LocalCluster) -> None:
    name = sorted(full_cluster.agents)[0]
    cordoned = await ctl(full_cluster, "node", "cordon", name, "--reason", "disk swap")
    assert cordoned.exit_code == 0, cordoned.output
    assert f"node/{name} cordoned (state Cordoned)" in cordoned.output
    assert await node_state(full_cluster, name) == "Cordoned"
    table = await ctl(full_cluster, "node", "list")
    assert table.exit_code == 0 and "Cordoned" in table.output
    described = await ctl(full_cluster, "node", "describe", name, "-o", "json")
    assert described.exit_code == 0, described.output
    status = json.loads(described.output)["status"]
    assert status["admin"] == "Cordoned"
    assert any("disk swap" in t["reason"] for t in status["transitions"])
    human = await ctl(full_cluster, "node", "describe", name)
    assert human.exit_code == 0 and "disk swap" in human.output
    back = await ctl(full_cluster, "node", "uncordon", name)
    assert back.exit_code == 0 and "uncordoned (state Ready)" in back.output
    assert await node_state(full_cluster, name) == "Ready"
    missing = await ctl(full_cluster, "node", "describe", "no-such-node")
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1


class RunningFloor:
    """Watches what the agents actually run for one workload and keeps the minimum.

    A retired replica is a stopped process that nothing restarts, and no replacement can
    start while the cluster is full, so a dip below the floor would persist and a 100 ms
    sampling cannot miss it."""

    def __init__(self, cluster: LocalCluster, workload: str) -> None:
        self.cluster, self.workload = cluster, workload
        self.lowest: int | None = None
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            running = await running_on_agents(self.cluster, self.workload)
            n = len(running)
            self.lowest = n if self.lowest is None else min(self.lowest, n)
            self.samples += 1
            await asyncio.sleep(0.1)  # sampling interval of a continuous invariant

    def __enter__(self) -> RunningFloor:
        self._task = asyncio.create_task(self._watch())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def until(
    c: CloudlessClient, name: str, predicate: Any, timeout: float = 30.0
) -> WorkloadStatus:
    """Await a workload status satisfying ``predicate`` (queried as it changes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await c.workload_status("default", name)
        if predicate(status):
            return status
        assert loop.time() < deadline, status
        await asyncio.sleep(0.1)


async def test_drain_on_a_full_cluster_keeps_max_unavailable_and_waits_for_room(
    full_cluster: LocalCluster,
) -> None:
    c = CloudlessClient(full_cluster.client, full_cluster.cluster)
    name = unique("budget")
    spec = sleeper(name, 4, cpu=SLOT_CPU, maxUnavailable="25%", minAvailable=2)
    outcome = await c.apply(spec, wait=True, timeout=60)
    assert outcome.status is not None and outcome.status.ready == 4
    target = sorted(full_cluster.agents)[0]
    on_target = {r.replica_id for r in outcome.status.replicas if r.node_id == target}
    assert len(on_target) == 2  # spread: two per node, and both nodes are now full

    with RunningFloor(full_cluster, name) as floor:
        drain: Future[Result] = Future()

        def run_drain() -> None:
            drain.set_result(
                run_ctl(full_cluster, "node", "drain", target, "--reason", "maintenance")
            )

        drainer = asyncio.get_running_loop().run_in_executor(None, run_drain)
        # The workload retires exactly one old replica (25% of 4), then waits: its two
        # replacements are Pending and the other evicting replica keeps running.
        stuck = await until(
            c,
            name,
            lambda s: (
                sum(1 for r in s.replicas if r.phase == ReplicaPhase.PENDING) == 2
                and sum(1 for r in s.replicas if r.replica_id in on_target) == 1
            ),
        )
        assert await node_state(full_cluster, target) == "Draining"
        assert not drain.done()
        assert "insufficient cpu" in " ".join(r.message for r in stuck.replicas)
        # Passes keep running on backoff; none of them may retire the second replica.
        # One more backoff pass happens within ~2 s; the watcher samples throughout.
        more = floor.samples + 20
        await until(c, name, lambda _s: floor.samples >= more)
        assert floor.lowest == 3, floor.lowest
        assert not drain.done()

        # Room appears: the replacements land on the new node; the drain completes.
        extra = f"c-{full_cluster.cluster.rsplit('-', 1)[-1]}"
        await full_cluster.add_agent(extra, cpu="1", runtimes=["exec"])
        await drainer
        result = drain.result()
        assert result.exit_code == 0, result.output
        assert f"node/{target} drained (state Drained)" in result.output
        settled = await c.wait("default", name, outcome.generation, 30, all_ready=True)
    assert floor.lowest == 3, floor.lowest  # never below desired - maxUnavailable
    assert settled.ready == 4 and all(r.node_id != target for r in settled.replicas)
    assert sum(1 for r in settled.replicas if r.node_id == extra) == 2
    running = await running_on_agents(full_cluster, name)
    assert len(running) == 4 and all(len(nodes) == 1 for nodes in running.values())
    assert target not in {n for nodes in running.values() for n in nodes}

    back = await ctl(full_cluster, "node", "uncordon", target)
    assert back.exit_code == 0 and "(state Ready)" in back.output

    # The history (patch markers included; their ids are encrypted) replays deterministically.
    handle = c.temporal.get_workflow_handle(workload_workflow_id("default", name))
    history = await handle.fetch_history()
    replayer = Replayer(
        workflows=[WorkloadWorkflow], data_converter=full_cluster.client.data_converter
    )
    await replayer.replay_workflow(history)
    await c.delete("default", name)
