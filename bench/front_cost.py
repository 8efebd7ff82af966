"""The cost of the front (issue #11): Cloudless calls through the coordinator's front vs
direct to the same Temporal, as a ratio measured in the same run (goal <= 1.1x).

Stack: a real dev stack (``start_processes``: transit, the Temporal dev server jailed in its
own network namespace, the coordinator with its front, three exec-runtime agents) in a
temporary directory, with five one-replica workloads, so listing does real work. Two
clients in this process, with the same payload codec:

* FRONT: what every client is given, the coordinator's front (mutual TLS, per-call
  authentication and authorization, a gRPC proxy to the jail's Unix socket);
* DIRECT: plaintext to the same jail socket through a bare TCP->Unix byte pump in this
  process (bench only: nothing else may reach that socket).

Operations, at the client-library level (what ``cloudlessctl`` does once started):
``get workloads`` (``list_workloads``: a visibility list and one query per workload),
``apply`` of an unchanged manifest (an update round trip through the workload workflow)
and of a changed one (replicas alternate 1 <-> 2, so the workflow reconciles). Each
round interleaves the two paths call by call (FRONT first in even rounds, DIRECT first in
odd ones) after a warm-up, and gives its own p50 and p95 ratio; the rows pool the rounds
and carry the per-round ratios and their spread. Then, per round and operation, a
FRONT-only and a DIRECT-only block of equal size measure the coordinator's CPU (the front
runs in it; so does the worker answering both paths) and this process's.

``cloudlessctl get workloads`` as a subprocess is timed too when the CLI reaches the front
(it reads ``<state>/config.yaml`` for TLS); when it cannot, that part is skipped and the
notes say why.

    python bench/front_cost.py [--n 200] [--rounds 3] [--warmup 20] [--cpu-n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# isort: split
import workers  # noqa: F401  (its __init__ applies cloudless.grpc_tuning before grpc loads)

# isort: split

import psutil

from bench.common import percentile, print_table, summarize, write_results
from cloudless.cli.devstack import (
    DEV_AGENTS,
    DevPorts,
    jail_dir,
    load_state,
    stack_target,
    start_processes,
    stop_processes,
)
from cloudless.client import CloudlessClient
from cloudless.codec import codec_for
from cloudless.logs import configure_logging
from cloudless.temporal import TemporalTarget, connect
from cloudless.testing.cluster import stop_exec_replicas
from cloudless.testing.workloads import sleeper
from cloudless.transit.client import embedded_transit_settings
from workers.front.service import FRONTEND_SOCKET

CLUSTER = "frontbench"
PATHS = ("front", "direct")
WORKLOADS = 5
STEADY = "steady-0"  # applied unchanged
FLIP = "steady-1"  # applied with replicas 1 <-> 2
PUMP_CHUNK = 256 * 1024


# ------------------------------------------------------------------ the DIRECT byte path


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(PUMP_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


class BytePump:
    """127.0.0.1:<random port> -> the jail's Unix socket, bytes only.

    The baseline of the ratio: a client needs *some* byte path to a Temporal that listens
    on a Unix socket in another network namespace, and this is the minimum one can cost
    (no TLS, no authentication, no gRPC parsing). So FRONT/DIRECT isolates what the front
    adds: mutual TLS, the per-call identity and role check, and the gRPC proxy.
    """

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._bridges: set[asyncio.Task[Any]] = set()

    async def start(self) -> BytePump:
        self._server = await asyncio.start_server(self._bridge, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _bridge(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError:
            writer.close()
            return
        pair = {writer, up_writer}
        self._writers |= pair
        task = asyncio.current_task()
        assert task is not None
        self._bridges.add(task)
        try:
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        finally:
            self._writers -= pair
            self._bridges.discard(task)
            for w in pair:
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()

    async def stop(self) -> None:
        """Stop listening and close every bridged connection (its copies then end)."""
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            # Awaited, never cancelled: Python 3.11 logs a cancelled connection handler.
            await asyncio.gather(*self._bridges)
            await self._server.wait_closed()


# ------------------------------------------------------------------ operations


@dataclass
class Op:
    """One measured operation: ``call(client)`` per sample; ``check`` of its result."""

    name: str
    call: Callable[[CloudlessClient], Awaitable[Any]]
    samples: dict[str, list[list[float]]] = field(default_factory=dict)  # path -> rounds
    cpu: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # path -> rounds


def operations() -> list[Op]:
    flip = {"replicas": 1}

    async def get_workloads(c: CloudlessClient) -> None:
        found = await c.list_workloads()
        if len(found) != WORKLOADS:
            raise SystemExit(f"get workloads listed {len(found)}, expected {WORKLOADS}")

    async def apply_unchanged(c: CloudlessClient) -> None:
        outcome = await c.apply(sleeper(STEADY, 1), wait=False)
        if outcome.action != "unchanged":
            raise SystemExit(f"apply of the unchanged {STEADY} was {outcome.action}")

    async def apply_changed(c: CloudlessClient) -> None:
        flip["replicas"] = 3 - flip["replicas"]  # 1 <-> 2, whichever path calls
        outcome = await c.apply(sleeper(FLIP, flip["replicas"]), wait=False)
        if outcome.action != "configured":
            raise SystemExit(f"apply of the changed {FLIP} was {outcome.action}")

    return [
        Op(f"get workloads ({WORKLOADS} workloads)", get_workloads),
        Op("apply, unchanged manifest", apply_unchanged),
        Op("apply, replicas 1 <-> 2", apply_changed),
    ]


async def timed(call: Awaitable[Any]) -> float:
    t0 = time.perf_counter()
    await call
    return time.perf_counter() - t0


async def interleaved(op: Op, clients: dict[str, CloudlessClient], n: int, round_: int) -> None:
    """n calls per path, alternating; FRONT first in even rounds, DIRECT in odd ones."""
    order = PATHS if round_ % 2 == 0 else PATHS[::-1]
    got: dict[str, list[float]] = {p: [] for p in PATHS}
    for _ in range(n):
        for path in order:
            got[path].append(await timed(op.call(clients[path])))
    for path in PATHS:
        op.samples.setdefault(path, []).append(got[path])


def cpu_seconds(process: psutil.Process) -> float:
    t = process.cpu_times()
    return t.user + t.system


async def cpu_block(
    op: Op, clients: dict[str, CloudlessClient], n: int, coordinator: psutil.Process
) -> None:
    """A FRONT-only and a DIRECT-only block of n calls each; per call: the coordinator's CPU
    and this process's (ms), net of the coordinator's idle rate over the same time."""
    me = psutil.Process()
    for path in PATHS:
        c0, m0, t0 = cpu_seconds(coordinator), cpu_seconds(me), time.perf_counter()
        for _ in range(n):
            await op.call(clients[path])
        wall = time.perf_counter() - t0
        coord, mine = cpu_seconds(coordinator) - c0, cpu_seconds(me) - m0
        op.cpu.setdefault(path, []).append(
            {"coordinator_ms": coord / n * 1e3, "client_ms": mine / n * 1e3, "wall_s": wall}
        )


async def idle_rate(coordinator: psutil.Process, seconds: float) -> float:
    """The coordinator's CPU seconds per second with no client calls (heartbeats, timers)."""
    c0, t0 = cpu_seconds(coordinator), time.perf_counter()
    await asyncio.sleep(seconds)
    return (cpu_seconds(coordinator) - c0) / (time.perf_counter() - t0)


