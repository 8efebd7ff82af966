"""Membership convergence and failed-replica rescheduling, end to end through Temporal.

Stack: the real Temporal dev server; coordinator (worker, TLS gateway, mTLS agent
endpoint, liveness monitor) and agents in this process, gRPC over mTLS on loopback;
replicas run with the exec runtime so container start time does not blur the
control-plane figures.

Measured:
- agent start -> node Ready and schedulable (fresh enrollment; and an enrolled agent
  restarting after being Offline);
- agent killed (stream breaks) -> every replica Running elsewhere;
- silent partition (stream open, no heartbeats) -> every replica Running elsewhere (TTL).
Baseline in the same run: the liveness configuration itself (suspect grace, TTL), the
floor no detector can beat; the ratio shows what the control plane adds on top.

    python bench/churn_latency.py [--trials 20] [--ttl 3] [--grace 1.0]
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

from bench.common import print_table, summarize, write_results
from cloudless.client import CloudlessClient
from cloudless.logs import configure_logging
from cloudless.model import NodeState
from cloudless.testing.cluster import LocalCluster, start_temporal
from cloudless.testing.workloads import sleeper


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--ttl", type=float, default=3.0)
    parser.add_argument("--grace", type=float, default=1.0)
    args = parser.parse_args()
    configure_logging("WARNING")
    env = await start_temporal()
    results: list[dict[str, Any]] = []
    params = {"ttl_s": args.ttl, "suspect_grace_s": args.grace, "heartbeat_interval_s": 0.5}
    with tempfile.TemporaryDirectory(prefix="bench-") as d:
        cluster = LocalCluster(
            env.client,
            Path(d),
            cluster=f"churn-{uuid.uuid4().hex[:4]}",
            heartbeat_ttl=args.ttl,
            suspect_grace=args.grace,
        )
        await cluster.start()
        c = CloudlessClient(cluster.client, cluster.cluster)
        try:
            join: list[float] = []
            # Every failure gets a fresh victim (victims are cordoned once back), because a
            # node failing 3 times in 10 minutes is rightly held back by flap damping,
            # which is not what this measures.
            for i in range(args.trials * 2 + 8):
                t0 = time.perf_counter()
                await cluster.add_agent(f"n{i}", zone=f"zone-{i % 3}", runtimes=["exec"])
                join.append(time.perf_counter() - t0)
            results.append(
                summarize("agent start -> node Ready (enrollment)", "s", join[8:], params)
            )
            print_table(results[-1:])

            name = f"bench-{uuid.uuid4().hex[:5]}"
            outcome = await c.apply(sleeper(name, 6), wait=True, timeout=60)
            generation = outcome.generation
            death: list[float] = []
            partition: list[float] = []
            rejoin: list[float] = []
            for trial in range(args.trials * 2):
                status = await c.workload_status("default", name)
                victim = status.replicas[0].node_id
                handle = cluster.agents[victim]
                t0 = time.perf_counter()
                if trial % 2 == 0:
                    await cluster.kill_agent(victim)
                else:
                    handle.heartbeat.pause()
                await c.wait("default", name, generation, 60, all_ready=True, avoid_node=victim)
                (death if trial % 2 == 0 else partition).append(time.perf_counter() - t0)
                await c.wait_node(victim, [NodeState.OFFLINE], timeout=30)
                if trial % 2 == 0:
                    t1 = time.perf_counter()
                    await cluster.restart_agent(victim)
                    rejoin.append(time.perf_counter() - t1)
                else:
                    t1 = time.perf_counter()
                    handle.heartbeat.resume()
                    await cluster.wait_node_ready(victim)
                    rejoin.append(time.perf_counter() - t1)
                await c.node_admin(victim, "cordon", "benchmark: used as a victim")
            floor_death = summarize(
                "[baseline] detection floor: suspect grace", "s", [args.grace], params
            )
            r_death = summarize("agent killed -> replacement Running elsewhere", "s", death, params)
            r_death["ratio_p50_vs_baseline"] = round(r_death["p50"] / args.grace, 2)
            r_part = summarize(
                "partition (silent) -> replacement Running elsewhere", "s", partition, params
            )
            r_part["ratio_p50_vs_baseline"] = round(r_part["p50"] / args.ttl, 2)
            results += [
                floor_death,
                r_death,
                summarize("[baseline] detection floor: TTL", "s", [args.ttl], params),
                r_part,
                summarize("Offline node returns -> Ready (reconciled)", "s", rejoin, params),
            ]
            await c.delete("default", name)
        finally:
            await cluster.close()
            from agent.runtime.exec import ExecDriver

            for n in list(cluster._specs):
                drv = ExecDriver(n, Path(d) / "agents" / n)
                for s in await drv.list():
                    await drv.stop(s.replica_id, 1.0)
            await env.shutdown()
    print()
    print_table(results)
    path = write_results(
        "churn_latency",
        results,
        notes="Coordinator and agents in one process (exec runtime), Temporal dev server "
        "in-memory as a separate process. Node churn alternates process death (stream "
        "breaks: Suspect at once, Offline after the grace) and a silent partition "
        "(stream stays open, heartbeats stop: Offline after the jittered TTL).",
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
