"""Crash loops on a real cluster: real Temporal, coordinator, agents over mTLS, exec and
docker replicas. A replica that crash-loops on one node is replaced on another within
seconds, ``describe`` tells the story, and a replica that crashes everywhere is moved a
bounded number of times, then stays where it is with the reason in the workload's phase
and message. (``bench/crashloop_reschedule.py`` measures the time precisely.)
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from cloudless.client import CloudlessClient
from cloudless.model import ReplicaPhase, WorkloadPhase, WorkloadStatus
from cloudless.spec import parse_workload
from cloudless.testing.cli import ctl
from cloudless.testing.cluster import LocalCluster, running_on_agents
from cloudless.testing.crashloop import crash_loop_and_move, crasher, unmark
from tests.conftest import removing_containers, unique

pytestmark = [pytest.mark.temporal, pytest.mark.docker]


@pytest.fixture(scope="module")
async def cluster(
    temporal_env: WorkflowEnvironment, docker_client: Any, busybox_image: str
) -> AsyncIterator[LocalCluster]:
    suffix = uuid.uuid4().hex[:5]
    names = [f"crash-{z}-{suffix}" for z in "abc"]
    with tempfile.TemporaryDirectory(prefix="cl-") as d, removing_containers(docker_client, names):
        c = LocalCluster(temporal_env.client, Path(d), cluster=f"crash-{suffix}")
        await c.start()
        try:
            for zone, name in zip("abc", names, strict=True):
                await c.add_agent(name, zone=f"zone-{zone}", cpu="2", memory="2Gi")
            yield c
        finally:
            await c.close()


async def test_a_replica_crash_looping_on_one_node_moves_to_another_within_seconds(
    cluster: LocalCluster,
) -> None:
    """The default policy (no ``spec.reschedule``): 3 crashes within 60 s, then 1 s."""
    c = CloudlessClient(cluster.client, cluster.cluster)
    name = unique("loop")
    await c.apply(crasher(name), wait=True, timeout=60)
    try:
        run = await crash_loop_and_move(cluster, c, name, timeout=60)
        # Three crashes take the agent ~3 s (restart at once, then after 1 s and 2 s),
        # the reschedule waits 1 s; the bound is loose for a loaded 2-core machine.
        assert run.seconds < 30, run
        status = await c.workload_status("default", name)
        assert status.phase == WorkloadPhase.AVAILABLE, status
        (replacement,) = status.replicas
        assert replacement.replaces == run.replica and replacement.avoid_nodes == [run.crashed_on]
        # The crash-looping copy is stopped: it runs nowhere, the replacement once.
        assert await running_on_agents(cluster, name) == {replacement.replica_id: [run.moved_to]}
        (event,) = status.reschedules
        assert (event.node_id, event.to_node, event.exit_code) == (
            run.crashed_on,
            run.moved_to,
            3,
        )
        assert event.crashes >= 3 and "exited with code 3" in event.reason

        described = await ctl(cluster, "describe", "workload", name)
        assert described.exit_code == 0, described.output
        pattern = (
            rf"{run.replica} crashed on {run.crashed_on} \(exit 3\) \d+ times in [\d.]+s → "
            rf"rescheduled to {run.moved_to} \({replacement.replica_id}\)"
        )
        assert re.search(pattern, described.output), described.output
    finally:
        unmark(cluster)
        await c.delete("default", name)


def crashing_everywhere(name: str) -> Any:
    """A busybox container that runs a second, then fails: on every node, every time."""
    return parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "runtime": "docker",
                "container": {
                    "image": "cloudless/busybox:latest",
                    "command": ["sh", "-c", "sleep 1; echo 'cannot reach the database'; exit 1"],
                },
                "resources": {"cpu": "100m", "memory": "32Mi"},
                "reschedule": {
                    "failures": 2,
                    "failureWindow": "60s",
                    "attempts": 2,
                    "interval": "10m",
                    "delay": "0s",
                },
            },
        }
    )


async def until(c: CloudlessClient, name: str, ok: Any, timeout: float = 90.0) -> WorkloadStatus:
    """The workload's status once ``ok`` holds (polled: no event says a crash was counted)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await c.workload_status("default", name)
        if ok(status):
            return status
        assert loop.time() < deadline, status
        await asyncio.sleep(0.2)


async def test_a_replica_crashing_everywhere_is_moved_a_bounded_number_of_times(
    cluster: LocalCluster,
) -> None:
    c = CloudlessClient(cluster.client, cluster.cluster)
    name = unique("everywhere")
    await c.apply(crashing_everywhere(name), wait=True, timeout=60)
    try:
        # Two moves (attempts: 2 within 10 minutes), then it stays and says why.
        status = await until(c, name, lambda s: any(e.held for e in s.reschedules))
        moved = [e for e in status.reschedules if not e.held]
        assert len(moved) == 2, status.reschedules
        assert moved[0].to_node == moved[1].node_id  # the replacement is what crashed next
        assert len({moved[0].node_id, moved[1].node_id, moved[1].to_node}) == 3  # avoided
        assert status.phase == WorkloadPhase.DEGRADED
        assert "not rescheduled" in status.message
        assert "spec.reschedule.attempts: 2" in status.message
        (stays,) = status.replicas
        assert stays.node_id == moved[1].to_node and stays.crash_loop

        # Its agent keeps restarting it there: later crashes move nothing.
        seen = len(stays.crash_times)
        later = await until(c, name, lambda s: len(s.replicas[0].crash_times) >= seen + 2)
        assert [e.node_id for e in later.reschedules if not e.held] == [e.node_id for e in moved]
        assert [r.replica_id for r in later.replicas] == [stays.replica_id]
        assert later.replicas[0].phase == ReplicaPhase.RUNNING  # between its crashes
        assert later.phase == WorkloadPhase.DEGRADED

        described = await ctl(cluster, "describe", "workload", name)
        assert described.exit_code == 0, described.output
        assert "Degraded" in described.output and "Crash loops:" in described.output
        assert "not rescheduled: rescheduled 2 time(s) in the last 600s" in described.output
    finally:
        await c.delete("default", name)
