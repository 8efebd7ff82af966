"""Run-to-completion replicas on the real dev server: a replica of a restartPolicy
Never/OnFailure workload that exits 0 is done, not lost. It is never replaced, its room
goes back to the ledger, and once every desired replica completed the workload is
``Completed`` (status, search attribute, CLI), which ``wait`` treats as settled."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from cloudless.client import CloudlessClient
from cloudless.contracts.workload import workflow_id as workload_workflow_id
from cloudless.model import ReplicaPhase, WorkloadPhase
from cloudless.spec import Workload, parse_workload
from cloudless.testing.cli import ctl
from cloudless.testing.cluster import LocalCluster, exec_cluster
from cloudless.testing.visibility import visible_workflow_ids
from tests.conftest import unique
from workflows.workload import WorkloadWorkflow

pytestmark = pytest.mark.temporal


@pytest.fixture(scope="module")
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    async with exec_cluster(temporal_env.client, "jobs") as c:
        for i in range(2):
            await c.add_agent(f"j{i}", zone=f"zone-{i}", runtimes=["exec"])
        yield c


def job(name: str, script: str, policy: str, replicas: int = 2) -> Workload:
    return parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "runtime": "exec",
                "restartPolicy": policy,
                "container": {"command": ["sh"], "args": ["-c", script]},
                "resources": {"cpu": "100m", "memory": "8Mi"},
            },
        }
    )


@pytest.mark.parametrize(
    ("script", "policy"),
    [
        ("exit 0", "Never"),  # exits inside the start's settle window
        ("sleep 1.5; exit 0", "OnFailure"),  # exits later: reported by a heartbeat
    ],
)
async def test_replicas_that_exit_zero_complete_the_workload(
    cluster: LocalCluster, script: str, policy: str
) -> None:
    c = CloudlessClient(cluster.client, cluster.cluster)
    name = unique("job")
    outcome = await c.apply(job(name, script, policy), wait=True, timeout=60)
    status = await c.wait("default", name, outcome.generation, 30, all_ready=True)
    deadline = asyncio.get_running_loop().time() + 20
    while status.phase != WorkloadPhase.COMPLETED:  # a later exit arrives by heartbeat
        assert asyncio.get_running_loop().time() < deadline, status
        assert status.phase == WorkloadPhase.AVAILABLE, status  # running until then
        await asyncio.sleep(0.3)
        status = await c.workload_status("default", name)
    assert [r.phase for r in status.replicas] == [ReplicaPhase.COMPLETED] * 2
    first = {r.replica_id for r in status.replicas}

    await asyncio.sleep(3)  # heartbeats and backoff passes: nothing is replaced
    status = await c.workload_status("default", name)
    assert status.phase == WorkloadPhase.COMPLETED
    assert {r.replica_id for r in status.replicas} == first
    snap = await c.snapshot()  # their room went back to the ledger
    key = f"default/{name}"
    assert all(key not in n.workloads for n in snap.nodes)

    query = f'CloudlessWorkload = "{name}" AND CloudlessPhase = "Completed"'
    found = await visible_workflow_ids(c.temporal, query)
    assert found == [workload_workflow_id("default", name)]

    listed = await ctl(cluster, "get", "workloads")
    assert listed.exit_code == 0, listed.output
    assert any(name in line and "Completed" in line for line in listed.output.splitlines()), (
        listed.output
    )
    described = await ctl(cluster, "describe", "workload", name)
    assert described.exit_code == 0, described.output
    assert "Completed" in described.output and "completed" in described.output

    history = await c.temporal.get_workflow_handle(
        workload_workflow_id("default", name)
    ).fetch_history()
    replayer = Replayer(workflows=[WorkloadWorkflow], data_converter=cluster.client.data_converter)
    await replayer.replay_workflow(history)  # deterministic, patch markers included
    await c.delete("default", name)


async def test_a_failed_replica_under_never_is_still_replaced(cluster: LocalCluster) -> None:
    """A non-zero exit is a failure whatever the policy: a new replica takes its place."""
    c = CloudlessClient(cluster.client, cluster.cluster)
    name = unique("fail")
    outcome = await c.apply(job(name, "exit 3", "Never", replicas=1), wait=False)
    seen: set[str] = set()
    deadline = asyncio.get_running_loop().time() + 30
    while len(seen) < 2:
        assert asyncio.get_running_loop().time() < deadline, seen
        status = await c.wait("default", name, outcome.generation, 2)
        seen |= {r.replica_id for r in status.replicas}
    assert status.phase != WorkloadPhase.COMPLETED
    await c.delete("default", name)


async def test_cli_apply_wait_counts_completed_replicas(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """`apply --wait` exits 0 for a workload whose replicas all ran to completion."""
    name = unique("cli-job")
    manifest = tmp_path / "job.yaml"
    manifest.write_text(json.dumps(job(name, "exit 0", "Never", replicas=1).to_manifest()))
    applied = await ctl(cluster, "apply", "-f", str(manifest), "--timeout", "60")
    assert applied.exit_code == 0, applied.output
    assert "Completed" in applied.output, applied.output
    await CloudlessClient(cluster.client, cluster.cluster).delete("default", name)
