"""Workload readiness follows the agents' readiness probes: CLI library → Temporal →
agents over mTLS → real containers, heartbeats back through the gateway. Nothing mocked."""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from agent.runtime.docker import container_name
from cloudless.client import CloudlessClient
from cloudless.contracts.workload import REPLICA_READINESS
from cloudless.contracts.workload import workflow_id as workload_workflow_id
from cloudless.model import ReplicaPhase, WorkloadPhase, WorkloadStatus
from cloudless.spec import Workload, parse_workload
from cloudless.testing.cli import ctl
from cloudless.testing.cluster import LocalCluster
from cloudless.testing.workloads import sleeper
from tests.conftest import removing_containers, unique
from workflows.workload import WorkloadWorkflow

pytestmark = [pytest.mark.docker, pytest.mark.temporal]


@pytest.fixture(scope="module")
async def cluster(
    temporal_env: WorkflowEnvironment, docker_client: Any, busybox_image: str
) -> AsyncIterator[LocalCluster]:
    suffix = uuid.uuid4().hex[:6]
    node = f"ready-{suffix}"
    with tempfile.TemporaryDirectory(prefix="cl-") as d, removing_containers(docker_client, [node]):
        c = LocalCluster(temporal_env.client, Path(d), cluster=f"r-{suffix}")
        await c.start()
        try:
            await c.add_agent(node, cpu="4", memory="4Gi")
            yield c
        finally:
            await c.close()


def probed(name: str, replicas: int) -> Workload:
    return parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "container": {
                    "image": "cloudless/busybox:latest",
                    "command": ["sh", "-c", "mkdir -p /www && exec httpd -f -p 8080 -h /www"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/ready.html", "port": "http"},
                        "periodSeconds": 1,
                        "failureThreshold": 1,
                    },
                },
                "resources": {"cpu": "100m", "memory": "32Mi"},
            },
        }
    )


async def until(
    client: CloudlessClient, name: str, pred: Callable[[WorkloadStatus], bool], timeout: float = 60
) -> WorkloadStatus:
    """Poll the workload's status (a query; readiness changes raise no event to await)."""
    async with asyncio.timeout(timeout):
        while True:
            status = await client.workload_status("default", name)
            if pred(status):
                return status
            await asyncio.sleep(0.2)


def touch(docker_client: Any, replica_id: str, present: bool) -> None:
    command = "echo ok > /www/ready.html" if present else "rm /www/ready.html"
    result = docker_client.containers.get(container_name(replica_id)).exec_run(
        ["sh", "-c", command]
    )
    assert result.exit_code == 0, result.output


async def test_ready_count_follows_readiness_probes(
    cluster: LocalCluster, docker_client: Any
) -> None:
    client = CloudlessClient(cluster.client, cluster.cluster)
    name = unique("probed")
    outcome = await client.apply(probed(name, 2), wait=False)

    def all_failing(s: WorkloadStatus) -> bool:
        return len(s.replicas) == 2 and all(
            r.phase == ReplicaPhase.RUNNING and r.ready is False and "404" in r.ready_message
            for r in s.replicas
        )

    status = await until(client, name, all_failing)
    assert status.ready == 0 and status.phase != WorkloadPhase.AVAILABLE
    assert status.replicas[0].ready_message.startswith("readiness probe failed: GET http://")
    not_yet = await client.wait("default", name, outcome.generation, 1.0, all_ready=True)
    assert not_yet.ready == 0  # `wait` does not count Running-but-not-ready replicas

    # What an operator sees.
    described = await ctl(cluster, "describe", "workload", name)
    assert described.exit_code == 0, described.output
    assert "not ready: readiness probe failed: GET http://" in described.output
    assert "HTTP status 404" in described.output
    as_json = await ctl(cluster, "describe", "workload", name, "-o", "json")
    replicas = json.loads(as_json.output)["replicas"]
    assert all(r["ready"] is False and "404" in r["ready_message"] for r in replicas)

    first, second = (r.replica_id for r in status.replicas)
    touch(docker_client, first, present=True)
    status = await until(client, name, lambda s: s.ready == 1)
    assert {r.replica_id for r in status.replicas if r.ready} == {first}
    touch(docker_client, second, present=True)
    status = await until(client, name, lambda s: s.ready == 2)
    assert status.phase == WorkloadPhase.AVAILABLE
    settled = await client.wait("default", name, outcome.generation, 30, all_ready=True)
    assert settled.ready == 2

    touch(docker_client, first, present=False)
    status = await until(client, name, lambda s: s.ready == 1)
    (gone,) = [r for r in status.replicas if not r.ready]
    assert gone.replica_id == first and gone.phase == ReplicaPhase.RUNNING
    assert "HTTP status 404" in gone.ready_message
    await client.delete("default", name, wait=True)

    # The history, readiness signals included, replays deterministically.
    handle = cluster.client.get_workflow_handle(workload_workflow_id("default", name))
    history = await handle.fetch_history()
    assert any(
        e.workflow_execution_signaled_event_attributes.signal_name == REPLICA_READINESS.name
        for e in history.events
    )
    replayer = Replayer(workflows=[WorkloadWorkflow], data_converter=cluster.client.data_converter)
    await replayer.replay_workflow(history)


