"""Scheduler decision latency on synthetic heterogeneous clusters (pure CPU, no I/O).

Clusters of 1k/5k/20k/50k nodes mix phones, laptops, PCs, VPSes and gateways over regions
and zones, with labels, taints, a few non-Ready nodes and random existing replicas of many
workloads. Each request uses the full policy: runtime and runtime class, allowed regions,
required node affinity (In + Gt), required anti-affinity against its own replicas, a
DoNotSchedule zone spread and a ScheduleAnyway region spread, preferred node and workload
(anti-)affinity, locality, and all five weighted factors.

Measured (after warm-up; each sample is one ``schedule()`` call on a fresh request):

- single-replica decision P50/P95/P99 per size, default sampling and full scan;
- a 100-replica batch at 5k nodes, with the full policy and with none (only the per-node
  cap and the default replica spreading a plain multi-replica workload gets);
- the sample's score gap: full-scan best minus the sampled pick, in score points (0..100);
- baseline in the same run: ``bench.naive_placer.place`` (the plain-Python loop the scheduler
  replaced, over node objects, with a simpler policy) at 5k nodes, as the ratio's denominator;
- index upkeep: allocate+release and ``snapshot()`` at the largest size.

    python bench/scheduler_decision.py [--sizes 1000,5000,20000,50000] [--runs 500]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import naive_placer as placement
from bench.common import print_table, summarize, write_results
from cloudless.vocabulary import NodeState
from policies.scheduler import (
    LabelSelector,
    Locality,
    MatchExpression,
    NodeAffinity,
    NodeIndex,
    NodeSelectorTerm,
    NodeSpec,
    PlacementRequest,
    PreferredNodeTerm,
    Resources,
    SpreadConstraint,
    Taint,
    WeightedWorkloadAffinityTerm,
    WorkloadAffinity,
    WorkloadAffinityTerm,
    schedule,
)

MI = 1024**2
GI = 1024**3
MBPS = 1_000_000

# (kind, share, cores, memory GiB, storage GiB, runtimes, uptime range, churn max, $/core-h,
#  latency ms)
KINDS: list[
    tuple[
        str,
        float,
        tuple[int, int],
        tuple[int, int],
        tuple[int, int],
        tuple[str, ...],
        tuple[float, float],
        int,
        tuple[float, float],
        tuple[float, float],
    ]
] = [
    (
        "phone",
        0.35,
        (4, 8),
        (4, 12),
        (32, 128),
        ("exec", "docker"),
        (0.60, 0.95),
        8,
        (0.002, 0.010),
        (30, 150),
    ),
    (
        "laptop",
        0.25,
        (4, 16),
        (8, 32),
        (128, 1024),
        ("docker", "exec"),
        (0.70, 0.98),
        4,
        (0.004, 0.015),
        (10, 60),
    ),
    (
        "pc",
        0.20,
        (8, 32),
        (16, 64),
        (256, 2048),
        ("docker", "exec"),
        (0.90, 0.995),
        2,
        (0.005, 0.020),
        (5, 40),
    ),
    (
        "vps",
        0.15,
        (2, 16),
        (4, 64),
        (50, 400),
        ("docker", "exec"),
        (0.99, 0.9999),
        1,
        (0.010, 0.050),
        (2, 30),
    ),
    (
        "gateway",
        0.05,
        (2, 4),
        (1, 4),
        (8, 32),
        ("exec",),
        (0.95, 0.999),
        1,
        (0.001, 0.005),
        (1, 10),
    ),
]
STATES = [NodeState.READY] * 97 + [NodeState.SUSPECT, NodeState.DRAINING, NodeState.CORDONED]


def build_cluster(n: int, seed: int = 1) -> tuple[NodeIndex, list[placement.NodeView], list[str]]:
    """A synthetic cluster as a NodeIndex and, for the baseline, as placement.NodeViews."""
    rnd = random.Random(seed)
    regions = [f"region-{r}" for r in range(max(3, min(8, n // 5000 + 3)))]
    zones = [(f"{region}-{z}", region) for region in regions for z in "abcd"]
    kinds = [k for k in KINDS for _ in range(int(k[1] * 100))]
    index = NodeIndex(initial_capacity=n)
    views: list[placement.NodeView] = []
    specs: list[NodeSpec] = []
    for i in range(n):
        kind, _, cores, mem, disk, runtimes, uptime, churn, price, latency = rnd.choice(kinds)
        zone, region = rnd.choice(zones)
        gpu = 1 if kind == "pc" and rnd.random() < 0.3 else 0
        taints: tuple[Taint, ...] = ()
        if kind == "gateway":
            taints = (Taint("edge", "gateway", "NoSchedule"),)
        elif kind == "phone" and rnd.random() < 0.3:
            taints = (Taint("battery", "low", "PreferNoSchedule"),)
        bandwidth = rnd.choice([20, 50, 100, 200, 1000])
        spec = NodeSpec(
            node_id=f"{kind}-{i:06d}",
            capacity=Resources(
                cpu_millis=rnd.randint(*cores) * 1000,
                memory_bytes=rnd.randint(*mem) * GI,
                storage_bytes=rnd.randint(*disk) * GI,
                gpu=gpu,
                bandwidth_bps=bandwidth * MBPS,
            ),
            zone=zone,
            region=region,
            labels={
                "device": kind,
                "arch": "arm64" if kind in ("phone", "gateway") else "amd64",
                "disk": rnd.choice(["ssd", "ssd", "hdd"]),
                "owner": f"owner-{rnd.randrange(50)}",
                "bandwidth-mbps": str(bandwidth),
            },
            state=rnd.choice(STATES),
            runtimes=frozenset(runtimes if kind != "phone" or rnd.random() < 0.4 else ("exec",)),
            runtime_classes=frozenset(["runc", "gvisor"] if kind == "vps" else ["runc"]),
            taints=taints,
            uptime_ratio=rnd.uniform(*uptime),
            churn=float(rnd.randint(0, churn)),
            cost_per_core_hour=rnd.uniform(*price),
            latency_ms=rnd.uniform(*latency),
        )
        specs.append(spec)
        index.upsert(spec)
    # workloads and their existing replicas: about 5 per node, filling nodes to 0..80 %
    n_workloads = max(20, n // 10)
    workloads = []
    for w in range(n_workloads):
        key = f"default/app-{w}"
        tier = rnd.choice(["web", "web", "batch", "cache"])
        index.register_workload(key, {"app": f"app-{w}", "tier": tier})
        size = Resources(
            cpu_millis=rnd.choice([100, 250, 500]), memory_bytes=rnd.choice([128, 256, 512]) * MI
        )
        workloads.append((key, size))
    for spec in specs:
        free_cpu = int(spec.capacity.cpu_millis * rnd.uniform(0.0, 0.8))
        free_mem = int(spec.capacity.memory_bytes * rnd.uniform(0.0, 0.8))
        used_cpu = used_mem = 0
        for _ in range(rnd.randint(0, 10)):
            key, size = rnd.choice(workloads)
            if used_cpu + size.cpu_millis > free_cpu or used_mem + size.memory_bytes > free_mem:
                break
            index.allocate(spec.node_id, size, workload_key=key)
            used_cpu += size.cpu_millis
            used_mem += size.memory_bytes
        views.append(
            placement.NodeView(
                node_id=spec.node_id,
                zone=spec.zone,
                labels=spec.labels,
                cpu_capacity=spec.capacity.cpu_millis,
                memory_capacity=spec.capacity.memory_bytes,
                storage_capacity=spec.capacity.storage_bytes,
                cpu_allocated=used_cpu,
                memory_allocated=used_mem,
                state=spec.state,
                runtimes=spec.runtimes,
            )
        )
    return index, views, [k for k, _ in workloads]


def full_policy(workload: str, regions: list[str], count: int = 1) -> PlacementRequest:
    """A request that exercises every filter and factor."""
    app = workload.split("/", 1)[1]
    own = LabelSelector({"app": app})
    return PlacementRequest(
        count=count,
        resources=Resources(
            cpu_millis=500, memory_bytes=512 * MI, storage_bytes=1 * GI, bandwidth_bps=5 * MBPS
        ),
        workload_key=workload,
        workload_labels={"app": app, "tier": "web"},
        runtime="docker",
        runtime_class="runc",
        regions=frozenset(regions[:-1]),
        node_affinity=NodeAffinity(
            required=(
                NodeSelectorTerm(
                    (
                        MatchExpression("device", "In", ("phone", "laptop", "pc", "vps")),
                        MatchExpression("bandwidth-mbps", "Gt", ("20",)),
                    )
                ),
            ),
            preferred=(
                PreferredNodeTerm(20, NodeSelectorTerm((MatchExpression("disk", "In", ("ssd",)),))),
            ),
        ),
        workload_anti_affinity=WorkloadAffinity(
            required=(WorkloadAffinityTerm(own, "node"),),
            preferred=(
                WeightedWorkloadAffinityTerm(
                    30, WorkloadAffinityTerm(LabelSelector({"tier": "batch"}), "node")
                ),
            ),
        ),
        workload_affinity=WorkloadAffinity(
            preferred=(
                WeightedWorkloadAffinityTerm(
                    50, WorkloadAffinityTerm(LabelSelector({"tier": "cache"}), "zone")
                ),
            ),
        ),
        spread=(
            SpreadConstraint(max_skew=2, topology_key="zone", when_unsatisfiable="DoNotSchedule"),
            SpreadConstraint(
                max_skew=1, topology_key="region", when_unsatisfiable="ScheduleAnyway"
            ),
        ),
        locality=Locality(zones=frozenset({f"{regions[0]}-a"})),
    )


def timed(fn: Any, runs: int, warmup: int) -> list[float]:
    """Milliseconds per call, GC paused during each timed call as a service would not be."""
    for i in range(warmup):
        fn(i)
    samples = []
    for i in range(runs):
        gc.disable()
        t0 = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - t0) * 1000)
        gc.enable()
    return samples


def bench_size(n: int, args: argparse.Namespace, largest: bool) -> list[dict[str, Any]]:
    """Every measurement for one cluster size (baseline and batch only at 5k)."""
    t0 = time.perf_counter()
    index, views, workloads = build_cluster(n)
    build_s = time.perf_counter() - t0
    regions = sorted({index.node(i).region for i in list(index)[:200]})
    requests = [full_policy(w, regions) for w in workloads[:50]]
    label = f"{n // 1000}k nodes"
    params: dict[str, Any] = {
        "nodes": n,
        "replicas": 1,
        "workloads": len(workloads),
        "build_s": round(build_s, 1),
    }
    results: list[dict[str, Any]] = []
    baseline_p50 = None
    if n == 5000:
        req = placement.PlacementRequest(
            count=1, demand=placement.Demand(500, 512 * MI, 1 * GI), runtime="docker"
        )
        base = timed(lambda i: placement.place(req, views), max(50, args.runs // 5), 5)
        row = summarize(
            f"placement.place, plain Python loop, 1 replica, {label} [baseline]",
            "ms",
            base,
            {"nodes": n, "replicas": 1, "policy": "ready/runtime/zone/selector/capacity, binpack"},
        )
        baseline_p50 = row["p50"]
        results.append(row)

    for mode, reqs in (
        ("sampled", requests),
        ("full scan", [dataclasses.replace(r, sample_size=None) for r in requests]),
    ):
        samples = timed(lambda i, rs=reqs: schedule(rs[i % 50], index, rng_seed=i), args.runs, 20)
        row = summarize(
            f"schedule, full policy, 1 replica, {mode}, {label}",
            "ms",
            samples,
            {**params, "sample_size": "auto" if mode == "sampled" else None},
        )
        if baseline_p50:
            row["ratio_p50_vs_baseline"] = round(row["p50"] / baseline_p50, 3)
        results.append(row)

    gaps: list[float] = []
    scored: list[int] = []
    feasible: list[int] = []
    for i in range(min(args.runs, 200)):
        d = schedule(requests[i % 50], index, rng_seed=i, compare_full_scan=True, top_k=0)
        if d.score_gap is not None:
            gaps.append(d.score_gap)
            scored.append(d.scored_nodes)
            feasible.append(d.feasible_nodes)
    if gaps:
        results.append(
            summarize(
                f"sample score gap vs full scan, {label}",
                "points",
                gaps,
                {
                    **params,
                    "mean_scored": round(sum(scored) / len(scored)),
                    "mean_feasible": round(sum(feasible) / len(feasible)),
                    "zero_gap_share": round(sum(g == 0 for g in gaps) / len(gaps), 3),
                },
            )
        )

    if n == 5000:
        batch = [full_policy(w, regions, count=100) for w in workloads[:20]]
        for mode, reqs in (
            ("sampled", batch),
            ("full scan", [dataclasses.replace(r, sample_size=None) for r in batch]),
        ):
            samples = timed(
                lambda i, rs=reqs: schedule(rs[i % 20], index, rng_seed=i), args.batch_runs, 3
            )
            results.append(
                summarize(
                    f"schedule, full policy, 100-replica batch, {mode}, {label}",
                    "ms",
                    samples,
                    {**params, "replicas": 100},
                )
            )

        # The common case: a workload of 100 replicas with no constraints of its own, as
        # placement_request builds it (its totals set the per-node cap and the default
        # replica spreading).
        plain = [
            PlacementRequest(
                count=100,
                resources=Resources(cpu_millis=100, memory_bytes=64 * MI),
                workload_key=w,
                workload_labels={"app": w.split("/", 1)[1]},
                replicas=100,
            )
            for w in workloads[:20]
        ]
        for mode, reqs in (
            ("sampled", plain),
            ("full scan", [dataclasses.replace(r, sample_size=None) for r in plain]),
        ):
            samples = timed(
                lambda i, rs=reqs: schedule(rs[i % 20], index, rng_seed=i), args.batch_runs, 3
            )
            results.append(
                summarize(
                    f"schedule, no constraints (per-node cap, replica spread), "
                    f"100-replica batch, {mode}, {label}",
                    "ms",
                    samples,
                    {**params, "replicas": 100},
                )
            )

    if largest:
        ids = list(index)[:1000]
        size = Resources(cpu_millis=100, memory_bytes=64 * MI)

        def churn(i: int) -> None:
            node = ids[i % len(ids)]
            index.allocate(node, size, workload_key="default/app-0")
            index.release(node, size, workload_key="default/app-0")

        def snap(i: int) -> None:
            copy = index.snapshot()
            index.allocate(ids[i % len(ids)], size)  # the first write copies one column
            index.release(ids[i % len(ids)], size)
            del copy

        upkeep = [t * 1000 for t in timed(churn, 2000, 50)]
        results.append(summarize(f"index allocate+release, {label}", "us", upkeep, {"nodes": n}))
        results.append(
            summarize(
                f"index snapshot + first write, {label}", "ms", timed(snap, 200, 5), {"nodes": n}
            )
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,5000,20000,50000")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--batch-runs", type=int, default=100)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: list[dict[str, Any]] = []
    for n in sizes:
        results.extend(bench_size(n, args, largest=n == sizes[-1]))
        gc.collect()
    print_table(results)
    path = write_results(
        "scheduler_decision",
        results,
        notes=(
            "Pure CPU, one process. Full policy = runtime+class, regions, node affinity "
            "(In, Gt), self anti-affinity (node), zone spread DoNotSchedule, region spread "
            "ScheduleAnyway, preferred node/workload (anti-)affinity, locality, five weighted "
            "factors. Sampled = default bound max(100, 5% of feasible). Gap = full-scan best "
            "minus sampled pick, score points 0..100. Baseline = bench.naive_placer.place "
            "(plain Python loop, simpler policy)."
        ),
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
