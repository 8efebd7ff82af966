"""The workload lifecycle end to end: CLI library → Temporal workflows → agents over
mTLS → real Docker containers. Nothing is mocked."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import yaml
from temporalio.client import WorkflowUpdateFailedError

from agent.runtime.base import LABEL_MANAGED, LABEL_NODE, LABEL_REPLICA, LABEL_WORKLOAD
from cloudless.client import CloudlessClient
from cloudless.contracts.workload import workflow_id as workload_workflow_id
from cloudless.errors import NotFoundError
from cloudless.model import Allocation, CommitPlanInput, ReplicaPhase, Resources, WorkloadPhase
from cloudless.spec import Workload, parse_workload
from cloudless.testing.cli import ctl, invoke_ctl
from cloudless.testing.cluster import LocalCluster
from cloudless.testing.visibility import visible_workflow_ids
from tests.conftest import unique

pytestmark = [pytest.mark.docker, pytest.mark.temporal]


def manifest(name: str, replicas: int = 3, **spec: Any) -> Workload:
    data: dict[str, Any] = {
        "apiVersion": "cloudless.dev/v1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "runtime": "docker",
            "container": {
                "image": "cloudless/busybox:latest",
                "command": ["sh", "-c"],
                "args": ["exec httpd -f -p 8080"],
                "env": [{"name": "GREETING", "value": "hi"}],
            },
            "resources": {"cpu": "250m", "memory": "48Mi"},
        },
    }
    data["spec"].update(spec)
    return parse_workload(data)


def containers(docker_client: Any, workload: str) -> list[Any]:
    return list(
        docker_client.containers.list(
            all=True, filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_WORKLOAD}={workload}"]}
        )
    )


@pytest.fixture
def client(dev_cluster: LocalCluster) -> CloudlessClient:
    return CloudlessClient(dev_cluster.client, dev_cluster.cluster)


async def test_apply_scale_reapply_delete(client: CloudlessClient, docker_client: Any) -> None:
    name = unique("web")
    w = manifest(name, replicas=3)
    outcome = await client.apply(w, wait=True, timeout=90)
    assert outcome.action == "created"
    status = outcome.status
    assert status is not None and status.phase == WorkloadPhase.AVAILABLE, status
    assert status.ready == 3

    # 3 containers, each on the node the control plane recorded, with labels and limits.
    found = containers(docker_client, name)
    assert len(found) == 3
    placed = {r.replica_id: r.node_id for r in status.replicas}
    for c in found:
        c.reload()
        labels = c.labels
        assert c.status == "running"
        assert placed[labels[LABEL_REPLICA]] == labels[LABEL_NODE]
        host = c.attrs["HostConfig"]
        assert host["NanoCpus"] == 250_000_000
        assert host["Memory"] == 48 * 2**20
        assert "GREETING=hi" in c.attrs["Config"]["Env"]
    started = {c.id: c.attrs["State"]["StartedAt"] for c in found}

    # Re-applying the unchanged manifest is a no-op: no container restarts.
    again = await client.apply(w, wait=True, timeout=30)
    assert again.action == "unchanged" and again.generation == outcome.generation
    for c in containers(docker_client, name):
        c.reload()
        assert started[c.id] == c.attrs["State"]["StartedAt"]

    # Scale up to 5, then down to 1.
    scaled = await client.scale("default", name, 5)
    s5 = await client.wait("default", name, scaled.generation, 90)
    assert s5.ready == 5 and len(containers(docker_client, name)) == 5
    scaled = await client.scale("default", name, 1)
    s1 = await client.wait("default", name, scaled.generation, 90)
    assert s1.ready == 1 and len(s1.replicas) == 1
    remaining = containers(docker_client, name)
    assert [c.labels[LABEL_REPLICA] for c in remaining] == [s1.replicas[0].replica_id]

    # The ledger's allocations follow: exactly one replica's worth is held.
    snap = await client.snapshot()
    assert sum(n.allocated.cpu_millis for n in snap.nodes) == 250

    # Delete stops every container and releases every allocation.
    final = await client.delete("default", name)
    assert final is not None and final.phase == WorkloadPhase.DELETED
    assert containers(docker_client, name) == []
    snap = await client.snapshot()
    assert sum(n.allocated.cpu_millis for n in snap.nodes) == 0


async def test_spec_change_replaces_replicas(client: CloudlessClient, docker_client: Any) -> None:
    name = unique("roll")
    first = await client.apply(manifest(name, replicas=2), wait=True, timeout=90)
    assert first.status is not None and first.status.ready == 2
    old_ids = {r.replica_id for r in first.status.replicas}
    changed = manifest(name, replicas=2)
    data = changed.to_manifest()
    data["spec"]["container"]["env"] = [{"name": "GREETING", "value": "bonjour"}]
    second = await client.apply(parse_workload(data), wait=True, timeout=90)
    assert second.action == "configured" and second.generation == first.generation + 1
    assert second.status is not None and second.status.ready == 2
    assert not old_ids & {r.replica_id for r in second.status.replicas}
    live = containers(docker_client, name)
    assert len(live) == 2
    assert all("GREETING=bonjour" in c.attrs["Config"]["Env"] for c in live)
    await client.delete("default", name)


async def test_unplaceable_replicas_stay_pending_with_reason(client: CloudlessClient) -> None:
    name = unique("big")
    outcome = await client.apply(
        manifest(name, replicas=1, resources={"cpu": "8", "memory": "64Mi"}), wait=True, timeout=30
    )
    status = outcome.status
    assert status is not None and status.phase == WorkloadPhase.PENDING
    (replica,) = status.replicas
    assert replica.phase == ReplicaPhase.PENDING
    assert "0/3 nodes are available" in replica.message
    assert "3 insufficient cpu" in replica.message
    await client.delete("default", name)


async def test_node_selector_and_zone_are_honoured(
    client: CloudlessClient, dev_cluster: LocalCluster, docker_client: Any
) -> None:
    name = unique("edge")
    edge = next(n for n in dev_cluster.agents if n.startswith("edge-"))
    outcome = await client.apply(
        manifest(name, replicas=2, placement={"nodeSelector": {"tier": "edge"}}),
        wait=True,
        timeout=90,
    )
    assert outcome.status is not None
    assert {r.node_id for r in outcome.status.replicas} == {edge}
    zb = await client.apply(
        manifest(unique("zb"), replicas=2, placement={"zones": ["zone-b"]}), wait=True, timeout=90
    )
    assert zb.status is not None
    assert all(r.node_id.startswith("zone-b-") for r in zb.status.replicas)
    await client.delete("default", name)
    await client.delete("default", zb.name)


async def test_ledger_rejects_overcommit(
    client: CloudlessClient, dev_cluster: LocalCluster
) -> None:
    edge = next(n for n in dev_cluster.agents if n.startswith("edge-"))
    plan = CommitPlanInput(
        plan_id=unique("plan"),
        allocations=[
            Allocation(
                replica_id="x",
                workload="default/x",
                node_id=edge,
                resources=Resources(cpu_millis=1500, memory_bytes=2**20),
            )
        ],
    )
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await client.ledger.commit_plan(plan)
    assert "over-committed on cpu" in str(info.value.cause)
    snap = await client.snapshot()
    assert next(n for n in snap.nodes if n.node_id == edge).allocated.cpu_millis == 0


async def test_search_attributes_make_workloads_filterable(client: CloudlessClient) -> None:
    name = unique("sa")
    await client.apply(manifest(name, replicas=1), wait=True, timeout=90)
    found = await visible_workflow_ids(
        client.temporal, f'CloudlessWorkload = "{name}" AND CloudlessPhase = "Available"'
    )
    assert found == [workload_workflow_id("default", name)]
    await client.delete("default", name)


async def test_manifest_with_three_errors_reports_all_and_starts_nothing(
    dev_cluster: LocalCluster, client: CloudlessClient, tmp_path: Any
) -> None:
    good = unique("good")
    bad = tmp_path / "bad.yaml"
    # A valid document first: it must not be applied either, since the file is invalid.
    bad.write_text(
        "apiVersion: cloudless.dev/v1\nkind: Workload\n"
        f"metadata: {{name: {good}}}\n"
        "spec: {container: {image: cloudless/busybox:latest}}\n"
        "---\n"
        "apiVersion: cloudless.dev/v1\nkind: Workload\n"
        "metadata: {name: Bad_Name}\n"
        "spec:\n  replicas: 1\n  replicaz: 2\n"
        "  container: {image: cloudless/busybox:latest}\n"
        "  resources: {memory: -5Mi}\n"
    )
    result = await ctl(dev_cluster, "apply", "-f", str(bad))
    assert result.exit_code == 1
    out = result.output
    assert "3 problems" in out
    assert "metadata.name" in out and "DNS-1123" in out
    assert "spec.replicaz" in out and "did you mean 'replicas'" in out
    assert "spec.resources.memory" in out
    with pytest.raises(NotFoundError):
        await client.workload_status("default", good)


async def test_cli_get_describe_and_errors(
    dev_cluster: LocalCluster, client: CloudlessClient
) -> None:
    name = unique("cli")
    await client.apply(manifest(name, replicas=2), wait=True, timeout=90)
    got = await ctl(dev_cluster, "get", "workloads", "-o", "json")
    assert got.exit_code == 0, got.output
    row = next(w for w in json.loads(got.output) if w["name"] == name)
    assert row["ready"] == 2 and row["phase"] == "Available"
    described = await ctl(dev_cluster, "describe", "workload", name)
    assert described.exit_code == 0 and "Running" in described.output
    assert f"workload/default/{name}" in described.output
    as_yaml = await ctl(dev_cluster, "describe", "workload", name, "-o", "yaml")
    assert yaml.safe_load(as_yaml.output)["desired"] == 2
    nodes = await ctl(dev_cluster, "get", "nodes")
    assert nodes.exit_code == 0 and "Ready" in nodes.output
    edge = next(n for n in dev_cluster.agents if n.startswith("edge-"))
    node = await ctl(dev_cluster, "describe", "node", edge, "-o", "json")
    assert json.loads(node.output)["node"]["zone"] == "edge"
    missing = await ctl(dev_cluster, "describe", "workload", "nope")
    assert missing.exit_code == 1
    assert "workload default/nope not found" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    deleted = await ctl(dev_cluster, "delete", "workload", name)
    assert deleted.exit_code == 0 and "deleted" in deleted.output
    unreachable = await asyncio.to_thread(
        invoke_ctl,
        ["--temporal-address", "127.0.0.1:1", "--state-dir", str(dev_cluster.root), "get", "nodes"],
    )
    assert unreachable.exit_code == 1 and "cannot reach Temporal" in unreachable.output