async def test_liveness_restarts_reach_the_coordinator_in_heartbeats(
    cluster: LocalCluster, docker_client: Any
) -> None:
    """The agent restarts a replica whose liveness probe fails; its heartbeats carry the
    restart count and reason to the gateway, and the workload stays (or becomes) ready."""
    client = CloudlessClient(cluster.client, cluster.cluster)
    name = unique("alive")
    w = parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": name},
            "spec": {
                "container": {
                    "image": "cloudless/busybox:latest",
                    "command": [
                        "sh",
                        "-c",
                        "mkdir -p /tmp && touch /tmp/healthy && exec sleep 3600",
                    ],
                    "livenessProbe": {
                        "exec": {"command": ["cat", "/tmp/healthy"]},
                        "periodSeconds": 1,
                        "failureThreshold": 2,
                    },
                },
                "resources": {"cpu": "100m", "memory": "32Mi"},
            },
        }
    )
    status = (await client.apply(w, wait=True, timeout=60)).status
    assert status is not None and status.ready == 1
    (replica,) = status.replicas
    touch_healthy = docker_client.containers.get(container_name(replica.replica_id))
    assert touch_healthy.exec_run(["rm", "/tmp/healthy"]).exit_code == 0
    monitor = cast(Any, cluster.coordinator).liveness

    async def restarted() -> Any:
        while True:
            for r in monitor.reports[replica.node_id].replicas:
                if r.replica_id == replica.replica_id and r.restarts >= 1 and r.ready:
                    return r
            await asyncio.sleep(0.2)

    async with asyncio.timeout(30):
        reported = await restarted()
    assert reported.restart_reason.startswith(
        "liveness probe failed: exec 'cat /tmp/healthy' exited with 1"
    )
    assert reported.phase == "Running" and not reported.terminal
    status = await until(client, name, lambda s: s.ready == 1)
    assert status.replicas[0].replica_id == replica.replica_id  # restarted in place
    await client.delete("default", name, wait=True)


async def test_apply_wait_waits_for_probed_replicas_to_be_ready(cluster: LocalCluster) -> None:
    client = CloudlessClient(cluster.client, cluster.cluster)
    name = unique("tcp")
    manifest = probed(name, 1).to_manifest()
    manifest["spec"]["container"]["readinessProbe"] = {
        "tcpSocket": {"port": "http"},
        "initialDelaySeconds": 1,
        "periodSeconds": 1,
    }
    outcome = await client.apply(parse_workload(manifest), wait=True, timeout=60)
    assert outcome.status is not None
    assert outcome.status.ready == 1 and outcome.status.phase == WorkloadPhase.AVAILABLE
    assert outcome.status.replicas[0].ready is True
    await client.delete("default", name, wait=True)


async def test_apply_wait_answers_with_every_unprobed_replica_ready(cluster: LocalCluster) -> None:
    """Settled means Running and ready (issue 10 item 12). Heartbeats taken while replicas
    were still Starting used to reach the workload after its starts had answered Running,
    and marked them not ready: `apply --wait` of 30 replicas answered with 28/30 ready."""
    client = CloudlessClient(cluster.client, cluster.cluster)
    for _ in range(2):
        name = unique("thirty")
        workload = sleeper(
            name,
            30,
            cpu="10m",
            runtime="docker",
            container={
                "image": "cloudless/busybox:latest",
                "command": ["sh", "-c"],
                "args": ["exec sleep 3600"],
            },
        )
        outcome = await client.apply(workload, wait=True, timeout=120)
        assert outcome.status is not None
        assert outcome.status.ready == 30, [
            (r.replica_id, r.phase, r.ready, r.ready_message)
            for r in outcome.status.replicas
            if r.ready is not True
        ]
        assert outcome.status.phase == WorkloadPhase.AVAILABLE
        await client.delete("default", name, wait=True)
