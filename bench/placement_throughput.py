"""End-to-end committed placements per second onto a hollow-node fleet.

Stack: the real Temporal dev server (separate process); in this process the coordinator
(Temporal worker, gateway, liveness) and ``--nodes`` hollow nodes
(``cloudless.testing.hollow``: real enrollment, mTLS AgentService and heartbeats, no
containers). Then a burst: ``--replicas`` replicas in workloads of ``--per-workload``,
applied by ``--appliers`` concurrent clients. Measured:

- enrollment: hollow nodes Ready per second;
- committed placements/s: replicas allocated in the ledger / seconds from the first apply
  until the ledger holds them all (polled every 0.25 s);
- running/s: until every workload reports all replicas Running (RunReplica on the nodes);
- peak RSS of this process: the coordinator (the fleet runs in a child process).

    python bench/placement_throughput.py [--nodes 1000] [--replicas 10000] [--per-workload 100]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import summarize, write_results
from cloudless.client import CloudlessClient
from cloudless.logs import configure_logging
from cloudless.spec import parse_workload
from cloudless.testing.cluster import LocalCluster, start_temporal
from cloudless.testing.hollow import fleet_specs, wait_ready


def workload(name: str, replicas: int) -> Any:
    return parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "replicas": replicas,
                "container": {"image": "cloudless/busybox:latest"},
                "resources": {"cpu": "100m", "memory": "64Mi"},
            },
        }
    )


async def ledger_replicas(c: CloudlessClient) -> int:
    snap = await c.snapshot()
    return sum(n.replicas for n in snap.nodes)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = await start_temporal()
    try:
        with tempfile.TemporaryDirectory(prefix="cl-bench-") as d:
            cluster = LocalCluster(
                env.client, Path(d), cluster=f"b-{uuid.uuid4().hex[:6]}", heartbeat_ttl=60.0
            )
            await cluster.start()
            liveness = getattr(cluster.coordinator, "liveness", None)
            if liveness is not None:
                liveness.interval = args.heartbeat_interval  # what the gateway asks of agents
            # The fleet runs in its own process, as kubemark's hollow nodes do: in this one
            # it would compete with the coordinator for the interpreter.
            fleet = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cloudless.testing.hollow",
                "--gateway", cluster.gateway, "--agent-gateway", cluster.agent_gateway,
                "--coordinator-dir", str(cluster.coordinator_dir), "--cluster", cluster.cluster,
                "--root", str(Path(d) / "hollow"), "--count", str(args.nodes),
                "--concurrency", str(args.enroll_concurrency),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                t_enroll = time.monotonic()
                assert fleet.stdout is not None
                line: list[str] = ["-"]
                while line and line[0] != "enrolled":
                    line = (await fleet.stdout.readline()).decode().split()
                if not line:
                    raise RuntimeError("the hollow fleet exited before enrolling")
                names = {s.name for s in fleet_specs(args.nodes, seed=1)}
                await wait_ready(cluster.client, cluster.cluster, names, timeout=3600)
                enroll_s = time.monotonic() - t_enroll
                print(f"{args.nodes} hollow nodes Ready in {enroll_s:.1f}s", flush=True)
                c = CloudlessClient(cluster.client, cluster.cluster)
                count = args.replicas // args.per_workload
                burst = [f"burst-{i:04d}" for i in range(count)]
                gate = asyncio.Semaphore(args.appliers)

                async def apply(name: str) -> int:
                    async with gate:
                        out = await c.apply(workload(name, args.per_workload), wait=False)
                        return out.generation

                base = await ledger_replicas(c)
                t0 = time.monotonic()
                generations = await asyncio.gather(*(apply(n) for n in burst))
                applied_s = time.monotonic() - t0
                while await ledger_replicas(c) - base < args.replicas:  # noqa: ASYNC110 - polls Temporal
                    await asyncio.sleep(0.25)
                committed_s = time.monotonic() - t0
                print(f"{args.replicas} replicas committed in {committed_s:.2f}s", flush=True)
                await asyncio.gather(
                    *(
                        c.wait("default", n, g, 1800, all_ready=True)
                        for n, g in zip(burst, generations, strict=True)
                    )
                )
                running_s = time.monotonic() - t0
                ledger = getattr(cluster.coordinator, "ledger_activities", None)
                resyncs = ledger.scheduler.resyncs if ledger is not None else None
                return {
                    "nodes": args.nodes,
                    "replicas": args.replicas,
                    "per_workload": args.per_workload,
                    "appliers": args.appliers,
                    "heartbeat_interval_s": args.heartbeat_interval,
                    "enroll_s": round(enroll_s, 2),
                    "enroll_nodes_per_s": round(args.nodes / enroll_s, 1),
                    "apply_calls_s": round(applied_s, 2),
                    "committed_s": round(committed_s, 2),
                    "committed_replicas_per_s": round(args.replicas / committed_s, 1),
                    "running_s": round(running_s, 2),
                    "running_replicas_per_s": round(args.replicas / running_s, 1),
                    "peak_rss_mib": round(
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                    ),
                    "index_resyncs": resyncs,
                }
            finally:
                if fleet.stdin is not None:
                    fleet.stdin.close()
                await fleet.wait()
                await cluster.close()
    finally:
        await env.shutdown()


NOTES = (
    "Single-shot figures (n=1). Hollow nodes (real enrollment, mTLS AgentService and "
    "heartbeats, no containers) in a child process; coordinator and the Temporal dev server "
    "(in-memory) on the same 2 cores. Committed = allocated in the ledger; running = every "
    "replica reported Running by its node. RSS is the coordinator process's peak."
)


def rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One single-shot row per figure, in the shape bench/report.py renders."""
    params = {k: r[k] for k in ("nodes", "replicas", "per_workload", "appliers")}
    n, k = r["nodes"], r["replicas"]
    figures = [
        (f"hollow nodes enrolled and Ready, {n} nodes", "node/s", r["enroll_nodes_per_s"]),
        (f"committed placements, {k}-replica burst onto {n} nodes", "replica/s",
         r["committed_replicas_per_s"]),
        (f"burst fully committed, {k} replicas", "s", r["committed_s"]),
        (f"replicas Running (RunReplica on nodes), {k} replicas", "replica/s",
         r["running_replicas_per_s"]),
        (f"coordinator peak RSS, {n} nodes + {k} replicas", "MiB", r["peak_rss_mib"]),
    ]  # fmt: skip
    return [summarize(metric, unit, [float(v)], params) for metric, unit, v in figures]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=10_000)
    parser.add_argument("--per-workload", type=int, default=100)
    parser.add_argument("--appliers", type=int, default=20)
    parser.add_argument("--heartbeat-interval", type=float, default=10.0)
    parser.add_argument("--enroll-concurrency", type=int, default=8)
    args = parser.parse_args()
    configure_logging("WARNING")
    result = asyncio.run(run(args))
    for k, v in result.items():
        print(f"{k:>28}: {v}")
    path = write_results(
        "placement_throughput",
        rows(result),
        notes=NOTES,
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