# ------------------------------------------------------------------ the CLI, as a user runs it


def cloudlessctl() -> list[str]:
    beside = Path(sys.executable).parent / "cloudlessctl"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "cloudless.cli.main"]


def cli_command(state: Path, path: str, address: str) -> list[str]:
    """FRONT: the stack's own config (``<state>/config.yaml``: the front, with the admin
    certificate); DIRECT: the same state dir with the pump's address."""
    args = [*cloudlessctl(), "--state-dir", str(state), "--cluster", CLUSTER]
    if path == "direct":  # the pump is plaintext: override the context's TLS
        args += ["--temporal-address", address, "--no-temporal-tls"]
    return [*args, "get", "workloads", "-o", "json"]


def cli_run(args: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLESS_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, check=False)
    return time.perf_counter() - t0, done


async def cli_level(
    state: Path, pump: BytePump, n: int, rounds: int
) -> tuple[dict[str, list[list[float]]], str | None]:
    """Per path, per round, n timings of ``cloudlessctl get workloads``; or why not."""
    address = f"127.0.0.1:{pump.port}"
    for path in PATHS:  # one probe per path: a CLI that cannot reach it is reported, not timed
        _, done = await asyncio.to_thread(cli_run, cli_command(state, path, address))
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:120]
            return {}, f"`cloudlessctl get workloads` ({path}) exited {done.returncode}: {last}"
    out: dict[str, list[list[float]]] = {p: [] for p in PATHS}
    for round_ in range(rounds):
        order = PATHS if round_ % 2 == 0 else PATHS[::-1]
        got: dict[str, list[float]] = {p: [] for p in PATHS}
        for _ in range(n):
            for path in order:
                elapsed, done = await asyncio.to_thread(cli_run, cli_command(state, path, address))
                if done.returncode != 0:
                    raise SystemExit(f"cloudlessctl ({path}) failed: {done.stderr[-500:]}")
                got[path].append(elapsed)
        for path in PATHS:
            out[path].append(got[path])
    return out, None


