"""The scheduler wired into the control plane, on the real Temporal dev server and agents:
pending replicas with the scheduler's reason and their wake-up when room appears,
priority preemption, explanations, and concurrent appliers that never over-commit a node.

The module gets its own dev cluster (zone-a 2 CPU / 2 GiB, zone-b 4 / 4, edge 1 / 1).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.testing import ActivityEnvironment

from activities.ledger import LedgerActivities
from activities.scheduler_inputs import workload_meta
from cloudless.client import CloudlessClient
from cloudless.model import (
    Allocation,
    CommitPlanInput,
    PlacementRequest,
    ReplicaPhase,
    SchedulerSettings,
    WorkloadPhase,
    WorkloadStatus,
)
from cloudless.spec import Workload, parse_workload
from cloudless.testing.cli import ctl
from cloudless.testing.cluster import LocalCluster
from tests.conftest import unique

pytestmark = [pytest.mark.docker, pytest.mark.temporal]


def sleeper(name: str, replicas: int = 1, cpu: str = "250m", **spec: Any) -> Workload:
    """A light exec-runtime workload (no container to start)."""
    data: dict[str, Any] = {
        "apiVersion": "cloudless.dev/v1",
        "kind": "Workload",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "runtime": "exec",
            "container": {"command": ["sleep", "3600"]},
            "resources": {"cpu": cpu, "memory": "32Mi"},
            **spec,
        },
    }
    return parse_workload(data)


@pytest.fixture
def client(dev_cluster: LocalCluster) -> CloudlessClient:
    return CloudlessClient(dev_cluster.client, dev_cluster.cluster)


def edge_of(cluster: LocalCluster) -> str:
    return next(n for n in cluster.agents if n.startswith("edge-"))


async def running(client: CloudlessClient, name: str, count: int, timeout: float) -> WorkloadStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = await client.workload_status("default", name)
        if sum(r.phase == ReplicaPhase.RUNNING for r in status.replicas) >= count:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: not {count} running after {timeout}s: {status}")
        await asyncio.sleep(0.1)


async def test_pending_with_reason_then_woken_when_room_appears(
    client: CloudlessClient, dev_cluster: LocalCluster
) -> None:
    edge = edge_of(dev_cluster)
    hog, waiter = unique("hog"), unique("waiter")
    edge_only: dict[str, Any] = {"placement": {"nodeSelector": {"tier": "edge"}}}
    await client.apply(sleeper(hog, cpu="800m", **edge_only), wait=True, timeout=60)
    await running(client, hog, 1, 30)
    out = await client.apply(sleeper(waiter, cpu="500m", **edge_only), wait=True, timeout=30)
    status = out.status
    assert status is not None and status.phase == WorkloadPhase.PENDING, status
    (replica,) = status.replicas
    assert replica.message == (
        "0/3 nodes are available: 2 node selector mismatch, 1 insufficient cpu"
    ), replica.message
    assert "replica(s) pending: 0/3 nodes are available" in status.message
    # Let the retry backoff grow well past what the test waits below.
    await asyncio.sleep(8)
    started = time.monotonic()
    await client.delete("default", hog)
    placed = await running(client, waiter, 1, 30)
    woke_after = time.monotonic() - started
    assert placed.replicas[0].node_id == edge
    assert woke_after < 5, f"placed {woke_after:.1f}s after the release: no wake-up"
    await client.delete("default", waiter)


async def test_higher_priority_preempts_lower_and_victims_move(
    client: CloudlessClient, dev_cluster: LocalCluster
) -> None:
    edge = edge_of(dev_cluster)
    low, high, peer = unique("low"), unique("high"), unique("peer")
    prefers_edge = {
        "nodeAffinity": {
            "preferred": [
                {
                    "weight": 100,
                    "preference": {
                        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["edge"]}]
                    },
                }
            ]
        },
        "weights": {"node_affinity": 10},
    }
    # minAvailable 0: both replicas may share a node (else at most one per node while
    # others have room), so both go to the edge they prefer.
    await client.apply(
        sleeper(
            low, 2, cpu="400m", priorityClassName="low", placement=prefers_edge, minAvailable=0
        ),
        wait=True,
        timeout=60,
    )
    first = await running(client, low, 2, 30)
    assert {r.node_id for r in first.replicas} == {edge}, first.replicas

    await client.apply(
        sleeper(high, 1, cpu="500m", priority=1000, placement={"nodeSelector": {"tier": "edge"}}),
        wait=True,
        timeout=60,
    )
    h = await running(client, high, 1, 30)
    assert h.replicas[0].node_id == edge
    # The evicted replica was replaced on another node; the other one stayed.
    moved = await running(client, low, 2, 30)
    on_edge = [r for r in moved.replicas if r.node_id == edge]
    assert len(on_edge) == 1 and len(moved.replicas) == 2, moved.replicas
    snap = await client.snapshot()
    by_id = {n.node_id: n for n in snap.nodes}
    assert by_id[edge].allocated.cpu_millis == 900
    assert by_id[edge].workloads == {f"default/{low}": 1, f"default/{high}": 1}

    # Equal (or lower) priority never preempts: the peer waits, nothing else moves.
    out = await client.apply(
        sleeper(peer, 1, cpu="500m", priority=-1000, placement={"nodeSelector": {"tier": "edge"}}),
        wait=True,
        timeout=30,
    )
    assert out.status is not None and out.status.phase == WorkloadPhase.PENDING
    assert "1 insufficient cpu" in out.status.replicas[0].message
    assert (await client.workload_status("default", high)).replicas[0].node_id == edge
    assert len([r for r in (await running(client, low, 2, 5)).replicas if r.node_id == edge]) == 1
    for name in (peer, high, low):
        await client.delete("default", name)


async def test_describe_and_explain_show_scores(
    client: CloudlessClient, dev_cluster: LocalCluster, tmp_path: Path
) -> None:
    name = unique("why")
    w = sleeper(name, 2, strategy="spread")
    await client.apply(w, wait=True, timeout=60)
    status = await running(client, name, 2, 30)
    for r in status.replicas:
        assert r.score is not None and r.candidates and r.candidates[0].node_id == r.node_id
        assert {"reliability", "utilization"} <= set(r.candidates[0].factors)
    described = await ctl(dev_cluster, "describe", "workload", name)
    assert described.exit_code == 0, described.output
    assert "score" in described.output and "relia" in described.output

    path = tmp_path / "big.yaml"
    big = sleeper(unique("big"), 2, cpu="3")
    path.write_text(yaml.safe_dump(big.to_manifest()))
    explained = await ctl(dev_cluster, "explain", "-f", str(path))
    assert explained.exit_code == 0, explained.output
    assert "placed 1/2 replica(s)" in explained.output, explained.output
    assert "unplaced 1: 0/3 nodes are available: 3 insufficient cpu" in explained.output
    # A dry run commits nothing.
    snap = await client.snapshot()
    assert not any(f"default/{big.metadata.name}" in n.workloads for n in snap.nodes)
    await client.delete("default", name)


async def test_concurrent_appliers_never_overcommit_a_node(client: CloudlessClient) -> None:
    """12 appliers at once ask for 36 x 300m on 7 cores: some replicas must wait, and the
    ledger never holds more than a node's capacity, nor anything the workloads do not."""
    names = [unique(f"c{i}") for i in range(12)]
    outcomes = await asyncio.gather(
        *(client.apply(sleeper(n, 3, cpu="300m"), wait=True, timeout=120) for n in names)
    )
    assert all(o.status is not None for o in outcomes)
    snap = await client.snapshot()
    statuses = [await client.workload_status("default", n) for n in names]
    placed: dict[str, int] = {}
    for s in statuses:
        for r in s.replicas:
            if r.node_id:
                placed[r.node_id] = placed.get(r.node_id, 0) + r.resources.cpu_millis
    for node in snap.nodes:
        assert node.allocated.fits_within(node.capacity), node
        assert node.allocated.cpu_millis == placed.get(node.node_id, 0), node
    total = sum(placed.values())
    assert 6_000 <= total <= 7_000, placed  # the cluster is (nearly) full: 22 of 36 fit
    pending = [r for s in statuses for r in s.replicas if r.phase == ReplicaPhase.PENDING]
    assert pending and all("insufficient cpu" in r.message for r in pending)
    await asyncio.gather(*(client.delete("default", n) for n in names))
    snap = await client.snapshot()
    assert all(n.allocated.cpu_millis == 0 for n in snap.nodes), snap


