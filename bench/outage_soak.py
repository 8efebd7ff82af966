"""NFR-A1 soak: replicas keep serving through a long coordinator outage (default 15 min).

The scenario of ``tests/chaos/test_coordinator_outage.py`` with a configurable outage and
one probe a second (``cloudless/testing/outage.py``): the dev stack as real processes
(transit, Temporal dev server, coordinator, three agents) with the docker runtime; the
coordinator is killed with SIGKILL; during the outage one replica's container is killed
(its agent restarts it), a run-once replica is killed (its agent holds the exit), and the
probed replica's own agent is killed and started again (it adopts the container); then
the coordinator comes back and the cluster must converge.

Reported: HTTP probe latency of the surviving replica over the whole run, failed probes
(the goal is 0), and the recovery times (agent restart of the crashed replica, agents
reconnecting, workloads converged after the coordinator returned).

    python bench/outage_soak.py [--outage 900] [--interval 1.0]

Needs a Docker engine and the ``cloudless/busybox`` image (built on first use from the
host's static busybox). Uses the dev stack's ports shifted by ``--port-offset`` (2500).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, summarize, write_results
from cloudless.cli.devstack import DevPorts
from cloudless.testing.outage import CRASHY, ONESHOT, WEB, OutageReport, run_outage


def verdicts(report: OutageReport) -> list[str]:
    """What NFR-A1 requires that this run did not show (empty: all held)."""
    problems = []
    if report.failed_probes:
        problems.append(f"{len(report.failed_probes)} failed probe(s)")
    if report.web_container[0] != report.web_container[1]:
        problems.append("the restarted agent did not adopt the web container")
    if report.crashy_restart[0] < 1:
        problems.append("the crashed replica was not restarted by its agent")
    if any(now <= then for then, now in report.reconnects.values()):
        problems.append("an agent did not reconnect")
    if report.after and report.after[ONESHOT].replicas[0].replica_id == report.before[ONESHOT]:
        problems.append("the run-once replica's exit was not reported")
    if any(len(nodes) != 1 for nodes in report.running.values()):
        problems.append("a replica id runs on two nodes")
    if any(n != 1 for n in report.containers.values()):
        problems.append("a replica has more than one container")
    return problems


def results_of(report: OutageReport, params: dict[str, Any]) -> list[dict[str, Any]]:
    latencies = [p.seconds for p in report.probes if p.ok]
    failed = len(report.failed_probes)
    return [
        summarize("probe latency of a surviving replica (whole run)", "s", latencies, params),
        {
            **summarize("failed probes of the surviving replica", "count", [failed], params),
            "probes": len(report.probes),
        },
        summarize(
            "crashed replica killed -> restarted by its agent (no coordinator)",
            "s",
            [report.seconds_to_crashy_restart],
            params,
        ),
        summarize(
            "coordinator back -> every agent reconnected",
            "s",
            [report.seconds_to_reconnect],
            params,
        ),
        summarize(
            "coordinator back -> workloads converged (exit reported, replaced)",
            "s",
            [report.seconds_to_converge],
            params,
        ),
    ]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=900.0, help="seconds (default 900)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between probes")
    parser.add_argument("--port-offset", type=int, default=2500)
    args = parser.parse_args()
    params = {
        "outage_seconds": args.outage,
        "probe_interval_seconds": args.interval,
        "runtime": "docker",
        "workloads": [WEB, CRASHY, ONESHOT],
    }
    with tempfile.TemporaryDirectory(prefix="cl-soak-") as d:
        report = await run_outage(
            Path(d) / "stack",
            outage=args.outage,
            ports=DevPorts.shifted(args.port_offset),
            probe_interval=args.interval,
            progress=lambda m: print(f"# {m}", flush=True),
        )
    params["measured_outage_seconds"] = round(report.outage_seconds, 1)
    results = results_of(report, params)
    print_table(results)
    problems = verdicts(report)
    for p in report.failed_probes[:10]:
        print(f"failed probe at {p.at:.1f}s: {p.error}")
    notes = (
        "NFR-A1 held: no failed probe, container adopted, crash restarted by the agent, "
        "exit reported on reconnect, no duplicates"
        if not problems
        else "NFR-A1 NOT met: " + "; ".join(problems)
    )
    print(notes)
    path = write_results("outage_soak", results, notes=notes)
    print(f"wrote {path}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
