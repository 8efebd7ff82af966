"""Failed-replica rescheduling with real processes and a real network partition.

Stack (the dev stack's own launchers, ``cloudless.cli.devstack``): ``cloudless-transit``, the
Temporal dev server (SQLite file), one coordinator process with the product's default
liveness settings (unless ``--ttl``/``--grace`` are given), and agents as separate
``python -m agent.main`` processes with the exec runtime (replicas are ``sleep``
processes, so container start time does not blur the control-plane figures).

Two pools of agents, each running one workload pinned to its zone:

* ``death``: agents on loopback. A trial SIGKILLs the agent process of a node that runs
  replicas (the replicas themselves keep running, as they do after a real crash), and
  times the kill -> every replica of that workload Running and none on that node
  (the workload's ``wait_settled`` update, as ``cloudlessctl apply --wait`` uses). The
  agent process is then started again and the node must be Ready (reconciled) before
  the next trial.
* ``partition``: every agent in its own network namespace behind a veth pair (as
  ``tests/chaos/test_partition.py``). A trial takes the host end of the link down (no
  RST: the heartbeat stream just goes silent), times the same thing, brings the link up
  and waits for the node to be Ready (reconciled: stale copies stopped) again.

A node that leaves Ready 3 times within 10 minutes is held back by flap damping, which is
not what this measures, so every node is a victim at most twice; victims stay in the
pool and receive replacements. The first trial of each kind is a warm-up, not counted.

Baselines in the same run: the detection floor of each path, read from the coordinator's
own Offline reason for each trial (the suspect grace; the node's jittered TTL).

Needs root and iproute2 (network namespaces).

    python bench/churn_latency.py [--trials 20] [--partition-trials 20] [--pool 12]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import agent  # noqa: F401  (its __init__ applies cloudless.grpc_tuning before grpc loads)
from bench.common import print_table, summarize, write_results
from cloudless.cli.devstack import (
    DevAgent,
    DevPorts,
    _spawn_agent,
    record_process,
    stack_target,
    start_processes,
    stop_exec_replicas,
    stop_processes,
    wait_until,
)
from cloudless.client import CloudlessClient
from cloudless.codec import codec_for
from cloudless.model import NodeState
from cloudless.pki import CertificateAuthority
from cloudless.temporal import connect
from cloudless.testing.workloads import sleeper
from cloudless.tokens import TokenSigner
from cloudless.transit.client import embedded_transit_settings

CLUSTER = "churn"
#: A node leaving Ready 3 times in 10 minutes is held by flap damping: use each twice.
MAX_USES = 2
#: The coordinator's defaults (workers/coordinator.py), used unless --ttl/--grace are given.
DEFAULT_TTL, DEFAULT_GRACE, TTL_JITTER = 10.0, 1.0, 0.2
#: What the gateway answers in ``interval_seconds``; agents beat at that pace once
#: connected (their own default is the same 1 s).
HEARTBEAT_INTERVAL = 1.0
SUBNET = "10.233"  # 10.233.<k>.0/30 per namespace; the chaos test uses 10.231.7.0/30


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@dataclass
class Agent:
    spec: DevAgent
    netns: str | None = None
    host_if: str = ""
    host: str = "127.0.0.1"  # where it serves
    gateway_host: str = "127.0.0.1"  # where it finds the coordinator
    proc: subprocess.Popen[bytes] | None = None
    uses: int = 0


@dataclass
class Stack:
    state: Path
    ports: DevPorts
    agents: dict[str, Agent] = field(default_factory=dict)
    namespaces: list[tuple[str, str]] = field(default_factory=list)

    def record_pid(self, name: str, pid: int) -> None:
        """Keep dev.json current, so ``stop_processes`` stops every agent we started."""
        record_process(self.state, f"agent/{name}", pid)

    def add_namespace(self, k: int) -> tuple[str, str, str, str]:
        """A namespace behind its own veth link: (netns, host_if, host_ip, ns_ip)."""
        tag = uuid.uuid4().hex[:4]
        ns, host_if, ns_if = f"cb-{tag}-{k}", f"cbh{tag}{k}", f"cbn{tag}{k}"
        host_ip, ns_ip = f"{SUBNET}.{k}.1", f"{SUBNET}.{k}.2"
        sh("ip", "netns", "add", ns)
        self.namespaces.append((ns, host_if))
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        return ns, host_if, host_ip, ns_ip

    def spawn(self, a: Agent, token: str | None) -> Path:
        proc, ready = _spawn_agent(
            self.state, CLUSTER, self.ports, a.spec, ("exec",), token,
            host=a.host, gateway_host=a.gateway_host, netns=a.netns,
        )  # fmt: skip
        a.proc = proc
        self.record_pid(a.spec.name, proc.pid)
        return ready

    async def start_agent(self, a: Agent, token: str | None) -> None:
        """Start the agent process; return once it serves."""
        ready = self.spawn(a, token)
        log = self.state / "logs" / f"agent-{a.spec.name}.log"
        await asyncio.to_thread(wait_until, ready.exists, a.spec.name, 60, a.proc, log)

    def kill9(self, a: Agent) -> None:
        """SIGKILL the agent process alone: its replicas (own sessions) keep running."""
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait()

    def cleanup(self) -> None:
        stop_processes(self.state)
        stop_exec_replicas(self.state, tuple(self.agents))
        for ns, host_if in self.namespaces:
            subprocess.run(["ip", "link", "del", host_if], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


async def ready_node(c: CloudlessClient, name: str, timeout: float = 120) -> None:
    node = await c.wait_node(name, [NodeState.READY], timeout=timeout)
    if node is None or node.state != NodeState.READY:
        raise TimeoutError(f"node {name} not Ready after {timeout:.0f}s: {node}")


async def offline_reason(c: CloudlessClient, name: str) -> str:
    """The reason of the node's latest Offline transition (the coordinator's words)."""
    status = await c.node(name).describe()
    assert status is not None
    offline = [t for t in status.transitions if t.state == NodeState.OFFLINE]
    return offline[-1].reason if offline else ""


def pick_victim(status: Any, pool: list[Agent]) -> tuple[Agent, int]:
    """A node of the pool that runs replicas and may fail once more without being damped:
    the least used first, then the fewest replicas (so most trials move one)."""
    per_node = Counter(r.node_id for r in status.replicas)
    candidates = [a for a in pool if per_node[a.spec.name] > 0 and a.uses < MAX_USES]
    if not candidates:
        raise RuntimeError("no victim left: raise --pool")
    a = min(candidates, key=lambda a: (a.uses, per_node[a.spec.name], a.spec.name))
    return a, per_node[a.spec.name]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20, help="process-death trials")
    parser.add_argument("--partition-trials", type=int, default=20)
    parser.add_argument("--pool", type=int, default=12, help="agents per pool")
    parser.add_argument("--replicas", type=int, default=8, help="replicas per workload")
    parser.add_argument("--ttl", type=float, default=None, help="default: the product's")
    parser.add_argument("--grace", type=float, default=None, help="default: the product's")
    parser.add_argument("--port-offset", type=int, default=2700)
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("ip") is None:
        sys.exit("network namespaces need root and iproute2")
    for kind, n in (("death", args.trials), ("partition", args.partition_trials)):
        if n + 1 > args.pool * MAX_USES:
            sys.exit(f"{n} {kind} trials need --pool >= {(n + 2) // MAX_USES}")
    ttl = args.ttl if args.ttl is not None else DEFAULT_TTL
    grace = args.grace if args.grace is not None else DEFAULT_GRACE
    coordinator_args: tuple[str, ...] = ()
    if args.ttl is not None:
        coordinator_args += ("--heartbeat-ttl", str(args.ttl))
    if args.grace is not None:
        coordinator_args += ("--suspect-grace", str(args.grace))
    params: dict[str, Any] = {
        "ttl_s": ttl,
        "ttl_jitter": TTL_JITTER,
        "ttl_is_default": args.ttl is None,
        "suspect_grace_s": grace,
        "heartbeat_interval_s": HEARTBEAT_INTERVAL,
        "agents": "separate processes, exec runtime",
        "coordinator": "separate process",
    }
    results: list[dict[str, Any]] = []
    ports = DevPorts.shifted(args.port_offset)
    with tempfile.TemporaryDirectory(prefix="bench-churn-") as d:
        stack = Stack(Path(d) / "stack", ports)
        try:
            await asyncio.to_thread(
                start_processes, stack.state, CLUSTER, ports=ports, agents=(),
                runtimes=("exec",), listen_host="0.0.0.0", coordinator_args=coordinator_args,
            )  # fmt: skip
            codec = codec_for(embedded_transit_settings(stack.state))
            temporal = await connect(stack_target(stack.state, ports), wait=30, codec=codec)
            c = CloudlessClient(temporal, CLUSTER)

            death_pool: list[Agent] = []
            part_pool: list[Agent] = []
            for k in range(args.pool):
                spec = DevAgent(f"d{k}", "death", "1", "1Gi", 7101 + k)
                death_pool.append(Agent(spec))
            for k in range(args.pool):
                ns, host_if, host_ip, ns_ip = stack.add_namespace(k + 1)
                spec = DevAgent(f"p{k}", "partition", "1", "1Gi", 7201 + k)
                part_pool.append(Agent(spec, ns, host_if, ns_ip, host_ip))
            for a in death_pool + part_pool:
                stack.agents[a.spec.name] = a

            coord = stack.state / "coordinator"
            signer = TokenSigner.load(coord)
            ca = CertificateAuthority.load(coord).cert_pem.decode()
            join: list[float] = []
            for a in death_pool + part_pool:
                token, _ = signer.mint(
                    cluster=CLUSTER, ca_pem=ca, ttl=timedelta(minutes=30), node_name=a.spec.name
                )
                t0 = time.perf_counter()
                await stack.start_agent(a, token)
                await ready_node(c, a.spec.name)
                join.append(time.perf_counter() - t0)
            print(f"{len(join)} agents enrolled", flush=True)

            death, rejoin, death_moved, death_floor = await run_death(
                c, stack, death_pool, args.trials + 1, args.replicas
            )
            part, heal, part_moved, part_floor, paths = await run_partition(
                c, stack, part_pool, args.partition_trials + 1, args.replicas
            )
            # The first trial of each kind warmed code paths up; it is not counted.
            death, rejoin, death_moved, death_floor = (
                death[1:], rejoin[1:], death_moved[1:], death_floor[1:]
            )  # fmt: skip
            part, heal, part_moved, part_floor, paths = (
                part[1:], heal[1:], part_moved[1:], part_floor[1:], paths[1:]
            )  # fmt: skip
            part_floor = [f for f in part_floor if f == f]  # NaN: the stream broke first

            p_death = {**params, "replicas_moved_mean": round(statistics.fmean(death_moved), 2)}
            floor = summarize(
                "[baseline] detection floor: suspect grace", "s", death_floor, p_death
            )
            r_death = summarize(
                "agent process SIGKILLed -> replacement Running elsewhere", "s", death, p_death
            )
            r_death["ratio_p50_vs_baseline"] = round(r_death["p50"] / floor["p50"], 2)
            p_part = {
                **params,
                "replicas_moved_mean": round(statistics.fmean(part_moved), 2),
                "offline_reasons": dict(Counter(paths)),
            }
            part_base = summarize(
                "[baseline] detection floor: the node's jittered TTL", "s", part_floor, p_part
            )
            r_part = summarize(
                "network partition (veth down) -> replacement Running elsewhere", "s", part, p_part
            )
            r_part["ratio_p50_vs_baseline"] = round(r_part["p50"] / part_base["p50"], 2)
            results += [
                floor,
                r_death,
                part_base,
                r_part,
                summarize(
                    "[extra] agent process start -> node Ready (enrollment)", "s", join, params
                ),
                summarize(
                    "[extra] killed agent restarted -> node Ready (reconciled)", "s", rejoin, params
                ),
                summarize(
                    "[extra] partition heals (veth up) -> node Ready (reconciled)",
                    "s",
                    heal,
                    params,
                ),
            ]
        finally:
            await asyncio.to_thread(stack.cleanup)
    print()
    print_table(results)
    ttl_text = (
        f"the default TTL of {ttl:g} s (jittered per node to {ttl:g}-{ttl * (1 + TTL_JITTER):g} s)"
        if args.ttl is None
        else f"a TTL of {ttl:g} s (LOWERED from the default {DEFAULT_TTL:g} s)"
    )
    path = write_results(
        "churn_latency",
        results,
        notes=(
            "Real processes: cloudless-transit, the Temporal dev server (SQLite file), one "
            "coordinator process and "
            f"{2 * args.pool} agent processes (`python -m agent.main`, exec runtime), with "
            f"{ttl_text}, suspect grace {grace:g} s and the 1 s heartbeat interval the gateway "
            "sets. Process death: SIGKILL of an agent process on loopback (its stream breaks; "
            "Suspect, then Offline after the grace); the agent is restarted and its node Ready "
            "before the next trial. Partition: an agent in its own network namespace behind a "
            "veth pair whose host end is taken down (the stream goes silent; Offline after the "
            "node's TTL), then up again until the node is Ready. Each time runs from the kill "
            "or link-down to the workload's `wait_settled` update answering (all replicas "
            f"Running and ready, none on the victim); {args.replicas} replicas per pool of "
            f"{args.pool} nodes, each node a victim at most twice (flap damping), the first "
            "trial of each kind a warm-up not counted. Baselines: the Offline reason the "
            "coordinator recorded for each trial (the grace; the node's jittered TTL)."
        ),
    )
    print(f"\nwrote {path}")


async def run_death(
    c: CloudlessClient, stack: Stack, pool: list[Agent], trials: int, replicas: int
) -> tuple[list[float], list[float], list[int], list[float]]:
    name = f"death-{uuid.uuid4().hex[:4]}"
    outcome = await c.apply(
        sleeper(name, replicas, placement={"zones": ["death"]}), wait=True, timeout=90
    )
    times: list[float] = []
    rejoin: list[float] = []
    moved: list[int] = []
    floor: list[float] = []
    for trial in range(trials):
        victim, n = pick_victim(await c.workload_status("default", name), pool)
        victim.uses += 1
        t0 = time.perf_counter()
        stack.kill9(victim)
        await c.wait("default", name, outcome.generation, 60, all_ready=True,
                     avoid_node=victim.spec.name)  # fmt: skip
        times.append(time.perf_counter() - t0)
        moved.append(n)
        await c.wait_node(victim.spec.name, [NodeState.OFFLINE], timeout=30)
        reason = await offline_reason(c, victim.spec.name)
        got = re.search(r"did not reconnect within ([\d.]+)s", reason)
        if got is None:
            raise RuntimeError(f"{victim.spec.name}: unexpected Offline reason {reason!r}")
        floor.append(float(got.group(1)))
        t1 = time.perf_counter()
        await stack.start_agent(victim, None)
        await ready_node(c, victim.spec.name)
        rejoin.append(time.perf_counter() - t1)
        print(f"death {trial}: {victim.spec.name} x{n} {times[-1]:.3f}s, "
              f"back {rejoin[-1]:.3f}s", flush=True)  # fmt: skip
    await c.delete("default", name)
    return times, rejoin, moved, floor


async def run_partition(
    c: CloudlessClient, stack: Stack, pool: list[Agent], trials: int, replicas: int
) -> tuple[list[float], list[float], list[int], list[float], list[str]]:
    name = f"part-{uuid.uuid4().hex[:4]}"
    outcome = await c.apply(
        sleeper(name, replicas, placement={"zones": ["partition"]}), wait=True, timeout=90
    )
    times: list[float] = []
    heal: list[float] = []
    moved: list[int] = []
    floor: list[float] = []
    paths: list[str] = []
    for trial in range(trials):
        victim, n = pick_victim(await c.workload_status("default", name), pool)
        victim.uses += 1
        t0 = time.perf_counter()
        sh("ip", "link", "set", victim.host_if, "down")  # silence: no RST, no FIN
        try:
            await c.wait("default", name, outcome.generation, 90, all_ready=True,
                         avoid_node=victim.spec.name)  # fmt: skip
            times.append(time.perf_counter() - t0)
            moved.append(n)
            await c.wait_node(victim.spec.name, [NodeState.OFFLINE], timeout=30)
        finally:
            t1 = time.perf_counter()
            sh("ip", "link", "set", victim.host_if, "up")
        await ready_node(c, victim.spec.name)
        heal.append(time.perf_counter() - t1)
        reason = await offline_reason(c, victim.spec.name)
        got = re.search(r"no heartbeat for ([\d.]+)s", reason)
        if got is not None:
            floor.append(float(got.group(1)))
            paths.append("no heartbeat for the TTL")
        else:  # the stream broke first (a TCP timeout): record what really happened
            floor.append(float("nan"))
            paths.append(reason)
        print(f"partition {trial}: {victim.spec.name} x{n} {times[-1]:.3f}s ({reason}), "
              f"healed {heal[-1]:.3f}s", flush=True)  # fmt: skip
    await c.delete("default", name)
    return times, heal, moved, floor, paths


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
