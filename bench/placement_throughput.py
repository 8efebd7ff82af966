"""End-to-end committed placements per second onto a hollow-node fleet.

Stack: the real Temporal dev server (separate process); in this process the coordinator
(Temporal workers, gateway, liveness, scheduler index); ``--nodes`` hollow nodes
(``cloudless.testing.hollow``: real enrollment, mTLS AgentService and heartbeats, no
containers) split over ``--fleets`` child processes. Then a burst: ``--replicas``
replicas in workloads of ``--per-workload``, applied by ``--appliers`` concurrent clients
of a load-generator process; optionally more workloads until ``--hold-replicas`` are held. Measured:

- enrollment: hollow nodes Ready per second;
- committed placements/s: replicas allocated in the ledger / seconds from the first apply
  until the ledger holds them all (the ledger's ``totals`` query, polled every 0.1 s), and
  the sustained rate between 10 % and 90 % of the burst;
- all Running: until every workload reports all replicas Running;
- peak RSS of this process (psutil): the coordinator.

    python bench/placement_throughput.py [--nodes 1000] [--replicas 10000] [--fleets 2]
        [--hold-replicas 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# isort: split
import workers  # noqa: F401  (its __init__ applies cloudless.grpc_tuning before grpc loads)

# isort: split

import psutil
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError

from bench.common import RESULTS, summarize, write_results
from cloudless.client import CloudlessClient
from cloudless.codec import codec_for, data_converter
from cloudless.logs import configure_logging
from cloudless.spec import parse_workload
from cloudless.testing.cluster import LocalCluster, start_temporal
from cloudless.transit.client import embedded_transit_settings
from workers.gcpolicy import GcPolicy


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


async def ledger_totals(c: CloudlessClient) -> tuple[int, int]:
    """(Ready nodes, replicas allocated) from the ledger's cheap ``totals`` query."""
    while True:
        try:
            _, ready, replicas = await c.ledger.totals()
            return ready, replicas
        except (RPCError, WorkflowQueryFailedError):  # busy ledger, or its task is retried
            await asyncio.sleep(0.1)


class GcTimer:
    """Seconds this process spends in the cyclic garbage collector, by generation."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._began
            self.count[generation] += 1

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


class RssSampler:
    """Peak RSS of one process (psutil), sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> int:
        rss = int(self.proc.memory_info().rss)
        self.peak = max(self.peak, rss)
        return rss

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def burst(
    c: CloudlessClient, names: list[str], per_workload: int, appliers: int, base: int
) -> dict[str, float]:
    """Apply ``names`` (``per_workload`` replicas each); time until the ledger holds them
    all (committed) and until every replica reports Running. ``sustained`` is the commit
    rate between 10 % and 90 % of the burst (start-up and tail excluded)."""
    total = len(names) * per_workload
    gate = asyncio.Semaphore(appliers)

    async def apply(name: str) -> int:
        async with gate:
            out = await c.apply(workload(name, per_workload), wait=False)
            return out.generation

    t0 = time.monotonic()
    applying = asyncio.gather(*(apply(n) for n in names))
    marks: dict[float, float] = {}
    while True:
        done = (await ledger_totals(c))[1] - base
        now = time.monotonic() - t0
        for q in (0.1, 0.9):
            if done >= q * total and q not in marks:
                marks[q] = now
        if done >= total:
            break
        await asyncio.sleep(0.1)
    committed_s = time.monotonic() - t0
    generations = await applying
    await asyncio.gather(
        *(
            c.wait("default", n, g, 3600, all_ready=True)
            for n, g in zip(names, generations, strict=True)
        )
    )
    running_s = time.monotonic() - t0
    span = max(1e-6, marks[0.9] - marks[0.1])
    return {
        "committed_s": committed_s,
        "running_s": running_s,
        "sustained": 0.8 * total / span,
        "t10_s": marks[0.1],
        "t90_s": marks[0.9],
    }