async def test_a_joining_node_wakes_pending_replicas_and_its_labels_are_facts(
    client: CloudlessClient, dev_cluster: LocalCluster
) -> None:
    """Region and taint advertised as reserved labels reach the ledger and the scheduler;
    a replica waiting for such a node is placed as soon as the node is Ready."""
    name = unique("eu")
    wants_eu: dict[str, Any] = {
        "placement": {
            "regions": ["eu-west"],
            "tolerations": [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}],
        }
    }
    out = await client.apply(sleeper(name, **wants_eu), wait=True, timeout=30)
    assert out.status is not None and out.status.phase == WorkloadPhase.PENDING
    assert out.status.replicas[0].message == "0/3 nodes are available: 3 region mismatch"
    # A node in eu-west that only tolerating replicas may use.
    node = unique("eu-node")
    await asyncio.sleep(3)  # the workload's retry backoff grows meanwhile
    started = time.monotonic()
    await dev_cluster.add_agent(
        node,
        zone="eu-1",
        cpu="1",
        memory="1Gi",
        runtimes=["exec"],
        labels={
            "cloudless.dev/region": "eu-west",
            "taint.cloudless.dev/dedicated": "batch.NoSchedule",
        },
    )
    placed = await running(client, name, 1, 30)
    assert placed.replicas[0].node_id == node
    assert time.monotonic() - started < 15
    entry = next(n for n in (await client.snapshot()).nodes if n.node_id == node)
    assert entry.region == "eu-west" and entry.uptime_ratio == 1.0 and entry.churn == 0
    assert [(t.key, t.value, t.effect) for t in entry.taints] == [
        ("dedicated", "batch", "NoSchedule")
    ]
    # Without the toleration nothing else lands there.
    other = unique("plain")
    await client.apply(sleeper(other, 1, placement={"regions": ["eu-west"]}), wait=True, timeout=30)
    status = await client.workload_status("default", other)
    assert status.replicas[0].message == (
        "0/4 nodes are available: 3 region mismatch, 1 untolerated taint"
    )
    for n in (name, other):
        await client.delete("default", n)
    await dev_cluster.stop_agent(node)


