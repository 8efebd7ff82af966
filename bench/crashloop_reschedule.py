"""Crash loop on one node → the replica replaced on another, end to end (issue 10 item 9).

Stack: the real Temporal dev server (separate process); coordinator worker, TLS gateway
and three exec agents in this process, talking gRPC over mTLS on loopback. Each run
applies a one-replica workload whose process exits 3 on any node marked with a file in
its agent's state directory (``cloudless.testing.crashloop``), waits until it runs, marks
its node and SIGKILLs the process: the agent's restarts then crash there. Timed: the kill
→ the replacement Running and ready on another node with nothing left on the marked one
(``wait_settled`` with ``avoid_node``, as ``cloudlessctl`` waits).

Two series: the default ``spec.reschedule`` (3 crashes within 60 s, then a 1 s delay) and
``delay: 0s``. Baseline in the same runs: the crash loop itself, i.e. the seconds from the
first to the last crash the workload counted before it moved the replica (the agent's
restart backoff: at once, then 1 s, then 2 s), which no reschedule can beat.

    python bench/crashloop_reschedule.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import agent  # noqa: F401  (its __init__ applies cloudless.grpc_tuning before grpc loads)
from bench.common import print_table, summarize, write_results
from cloudless.client import CloudlessClient
from cloudless.logs import configure_logging
from cloudless.testing.cluster import LocalCluster, start_temporal
from cloudless.testing.crashloop import crash_loop_and_move, crasher, unmark


async def series(
    cluster: LocalCluster, c: CloudlessClient, runs: int, reschedule: dict[str, Any] | None
) -> tuple[list[float], list[float]]:
    """(kill → moved seconds, crash-loop span seconds) per run; the first run warms up."""
    totals: list[float] = []
    spans: list[float] = []
    spec: dict[str, Any] = {"reschedule": reschedule} if reschedule else {}
    for i in range(runs + 1):
        name = f"crash-{uuid.uuid4().hex[:6]}"
        await c.apply(crasher(name, **spec), wait=True, timeout=120)
        try:
            run = await crash_loop_and_move(cluster, c, name, timeout=120)
            status = await c.workload_status("default", name)
            (event,) = status.reschedules
            if i:
                totals.append(run.seconds)
                spans.append(event.over_seconds)
        finally:
            unmark(cluster)
            await c.delete("default", name)
    return totals, spans


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    configure_logging("WARNING")
    env = await start_temporal()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as d:
        cluster = LocalCluster(env.client, Path(d), cluster=f"bench-{uuid.uuid4().hex[:4]}")
        await cluster.start()
        try:
            for zone in ("a", "b", "c"):
                await cluster.add_agent(f"zone-{zone}-1", zone=f"zone-{zone}", runtimes=["exec"])
            c = CloudlessClient(cluster.client, cluster.cluster)
            for label, reschedule in (
                ("default: 3 in 60s, delay 1s", None),
                ("delay 0s", {"delay": "0s"}),
            ):
                totals, spans = await series(cluster, c, args.runs, reschedule)
                params = {"agents": 3, "runtime": "exec", "reschedule": reschedule or "default"}
                results.append(summarize(f"kill -> moved, ready ({label})", "s", totals, params))
                results.append(
                    summarize(
                        f"crash loop, 1st -> last crash ({label}) [baseline]",
                        "s",
                        spans,
                        params,
                    )
                )
                print_table(results[-2:])
        finally:
            await cluster.close()
            await env.shutdown()
    print()
    print_table(results)
    path = write_results(
        "crashloop_reschedule",
        results,
        notes="In-process coordinator and three exec agents, Temporal dev server (in-memory) "
        "as a separate process. The agent's supervisor looks for exits once a second, so "
        "each crash is seen up to 1 s late; the baseline is the crash loop as the workload "
        "counted it (workflow clock).",
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