# ------------------------------------------------------------------ results


def ratio_rows(
    name: str, per_round: dict[str, list[list[float]]], params: dict[str, Any]
) -> list[dict[str, Any]]:
    """A row per path (rounds pooled); the FRONT row carries the ratios and their spread."""
    pooled = {p: [x for r in per_round[p] for x in r] for p in PATHS}
    r50 = [
        percentile(f, 50) / percentile(d, 50)
        for f, d in zip(per_round["front"], per_round["direct"], strict=True)
    ]
    r95 = [
        percentile(f, 95) / percentile(d, 95)
        for f, d in zip(per_round["front"], per_round["direct"], strict=True)
    ]
    direct = summarize(
        f"{name}, direct [baseline]", "ms", [x * 1e3 for x in pooled["direct"]], params
    )
    front = summarize(
        f"{name}, through the front", "ms", [x * 1e3 for x in pooled["front"]], params
    )
    # The headline ratio is the median of the rounds' own: each round pairs calls made
    # side by side, while pooling mixes rounds the shared machine ran at different speeds.
    front["ratio_p50_vs_baseline"] = round(statistics.median(r50), 3)
    front["ratio_p95_vs_baseline"] = round(statistics.median(r95), 3)
    front["ratio_spread"] = {
        "p50_per_round": [round(x, 3) for x in r50],
        "p95_per_round": [round(x, 3) for x in r95],
        "p50_min_max": [round(min(r50), 3), round(max(r50), 3)],
        "p95_min_max": [round(min(r95), 3), round(max(r95), 3)],
    }
    front["parameters"] = {
        **params,
        "p50_ms_per_round": {
            p: [round(percentile(r, 50) * 1e3, 3) for r in per_round[p]] for p in PATHS
        },
    }
    return [direct, front]


def cpu_rows(op: Op, params: dict[str, Any], idle: list[float]) -> list[dict[str, Any]]:
    """Coordinator CPU per call, per path (one value per round), net of its idle rate."""
    rows: dict[str, dict[str, Any]] = {}
    net: dict[str, list[float]] = {}
    for path in PATHS:
        net[path] = [
            max(0.0, r["coordinator_ms"] - rate * r["wall_s"] * 1e3 / params["cpu_n"])
            for r, rate in zip(op.cpu[path], idle, strict=True)
        ]
    for path in PATHS:
        label = "direct [baseline]" if path == "direct" else "through the front"
        row = summarize(
            f"{op.name}, coordinator CPU per call, {label}",
            "ms",
            net[path],
            {
                **params,
                "raw_coordinator_ms_per_round": [
                    round(r["coordinator_ms"], 3) for r in op.cpu[path]
                ],
                "client_cpu_ms_per_round": [round(r["client_ms"], 3) for r in op.cpu[path]],
                "idle_cpu_rate_per_round": [round(x, 4) for x in idle],
            },
        )
        rows[path] = row
    direct, front = rows["direct"], rows["front"]
    if direct["p50"]:
        front["ratio_p50_vs_baseline"] = round(front["p50"] / direct["p50"], 3)
    front["parameters"]["front_cpu_ms_per_call_per_round"] = [
        round(f - d, 3) for f, d in zip(net["front"], net["direct"], strict=True)
    ]
    return [direct, front]


# ------------------------------------------------------------------ main


async def wait_listed(client: CloudlessClient, count: int, timeout: float = 60) -> None:
    """Visibility lags a start by a moment: wait until the list shows every workload."""
    deadline = time.monotonic() + timeout
    while len(await client.list_workloads()) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"the list did not show {count} workloads after {timeout} s")
        await asyncio.sleep(0.1)