async def test_gpu_and_bandwidth_requests_are_scheduled_and_accounted(
    client: CloudlessClient, dev_cluster: LocalCluster
) -> None:
    """A workload asking for GPUs and egress bandwidth lands only where a node advertises
    enough of both; the ledger accounts them, and the replica that does not fit says why."""
    node = unique("gpu-node")
    await dev_cluster.add_agent(
        node,
        zone="gpu-1",
        cpu="2",
        memory="1Gi",
        runtimes=["exec"],
        labels={"cloudless.dev/gpu": "2", "cloudless.dev/bandwidth-mbps": "100"},
    )
    name = unique("trainer")
    wants = sleeper(name, 2, cpu="100m")
    manifest = wants.to_manifest()
    manifest["spec"]["resources"].update({"gpu": 1, "bandwidth": "60Mbps"})
    out = await client.apply(parse_workload(manifest), wait=True, timeout=30)
    assert out.status is not None
    placed = await running(client, name, 1, 30)
    on_node = [r for r in placed.replicas if r.phase == ReplicaPhase.RUNNING]
    assert [r.node_id for r in on_node] == [node]
    (waiting,) = [r for r in placed.replicas if r.phase == ReplicaPhase.PENDING]
    # The three plain nodes have no GPU; the GPU node's 100 Mbps hold one replica's 60.
    assert "3 insufficient gpu" in waiting.message, waiting.message
    assert "1 insufficient bandwidth" in waiting.message, waiting.message
    entry = next(n for n in (await client.snapshot()).nodes if n.node_id == node)
    assert (entry.capacity.gpu, entry.capacity.bandwidth_bps) == (2, 100_000_000)
    assert (entry.allocated.gpu, entry.allocated.bandwidth_bps) == (1, 60_000_000)
    await client.delete("default", name)
    entry = next(n for n in (await client.snapshot()).nodes if n.node_id == node)
    assert (entry.allocated.gpu, entry.allocated.bandwidth_bps) == (0, 0)
    await dev_cluster.stop_agent(node)