async def drive(
    report: Callable[[dict[str, Any]], None],
    target: str, namespace: str, root: str, cluster: str, args: argparse.Namespace,
) -> None:  # fmt: skip
    """The load generator: the burst, then the optional hold. Runs in its own process,
    as a client of the cluster, so the coordinator's CPU and RSS are the coordinator's."""
    codec = codec_for(embedded_transit_settings(Path(root)))
    client = await Client.connect(target, namespace=namespace, data_converter=data_converter(codec))
    c = CloudlessClient(client, cluster)
    base = (await ledger_totals(c))[1]
    count = args.replicas // args.per_workload
    b = await burst(
        c, [f"burst-{i:04d}" for i in range(count)], args.per_workload, args.appliers, base
    )
    print(
        f"{args.replicas} replicas committed in {b['committed_s']:.2f}s, "
        f"Running in {b['running_s']:.2f}s",
        flush=True,
    )
    report(b)  # the coordinator's RSS peak "during the burst" is read now
    hold: dict[str, float] = {}
    if args.hold_replicas > args.replicas:
        more = (args.hold_replicas - args.replicas) // args.per_workload
        names = [f"hold-{i:04d}" for i in range(more)]
        base = (await ledger_totals(c))[1]
        hold = await burst(c, names, args.per_workload, args.appliers, base)
        print(f"holding {args.hold_replicas} replicas", flush=True)
    report({"hold": hold, "held": (await ledger_totals(c))[1]})


def _drive_main(conn: Any, *params: Any) -> None:
    configure_logging("WARNING")
    asyncio.run(drive(conn.send, *params))
    conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = await start_temporal()
    rss = RssSampler(os.getpid())
    rss.start()
    try:
        with tempfile.TemporaryDirectory(prefix="cl-bench-") as d:
            cluster = LocalCluster(
                env.client, Path(d), cluster=f"b-{uuid.uuid4().hex[:6]}", heartbeat_ttl=60.0,
                # As `cloudless-coordinator` runs (this process stands in for it).
                coordinator_options={"gc_policy": GcPolicy()},
            )  # fmt: skip
            await cluster.start()
            liveness = getattr(cluster.coordinator, "liveness", None)
            if liveness is not None:
                liveness.interval = args.heartbeat_interval  # what the gateway asks of agents
            # The fleet runs in its own processes, as kubemark's hollow nodes do: in this
            # one it would compete with the coordinator for the interpreter.
            flags = [
                "--gateway", cluster.gateway, "--agent-gateway", cluster.agent_gateway,
                "--coordinator-dir", str(cluster.coordinator_dir), "--cluster", cluster.cluster,
                "--root", str(Path(d) / "hollow"), "--count", str(args.nodes),
                "--concurrency", str(args.enroll_concurrency),
            ]  # fmt: skip
            fleets = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "cloudless.testing.hollow",
                    *flags,
                    "--shard",
                    f"{i}/{args.fleets}",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
                for i in range(args.fleets)
            ]
            try:
                t_enroll = time.monotonic()
                for fleet in fleets:
                    assert fleet.stdout is not None
                    line: list[str] = ["-"]
                    while line and line[0] != "enrolled":
                        line = (await fleet.stdout.readline()).decode().split()
                    if not line:
                        raise RuntimeError("a hollow fleet exited before enrolling")
                c = CloudlessClient(cluster.client, cluster.cluster)
                while (await ledger_totals(c))[0] < args.nodes:  # noqa: ASYNC110 - polls
                    await asyncio.sleep(0.5)
                enroll_s = time.monotonic() - t_enroll
                print(f"{args.nodes} hollow nodes Ready in {enroll_s:.1f}s", flush=True)
                # The load generator is a client in its own process; the RSS peak
                # during the burst is the sample taken when it reports the burst done.
                ctx = mp.get_context("spawn")
                mine, theirs = ctx.Pipe(duplex=False)
                target = cluster.client.service_client.config.target_host
                driver = ctx.Process(
                    target=_drive_main,
                    args=(theirs, target, cluster.client.namespace, d, cluster.cluster, args),
                )
                driver.start()
                with GcTimer() as gc_burst:
                    b = await asyncio.to_thread(mine.recv)
                peak_burst = rss.peak
                end = await asyncio.to_thread(mine.recv)
                hold, held = end["hold"], end["held"]
                await asyncio.to_thread(driver.join)
                await asyncio.sleep(5)  # let the tail of the work settle before sampling
                rss.sample()
                ledger = getattr(cluster.coordinator, "ledger_activities", None)
                return {
                    "nodes": args.nodes,
                    "replicas": args.replicas,
                    "per_workload": args.per_workload,
                    "appliers": args.appliers,
                    "fleets": args.fleets,
                    "heartbeat_interval_s": args.heartbeat_interval,
                    "enroll_s": round(enroll_s, 2),
                    "enroll_nodes_per_s": round(args.nodes / enroll_s, 1),
                    "committed_s": round(b["committed_s"], 2),
                    "committed_replicas_per_s": round(args.replicas / b["committed_s"], 1),
                    "sustained_replicas_per_s": round(b["sustained"], 1),
                    "committed_10pct_s": round(b["t10_s"], 2),
                    "committed_90pct_s": round(b["t90_s"], 2),
                    "running_s": round(b["running_s"], 2),
                    "running_replicas_per_s": round(args.replicas / b["running_s"], 1),
                    "peak_rss_burst_mib": round(peak_burst / 2**20),
                    "held_replicas": held,
                    "hold_committed_replicas_per_s": round(
                        (args.hold_replicas - args.replicas) / hold["committed_s"], 1
                    )
                    if hold
                    else None,
                    "peak_rss_mib": round(rss.peak / 2**20),
                    "gc_seconds_burst": [round(x, 2) for x in gc_burst.seconds],
                    "gc_collections_burst": gc_burst.count,
                    "index_resyncs": ledger.scheduler.resyncs if ledger is not None else None,
                    "ledger_batches": ledger.writer.batches if ledger is not None else None,
                }
            finally:
                for fleet in fleets:
                    if fleet.stdin is not None:
                        fleet.stdin.close()
                for fleet in fleets:
                    await fleet.wait()
                await cluster.close()
    finally:
        rss.stop()
        await env.shutdown()