async def measure(
    state: Path, ports: DevPorts, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], str]:
    codec = codec_for(embedded_transit_settings(state))
    pump = await BytePump(jail_dir(state) / FRONTEND_SOCKET).start()
    try:
        front = await connect(stack_target(state, ports), codec=codec, wait=30)
        direct = await connect(TemporalTarget(f"127.0.0.1:{pump.port}"), codec=codec, wait=30)
        clients = {
            "front": CloudlessClient(front, CLUSTER),
            "direct": CloudlessClient(direct, CLUSTER),
        }
        for i in range(WORKLOADS):
            await clients["front"].apply(sleeper(f"steady-{i}", 1), wait=True, timeout=120)
        await wait_listed(clients["direct"], WORKLOADS)
        dev = load_state(state)
        assert dev is not None
        coordinator = psutil.Process(dev.processes["coordinator"].pid)
        ops = operations()
        for op in ops:  # warm-up: connections, caches, the workflows' first updates
            for _ in range(args.warmup):
                for path in PATHS:
                    await op.call(clients[path])
        idle: list[float] = []
        for round_ in range(args.rounds):
            for op in ops:
                await interleaved(op, clients, args.n, round_)
            idle.append(await idle_rate(coordinator, args.idle))
            for op in ops:
                await cpu_block(op, clients, args.cpu_n, coordinator)
            print(f"# round {round_ + 1}/{args.rounds} done", flush=True)
        params = {
            "rounds": args.rounds,
            "n_per_round": args.n,
            "warmup": args.warmup,
            "workloads": WORKLOADS,
            "agents": len(DEV_AGENTS),
            "runtime": "exec",
        }
        results: list[dict[str, Any]] = []
        for op in ops:
            results += ratio_rows(op.name, op.samples, params)
        for op in ops:
            results += cpu_rows(op, {**params, "cpu_n": args.cpu_n}, idle)
        cli, why_not = (
            await cli_level(state, pump, args.cli_n, args.rounds)
            if args.cli_n
            else ({}, "--cli-n 0")
        )
        if cli:
            results += ratio_rows(
                "cloudlessctl get workloads (a process)", cli, {**params, "n_per_round": args.cli_n}
            )
        cli_note = (
            "CLI level: `cloudlessctl get workloads` as a process, interleaved likewise."
            if cli
            else f"CLI level skipped: {why_not} (the CLI reads <state>/config.yaml for the "
            "front's TLS only once that lands)."
        )
        return results, cli_note
    finally:
        await pump.stop()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="calls per op, path and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20, help="calls per op and path first")
    parser.add_argument("--cpu-n", type=int, default=200, help="calls per CPU block")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU per round")
    parser.add_argument("--cli-n", type=int, default=20, help="CLI runs per path and round")
    parser.add_argument("--port-offset", type=int, default=4100)
    args = parser.parse_args()
    if args.n < 1 or args.rounds < 1 or args.cpu_n < 1 or args.warmup < 0 or args.cli_n < 0:
        parser.error("--n, --rounds and --cpu-n must be at least 1; --warmup, --cli-n at least 0")
    configure_logging("WARNING")
    ports = DevPorts.shifted(args.port_offset)
    root = Path(tempfile.mkdtemp(prefix="cl-front-"))
    state = root / "stack"
    try:
        await asyncio.to_thread(start_processes, state, CLUSTER, ports=ports, runtimes=("exec",))
        results, cli_note = await measure(state, ports, args)
    finally:
        await asyncio.to_thread(stop_processes, state)
        for a in DEV_AGENTS:
            await stop_exec_replicas(a.name, state / "agents" / a.name)
        shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    for r in results:
        if "ratio_spread" in r:
            s = r["ratio_spread"]
            print(
                f"{r['metric']}: p50 {r['ratio_p50_vs_baseline']}x rounds {s['p50_per_round']}, "
                f"p95 {r['ratio_p95_vs_baseline']}x rounds {s['p95_per_round']}"
            )
    notes = (
        "Issue #11, the cost of the front (goal <= 1.1x): a dev stack (Temporal jailed, "
        "coordinator with its front, 3 exec agents, 5 one-replica workloads); two clients in one "
        "process with the same payload codec, FRONT = the coordinator's front (mTLS, per-call "
        "identity and role check, gRPC proxy to the jail's socket), DIRECT = plaintext through a "
        "bare TCP->Unix byte pump to the same socket (the least a byte path costs). Calls "
        "interleaved FRONT/DIRECT, order swapped per round; rows pool the rounds' samples, the "
        "ratio column is the median of the rounds' own front/direct p50 ratios with their "
        "min-max, and p95 likewise. "
        "CPU rows: a FRONT-only and a DIRECT-only block per round, the coordinator's CPU per "
        "call net of its idle rate (the coordinator also runs the worker that answers both). "
        + cli_note
    )
    path = write_results("front_cost", results, notes=notes)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
