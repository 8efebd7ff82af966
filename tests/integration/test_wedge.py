"""One workload can never wedge the control plane (issue #10, item 1).

Before: a manifest with a 1.5 MB env value was accepted; its workflow's task then failed
forever (Temporal refused the continue-as-new payload); `get workloads` failed for every
workload, `describe`/`delete` of it failed, and its node stayed Offline for minutes after
an agent restart, because reconciling the node asked the wedged workflow and gave up.

A wedged workflow is made here two ways: the issue's own (an oversized manifest, sent
around the client's guard) and a poisoned run (terminated, then started again with an
input this code cannot decode: what a stored manifest that a newer version refuses does).
Real Temporal dev server, real coordinator, agents over mTLS with the exec runtime.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from cloudless.client import CloudlessClient
from cloudless.contracts import limits
from cloudless.contracts import workload as wl
from cloudless.contracts.names import task_queue
from cloudless.errors import CloudlessError, NotFoundError, PayloadTooLargeError
from cloudless.model import ApplyInput, NodeState, WorkloadPhase
from cloudless.spec import EnvVar, Workload
from cloudless.testing.cli import ctl
from cloudless.testing.cluster import LocalCluster, exec_cluster, running_on_agents
from cloudless.testing.workloads import sleeper
from tests.conftest import unique
from tests.integration.standins import eventually

pytestmark = pytest.mark.temporal

#: The issue's env value: valid as a manifest, far over what a workflow can carry.
BIG = 1_500_000


@pytest.fixture(scope="module")
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    async with exec_cluster(
        temporal_env.client,
        "wedge",
        agents=2,
        agent_prefix="w",
        heartbeat_ttl=3.0,
        suspect_grace=0.5,
    ) as c:
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> CloudlessClient:
    return CloudlessClient(cluster.client, cluster.cluster)


def oversized(name: str, size: int = BIG) -> Workload:
    """A sleeper with one huge env value, built around the manifest's own checks (as a
    manifest that got past them would be): the Temporal boundary must hold on its own."""
    w = sleeper(name, 1)
    env = (*w.spec.container.env, EnvVar.model_construct(name="BIG", value="x" * size))
    container = w.spec.container.model_copy(update={"env": env})
    return w.model_copy(update={"spec": w.spec.model_copy(update={"container": container})})


async def poison(temporal: Client, cluster: LocalCluster, name: str) -> None:
    """Replace ``workload/default/<name>``'s run by one whose every workflow task fails:
    its input, sealed by the cluster's codec (a plaintext one would be refused, failing
    the run at once), is not a workload input this release can read, as after a
    downgrade. What the old run placed stays in the ledger and on the agents."""
    workflow_id = wl.workflow_id("default", name)
    handle = temporal.get_workflow_handle(workflow_id)
    if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
        await handle.terminate(reason="test: replaced by a poisoned run")
    await cluster.client.start_workflow(
        wl.WORKFLOW.name,
        {"cluster": cluster.cluster, "manifest": {"from": "a release that is gone"}},
        id=workflow_id,
        task_queue=task_queue(cluster.cluster),
    )

    async def failing() -> bool:
        pending = (await handle.describe()).raw_description.pending_workflow_task
        return pending.attempt >= 2

    await eventually(failing, timeout=30)


async def test_oversized_manifest_is_refused_before_it_reaches_temporal(
    client: CloudlessClient,
) -> None:
    name = unique("big")
    with pytest.raises(CloudlessError) as refused:
        await asyncio.wait_for(client.apply(oversized(name)), timeout=10)
    message = str(refused.value)
    assert f"workload default/{name}" in message and "limit" in message, message
    with pytest.raises(NotFoundError):  # nothing was started
        await client.workload_status("default", name)
    # Whatever a client sends goes through the payload bound as well, whichever handle or
    # message carries it: here the apply Update sent straight through the typed handle.
    with pytest.raises(PayloadTooLargeError) as general:
        await client.workload("default", name).apply(
            ApplyInput(manifest=oversized(name, limits.MAX_PAYLOAD_BYTES + 1))
        )
    message = str(general.value)
    assert f"update 'apply' of workload/default/{name}" in message
    assert "over the 1 MiB limit" in message and "MAX_PAYLOAD_BYTES" in message
    with pytest.raises(NotFoundError):
        await client.workload_status("default", name)


async def test_oversized_manifest_sent_around_the_client_harms_nobody(
    cluster: LocalCluster, client: CloudlessClient
) -> None:
    """The issue's manifest, sent with a client that has no guard: the workflow's own
    validator refuses it, and the workflow keeps answering."""
    name = unique("around")
    first = await client.apply(sleeper(name, 1), wait=True, timeout=60)
    assert first.status is not None and first.status.phase == WorkloadPhase.AVAILABLE
    options = cluster.client.config()
    options["interceptors"] = []  # a client without the guard, with the codec
    unguarded = Client(**options)
    raw = unguarded.get_workflow_handle(wl.workflow_id("default", name))
    # Refused, whichever check gets it first (the manifest model's own bounds, when the
    # worker decodes it, or the validator's), and not taken into the workflow's state.
    with pytest.raises(WorkflowUpdateFailedError):
        await wl.APPLY.execute(raw, ApplyInput(manifest=oversized(name)))
    status = await client.workload_status("default", name)
    assert status.phase == WorkloadPhase.AVAILABLE and status.generation == first.generation
    # A new workload started with it (update-with-start) cannot even decode its input: the
    # manifest model refuses it. That run is stuck from its first task; it is listed as
    # such, nothing else is affected, and it can be deleted.
    other = unique("around-new")
    with pytest.raises(RPCError, match="Workflow Task in failed state"):
        await wl.WorkloadHandle(unguarded, "default", other).apply(
            ApplyInput(manifest=oversized(other)), cluster=cluster.cluster
        )
    listed = {w.name: w for w in await client.list_workloads()}
    assert listed[name].phase == WorkloadPhase.AVAILABLE
    assert listed[other].phase == WorkloadPhase.STUCK, listed[other]
    assert "Failed decoding arguments" in listed[other].message
    gone = await client.delete("default", other)
    assert gone is not None and gone.phase == WorkloadPhase.DELETED
    await client.delete("default", name)


async def test_stuck_workload_is_listed_described_and_deleted(
    temporal_env: WorkflowEnvironment, cluster: LocalCluster, client: CloudlessClient
) -> None:
    healthy, stuck = unique("healthy"), unique("stuck")
    await client.apply(sleeper(healthy, 1), wait=True, timeout=60)
    placed = await client.apply(sleeper(stuck, 2), wait=True, timeout=60)
    assert placed.status is not None and placed.status.ready == 2
    await poison(temporal_env.client, cluster, stuck)

    # Listing answers for everyone; the stuck one shows why.
    listed = {w.name: w for w in await asyncio.wait_for(client.list_workloads(), timeout=30)}
    assert listed[healthy].phase == WorkloadPhase.AVAILABLE
    assert listed[stuck].phase == WorkloadPhase.STUCK
    assert "workflow task failing" in listed[stuck].message
    assert "Failed decoding arguments" in listed[stuck].message, listed[stuck].message
    got = await ctl(cluster, "get", "workloads", "-o", "json")
    assert got.exit_code == 0, got.output
    rows = {row["name"]: row for row in json.loads(got.output)}
    assert rows[stuck]["phase"] == "Stuck" and rows[healthy]["phase"] == "Available"
    table = await ctl(cluster, "get", "workloads")
    assert table.exit_code == 0 and "Stuck" in table.output

    described = await ctl(cluster, "describe", "workload", stuck)
    assert described.exit_code == 0, described.output
    assert "Stuck" in described.output and "Failed decoding arguments" in described.output
    assert "delete" in described.output  # the way out is named

    # Delete still works: the stuck run is terminated, its replicas stopped, its room freed.
    deleted = await asyncio.wait_for(client.delete("default", stuck), timeout=90)
    assert deleted is not None and deleted.phase == WorkloadPhase.DELETED
    assert await running_on_agents(cluster, stuck) == {}
    snapshot = await client.snapshot()
    assert all(f"default/{stuck}" not in n.workloads for n in snapshot.nodes)
    assert stuck not in {w.name for w in await client.list_workloads()}
    assert len(await running_on_agents(cluster, healthy)) == 1  # nobody else was touched
    with pytest.raises(NotFoundError):
        await client.delete("default", stuck)
    await client.delete("default", healthy)


async def test_node_returns_ready_though_a_workload_on_it_is_stuck(
    temporal_env: WorkflowEnvironment, cluster: LocalCluster, client: CloudlessClient
) -> None:
    """Before: reconciling the returning node asked the stuck workflow, got no answer,
    retried for two minutes and left the node Offline."""
    name = unique("strand")
    placed = await client.apply(sleeper(name, 1), wait=True, timeout=60)
    assert placed.status is not None
    (replica,) = placed.status.replicas
    node = replica.node_id
    await poison(temporal_env.client, cluster, name)

    await cluster.kill_agent(node)
    offline = await client.wait_node(node, [NodeState.OFFLINE], timeout=30)
    assert offline is not None and offline.state == NodeState.OFFLINE
    await cluster.restart_agent(node, wait_ready=False)
    back = await client.wait_node(node, [NodeState.READY], timeout=30)
    assert back is not None and back.state == NodeState.READY, back
    # The stuck workload cannot say where its replica belongs: it is left running.
    assert (await running_on_agents(cluster, name)) == {replica.replica_id: [node]}
    deleted = await client.delete("default", name)
    assert deleted is not None and deleted.phase == WorkloadPhase.DELETED
    assert await running_on_agents(cluster, name) == {}


async def test_placement_explanations_are_bounded_in_activity_results(
    client: CloudlessClient,
) -> None:
    """A placement's result carries top candidates (~1 KiB each) for the first
    MAX_EXPLAINED_REPLICAS replicas only: a 1,000-replica placement stays far below
    Temporal's payload limit. Shown through explain (the same decision, nothing started)."""
    count = limits.MAX_EXPLAINED_REPLICAS + 6
    result = await client.explain(sleeper(unique("many"), count))
    assert len(result.placed) == count, result.reason
    explained = [p for p in result.placed if p.candidates]
    assert explained == result.placed[: limits.MAX_EXPLAINED_REPLICAS]
    assert all(p.score is not None for p in result.placed)  # every replica keeps its score
