"""Apply → all replicas Running, end to end through Temporal, for docker and exec.

Stack: the real Temporal dev server (separate process); coordinator worker, TLS gateway
and three agents shaped like the dev cluster (2 CPU/2 GiB, 4/4, 1/1) in this process,
talking gRPC over mTLS on loopback. Each run applies a fresh workload with ``--wait`` and is
timed until the answer: settled, every replica Running and ready (a replica without probes is
ready once Running). ``answers_before_all_ready`` counts answers that were not (it should be
0; such a run waits until they are, untimed). Then it deletes the workload (not timed).

Baseline, measured in the same run: starting the same replica directly through the
runtime driver (no control plane), so ``ratio`` shows what the control plane adds.

    python bench/apply_latency.py [--runs 20] [--runtimes docker,exec]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.runtime.base import ReplicaSpec
from agent.runtime.docker import DockerDriver
from agent.runtime.exec import ExecDriver
from bench.common import print_table, summarize, write_results
from cloudless.client import CloudlessClient
from cloudless.logs import configure_logging
from cloudless.testing.cluster import LocalCluster, start_temporal
from cloudless.testing.workloads import sleeper


def workload(name: str, replicas: int, runtime: str) -> Any:
    """A sleeping replica: on docker, the same sleep inside the local busybox image."""
    spec: dict[str, Any] = {"strategy": "binpack"}
    if runtime == "docker":
        spec["runtime"] = "docker"
        spec["container"] = {
            "image": "cloudless/busybox:latest",
            "command": ["sh", "-c"],
            "args": ["exec sleep 3600"],
        }
    return sleeper(name, replicas, cpu="100m", memory="32Mi", **spec)


async def bench_apply(
    c: CloudlessClient, runtime: str, replicas: int, runs: int
) -> tuple[list[float], int]:
    """Time ``apply --wait`` until its answer; also count answers that came back with fewer
    than every replica Running and ready (settled means all ready: it should be 0)."""
    samples, early = [], 0
    for i in range(runs + 1):  # the first run warms caches and is discarded
        name = f"b{replicas}-{runtime[:2]}-{uuid.uuid4().hex[:6]}"
        t0 = time.perf_counter()
        outcome = await c.apply(workload(name, replicas, runtime), wait=True, timeout=300)
        elapsed = time.perf_counter() - t0
        status = outcome.status
        if status is None or status.ready < replicas:
            early += 1
            print(f"  apply answered before all were ready: {status}", file=sys.stderr)
            await settle(c, name, replicas)  # the run goes on; the count reports it
        if i:
            samples.append(elapsed)
        await c.delete("default", name)
    return samples, early


async def settle(c: CloudlessClient, name: str, replicas: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (await c.workload_status("default", name)).ready < replicas:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: not all {replicas} replicas ready after {timeout} s")
        await asyncio.sleep(0.05)


async def bench_direct(runtime: str, runs: int, root: Path) -> list[float]:
    node = f"direct-{uuid.uuid4().hex[:6]}"
    driver: Any = DockerDriver(node) if runtime == "docker" else ExecDriver(node, root / node)
    samples = []
    for i in range(runs + 1):
        rid = f"direct-{uuid.uuid4().hex[:8]}"
        spec = ReplicaSpec(
            replica_id=rid,
            namespace="default",
            workload="direct",
            node_id=node,
            image="cloudless/busybox:latest",
            command=("sh", "-c") if runtime == "docker" else ("sleep",),
            args=("exec sleep 3600",) if runtime == "docker" else ("3600",),
            cpu_millis=100,
            memory_bytes=32 * 2**20,
            spec_hash="x",
        )
        t0 = time.perf_counter()
        await driver.run(spec)
        elapsed = time.perf_counter() - t0
        if i:
            samples.append(elapsed)
        await driver.stop(rid, 2.0)
    await driver.close()
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--runtimes", default="docker,exec")
    args = parser.parse_args()
    configure_logging("WARNING")
    runtimes = args.runtimes.split(",")
    env = await start_temporal()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as d:
        root = Path(d)
        cluster = LocalCluster(env.client, root, cluster=f"bench-{uuid.uuid4().hex[:4]}")
        await cluster.start()
        try:
            await cluster.add_agent("zone-a-1", zone="zone-a", cpu="2", memory="2Gi")
            await cluster.add_agent("zone-b-1", zone="zone-b", cpu="4", memory="4Gi")
            await cluster.add_agent("edge-1", zone="edge", cpu="1", memory="1Gi")
            if "docker" in runtimes:
                import docker

                from cloudless.images import build_busybox_image

                dc = docker.from_env(version="auto")
                build_busybox_image(dc)
                dc.close()
            c = CloudlessClient(cluster.client, cluster.cluster)
            for runtime in runtimes:
                direct = await bench_direct(runtime, args.runs, root)
                base = summarize(
                    f"direct driver start, 1 replica ({runtime}) [baseline]",
                    "s",
                    direct,
                    {"runtime": runtime, "replicas": 1},
                )
                results.append(base)
                for replicas in (1, 30):
                    samples, early = await bench_apply(c, runtime, replicas, args.runs)
                    r = summarize(
                        f"apply -> all Running, {replicas} replica(s) ({runtime})",
                        "s",
                        samples,
                        {
                            "runtime": runtime,
                            "replicas": replicas,
                            "agents": 3,
                            "answers_before_all_ready": early,
                        },
                    )
                    if replicas == 1:
                        r["ratio_p50_vs_baseline"] = round(r["p50"] / base["p50"], 2)
                    results.append(r)
                    print_table(results[-1:])
        finally:
            await cluster.close()
            await env.shutdown()
    print()
    print_table(results)
    path = write_results(
        "apply_latency",
        results,
        notes="In-process coordinator and agents, Temporal dev server (in-memory) as a "
        "separate process; each driver start includes its crash-detection settle window "
        "(docker 0.5 s, exec 0.3 s).",
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
