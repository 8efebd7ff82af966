"""``cloudless.testing.exec_cluster``: the cluster and agents it names, and the exec
replicas its agents leave running (a killed agent's too) stopped once it is done. Real
Temporal, real agents over mTLS with the exec runtime."""

from __future__ import annotations

import uuid

import psutil
import pytest
from temporalio.testing import WorkflowEnvironment

from agent.runtime.exec import ExecDriver
from cloudless.client import CloudlessClient
from cloudless.testing.cluster import exec_cluster
from cloudless.testing.workloads import sleeper
from tests.conftest import unique

pytestmark = pytest.mark.temporal


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_exec_cluster_names_its_agents_and_stops_what_they_leave_running(
    temporal_env: WorkflowEnvironment,
) -> None:
    suffix = uuid.uuid4().hex[:5]
    async with exec_cluster(
        temporal_env.client, "xc", agents=2, agent_prefix="x", suffix=suffix, heartbeat_ttl=3.0
    ) as cluster:
        assert cluster.cluster == f"xc-{suffix}" and cluster.heartbeat_ttl == 3.0
        c = CloudlessClient(cluster.client, cluster.cluster)
        nodes = {n.node_id: n for n in (await c.snapshot()).nodes}
        assert {name: (n.zone, n.runtimes) for name, n in nodes.items()} == {
            f"x0-{suffix}": ("zone-0", ["exec"]),
            f"x1-{suffix}": ("zone-1", ["exec"]),
        }
        outcome = await c.apply(sleeper(unique("left"), 2), wait=True, timeout=60)
        assert outcome.status is not None and outcome.status.ready == 2
        pids = [
            int(s.runtime_id)
            for name, handle in cluster.agents.items()
            for s in await ExecDriver(name, handle.state_dir).list()
        ]
        assert len(pids) == 2
        # Killed or stopped, an agent leaves its exec replicas running (by design).
        await cluster.kill_agent(f"x0-{suffix}")
        assert cluster.agent_names == [f"x0-{suffix}", f"x1-{suffix}"]
        root = cluster.root
        assert all(running(pid) for pid in pids)
    assert not root.exists()
    assert not [pid for pid in pids if running(pid)]