NOTES = (
    "Single-shot figures (n=1), one run per fleet size; a run replaces only its own rows. "
    "Hollow nodes (real enrollment, mTLS AgentService and heartbeats, no containers) in "
    "`fleets` child processes; the coordinator (Temporal workers, gateway, scheduler index) "
    "runs in the benchmark's own process, with the Temporal dev server (in-memory, separate "
    "process) on the same 2 cores, which other jobs shared. Committed = allocated in the "
    "ledger (polled every 0.1 s); sustained = rate between 10 % and 90 % of the burst; "
    "Running = every replica reported Running by its node. The load generator (applies, "
    "waits, ledger polling) is a client in its own process. RSS: psutil on the "
    "coordinator's process, sampled every 0.5 s. Before this work (per-replica "
    "run_replica activities, sandbox re-imports per workflow run, one fleet process) "
    "1,000 nodes / 10,000 replicas "
    "committed at 241 replica/s (41.5 s), all Running after 81 s, enrollment 6.9 node/s."
)


def rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One single-shot row per figure, in the shape bench/report.py renders."""
    params = {k: r[k] for k in ("nodes", "replicas", "per_workload", "appliers", "fleets")}
    n, k = r["nodes"], r["replicas"]
    figures = [
        (f"hollow nodes enrolled and Ready, {n} nodes", "node/s", r["enroll_nodes_per_s"]),
        (f"committed placements, {k}-replica burst onto {n} nodes (first apply to last "
         "commit)", "replica/s", r["committed_replicas_per_s"]),
        (f"committed placements sustained (10-90 % of the burst), {k} replicas onto {n} nodes",
         "replica/s",
         r["sustained_replicas_per_s"]),
        (f"burst fully committed, {k} replicas onto {n} nodes", "s", r["committed_s"]),
        (f"burst all Running (RunReplica on nodes), {k} replicas onto {n} nodes", "s",
         r["running_s"]),
        (f"coordinator peak RSS during the burst, {n} nodes + {k} replicas", "MiB",
         r["peak_rss_burst_mib"]),
    ]  # fmt: skip
    if r.get("hold_committed_replicas_per_s"):
        held = r["held_replicas"]
        figures += [
            (f"committed placements, further {held - k} replicas onto {n} nodes", "replica/s",
             r["hold_committed_replicas_per_s"]),
            (f"coordinator peak RSS holding {n} nodes + {held} replicas", "MiB",
             r["peak_rss_mib"]),
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
    parser.add_argument("--fleets", type=int, default=2, help="hollow-fleet processes")
    parser.add_argument(
        "--hold-replicas", type=int, default=0,
        help="after the burst, apply more workloads until this many replicas are held "
        "(for the coordinator's peak RSS at scale)",
    )  # fmt: skip
    args = parser.parse_args()
    configure_logging("WARNING")
    result = asyncio.run(run(args))
    for k, v in result.items():
        print(f"{k:>28}: {v}")
    new = rows(result)
    keep: list[dict[str, Any]] = []
    old = RESULTS / "placement_throughput.json"
    if old.exists():  # other fleet sizes' rows stay; rows from before --fleets go
        keep = [
            r
            for r in json.loads(old.read_text())["results"]
            if "fleets" in r["parameters"] and r["parameters"] != new[0]["parameters"]
        ]
    path = write_results("placement_throughput", keep + new, notes=NOTES)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