async def test_scheduler_settings_are_the_clusters_and_weigh_every_decision(
    client: CloudlessClient, dev_cluster: LocalCluster, tmp_path: Path
) -> None:
    """`cloudlessctl scheduler set` stores settings in the ledger; the coordinator picks
    them up without a restart (its index polls the ledger version) and decides with them;
    invalid settings are refused with the reason and change nothing."""
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(sleeper(unique("probe"), 1).to_manifest()))

    async def explained_until(wanted: str) -> str:
        deadline = time.monotonic() + 20
        while True:
            out = await ctl(dev_cluster, "explain", "-f", str(path))
            assert out.exit_code == 0, out.output
            if wanted in out.output or time.monotonic() > deadline:
                return str(out.output)
            await asyncio.sleep(0.5)

    before = await explained_until("weights:")
    assert "reliability 0.25" in before and "cost 0.15" in before, before
    try:
        bad = await ctl(dev_cluster, "scheduler", "set", "--weight", "relability=1")
        assert bad.exit_code == 1
        assert "unknown score factor 'relability'" in bad.output, bad.output
        bad = await ctl(dev_cluster, "scheduler", "set", "--sample-percent", "0")
        assert bad.exit_code == 1 and "sample_percent" in bad.output, bad.output
        assert await client.scheduler_settings() == SchedulerSettings()

        done = await ctl(
            dev_cluster, "scheduler", "set", "-w", "reliability=0.9", "-w", "cost=0",
            "--sample-min", "1", "--sample-percent", "1",
        )  # fmt: skip
        assert done.exit_code == 0, done.output
        stored = await client.scheduler_settings()
        assert stored.weights == {"cost": 0.0, "reliability": 0.9} and stored.sample_min == 1
        after = await explained_until("reliability 0.9")
        assert (
            "reliability 0.9" in after and "cost" not in after.split("weights:")[1].split("\n")[0]
        ), after
        assert "1 scored" in after, after  # max(1, 1% of 3 feasible) nodes scored
        shown = await ctl(dev_cluster, "scheduler", "show")
        assert shown.exit_code == 0 and "reliability" in shown.output and "(set)" in shown.output
        # A workload's own weights still override the cluster's, factor by factor.
        own = sleeper(unique("own"), 1, placement={"weights": {"reliability": 0.1}})
        path.write_text(yaml.safe_dump(own.to_manifest()))
        mine = await explained_until("reliability 0.1")
        assert (
            "reliability 0.1" in mine and "cost" not in mine.split("weights:")[1].split("\n")[0]
        ), mine
    finally:
        reset = await ctl(dev_cluster, "scheduler", "set", "--reset")
        assert reset.exit_code == 0, reset.output
    assert await client.scheduler_settings() == SchedulerSettings()


async def test_a_plan_decided_on_a_stale_index_is_rejected_and_retried_fresh(
    client: CloudlessClient, dev_cluster: LocalCluster
) -> None:
    """Two coordinators: a second scheduler state (its own LedgerActivities, as another
    coordinator process holds) loads the index, then the cluster's coordinator fills
    zone-b behind its back. The second one's spread decision still sees zone-b empty and
    picks it; the ledger's validator rejects the plan, the index re-syncs, and the retry
    lands on zone-a. Nothing is ever over-committed."""
    other = LedgerActivities(dev_cluster.client, dev_cluster.cluster)
    other.scheduler.poll_version = None  # only the rejection may tell it about the change
    await other.scheduler.current()
    loads = other.scheduler.resyncs
    zone_b = next(n for n in dev_cluster.agents if n.startswith("zone-b-"))
    filler = unique("filler")
    await client.apply(sleeper(filler, 1, cpu="3500m", placement={"zones": ["zone-b"]}), wait=True)
    await running(client, filler, 1, 30)

    late = sleeper(unique("late"), 1, cpu="1", strategy="spread")
    late_key = f"default/{late.metadata.name}"
    stale = other.scheduler.index
    assert stale is not None and stale.free(zone_b).cpu_millis == 4000  # it believes so
    result = await ActivityEnvironment().run(
        other.place_replicas,
        PlacementRequest(
            cluster=dev_cluster.cluster,
            workload=late_key,
            plan_id=unique("plan"),
            replica_ids=["late-1"],
            resources=workload_meta(late).resources,
            manifest=late.to_manifest(),
            allow_preemption=False,
        ),
    )
    (placed,) = result.placements
    assert placed.node_id.startswith("zone-a-"), result
    assert other.scheduler.resyncs == loads + 1  # exactly one rejection, then a fresh index
    snap = await client.snapshot()
    for node in snap.nodes:
        assert node.allocated.fits_within(node.capacity), node
    # Release what the out-of-band plan took, the way a workload's release would.
    await ActivityEnvironment().run(
        other.commit_plan,
        CommitPlanInput(
            plan_id=unique("release"),
            releases=[
                Allocation(
                    replica_id="late-1", workload=late_key, node_id=placed.node_id,
                    resources=workload_meta(late).resources,
                )
            ],
        ),
    )  # fmt: skip
    await client.delete("default", filler)
