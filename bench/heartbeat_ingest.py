"""Heartbeat ingest over mTLS into one coordinator process.

Hollow nodes (a separate client process, so client CPU is not charged to the
coordinator) each hold one mutual-TLS heartbeat stream to the coordinator's agent
endpoint, with a real node certificate from the cluster CA. Measured on the coordinator:

- throughput: streams sending back-to-back beats; beats/s and beats per coordinator
  CPU-second (i.e. per core);
- steady state: 5,000 nodes at 1 Hz; the coordinator's CPU use in cores.

Baseline in the same run: a bare grpcio asyncio bidi stream (no TLS, no liveness
logic) moving the same messages between two processes, per server CPU-second.

    python bench/heartbeat_ingest.py [--nodes 5000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# isort: split
import workers  # noqa: F401  (its __init__ applies cloudless.grpc_tuning before grpc loads)

# isort: split

import grpc
import psutil

from bench.common import print_table, summarize, write_results
from cloudless.api import gateway_pb2, gateway_pb2_grpc
from cloudless.logs import configure_logging
from cloudless.pki import CertificateAuthority, Identity
from cloudless.testing.cluster import LocalCluster, start_temporal
from cloudless.tls import GATEWAY_SERVER_NAME, TLSMaterial, secure_channel


def _beat(seq: int) -> gateway_pb2.HeartbeatRequest:
    return gateway_pb2.HeartbeatRequest(
        seq=seq, usage=gateway_pb2.Usage(cpu_fraction=0.25, memory_used_bytes=2**30)
    )


async def _stream(
    address: str, name: str, creds: TLSMaterial | None, rate: float, until: float
) -> None:
    async def beats() -> AsyncIterator[gateway_pb2.HeartbeatRequest]:
        seq = 0
        while time.monotonic() < until:
            seq += 1
            yield _beat(seq)
            if rate:
                await asyncio.sleep(1.0 / rate)
            elif seq % 64 == 0:
                await asyncio.sleep(0)

    if creds is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = secure_channel(address, GATEWAY_SERVER_NAME, creds.ca_pem, creds)
    async with channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        async for _ in stub.Heartbeat(beats()):
            pass


class PacedStreams:
    """Many nodes' heartbeat streams at ``rate`` Hz from one process, cheaply: one ticker
    writes each stream's beat in turn (a per-stream task with its own timer costs the
    client more CPU than the coordinator spends, and could not drive 5,000 nodes from this
    machine).

    As the agent's, each stream's first beat is numbered 1 and carries an epoch that only
    grows (``moved`` on the node's first stream), and a node's stream can be handed over to
    renewed key material, make before break (:meth:`hand_over`). ``lateness`` is the
    longest a beat was written behind its slot (the client falling behind, not the
    coordinator); ``reopened`` counts streams that ended and were opened again."""

    def __init__(
        self, address: str, creds: list[tuple[str, bytes, bytes, bytes]], rate: float
    ) -> None:
        self._address = address
        self._creds = creds
        self.period = 1.0 / rate
        self.channels: list[grpc.aio.Channel] = []
        self.calls: list[Any] = []
        self.lateness = 0.0
        self.reopened = 0
        self._epoch = 0

    def _first(self, moved: bool) -> gateway_pb2.HeartbeatRequest:
        """A stream's first beat (the gateway answers beat 1), with a new epoch."""
        self._epoch = max(self._epoch + 1, time.time_ns() // 1000)
        beat = _beat(1)
        beat.stream_epoch, beat.moved = self._epoch, moved
        return beat

    def _call(self, channel: grpc.aio.Channel) -> Any:
        return gateway_pb2_grpc.GatewayServiceStub(channel).Heartbeat(wait_for_ready=True)

    async def open(self) -> None:
        """Open every node's stream (paced, not all in the first tick)."""
        for i, (_name, key, cert, ca) in enumerate(self._creds):
            channel = secure_channel(self._address, GATEWAY_SERVER_NAME, ca,
                                     TLSMaterial(key, cert, ca))  # fmt: skip
            self.channels.append(channel)
            call = self._call(channel)
            try:
                await call.write(self._first(moved=True))  # connect now
            except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                # Refused or reset while thousands connect on a loaded machine: open it
                # again (as the tick loop below does) rather than lose the client process.
                call = self._call(channel)
            self.calls.append(call)
            if i % 100 == 99:
                await asyncio.sleep(0.05)  # do not stampede the handshakes

    async def run(self, until: float) -> None:
        """Beat every stream once a period, spread over it, until ``until`` (monotonic)."""
        seq, tick = 0, time.monotonic()
        while time.monotonic() < until:
            seq += 1
            beat = _beat(seq)
            spacing = self.period / max(1, len(self.calls))
            for j in range(len(self.calls)):
                slot = tick + j * spacing
                ahead = slot - time.monotonic()
                if ahead > 0.002:
                    await asyncio.sleep(ahead)  # spread the beats over the period
                self.lateness = max(self.lateness, time.monotonic() - slot)
                call = self.calls[j]
                try:
                    await call.write(beat)
                except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                    # The stream ended (the gateway closed it under load): reopen it, as an
                    # agent would, and count the beat as lost; unless it was just handed
                    # over (the new stream goes on).
                    if self.calls[j] is call:
                        self.reopened += 1
                        self.calls[j] = self._call(self.channels[j])
            tick += self.period
            if tick < time.monotonic() - self.period:
                tick = time.monotonic()  # fell behind (a slow tick): do not burst to catch up
            await asyncio.sleep(max(0.0, tick - time.monotonic()))

    async def hand_over(self, j: int, material: TLSMaterial, timeout: float = 10.0) -> bool:
        """Move stream ``j`` to ``material`` as the agent does (agent.heartbeat): a new
        channel and stream, and the old stream is cancelled only once the new one is
        answered. False (the old stream kept) if it was not answered within ``timeout``."""
        channel = secure_channel(self._address, GATEWAY_SERVER_NAME, material.ca_pem, material)
        call = self._call(channel)
        try:
            async with asyncio.timeout(timeout):
                await call.write(self._first(moved=False))
                answer = await call.read()
            if not isinstance(answer, gateway_pb2.HeartbeatResponse):  # EOF
                raise asyncio.InvalidStateError("the new stream ended unanswered")
        except (TimeoutError, asyncio.InvalidStateError, grpc.aio.AioRpcError):
            call.cancel()
            await channel.close(None)
            return False
        old_call, old_channel = self.calls[j], self.channels[j]
        self.calls[j], self.channels[j] = call, channel
        old_call.cancel()
        await old_channel.close(None)
        return True

    async def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for channel in self.channels:
            await channel.close(None)


async def _paced(
    address: str, creds: list[tuple[str, bytes, bytes, bytes]], rate: float, until: float
) -> None:
    streams = PacedStreams(address, creds, rate)
    await streams.open()
    try:
        await streams.run(until)
    finally:
        await streams.close()


def client_main(
    address: str, creds: list[tuple[str, bytes, bytes, bytes]] | None, streams: int,
    rate: float, seconds: float, start_at: float,
) -> None:  # fmt: skip
    async def go() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))  # all clients start together
        until = time.monotonic() + seconds
        if rate and creds is not None:
            await _paced(address, creds, rate, until)
            return
        tasks = []
        for i in range(streams):
            if creds is None:
                mat, name = None, f"n{i}"
            else:
                name, key, cert, ca = creds[i]
                mat = TLSMaterial(key, cert, ca)
            tasks.append(asyncio.create_task(_stream(address, name, mat, rate, until)))
            if i % 100 == 99:
                await asyncio.sleep(0.05)  # do not stampede the handshakes
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(go())


class _BareServicer(gateway_pb2_grpc.GatewayServiceServicer):
    beats = 0

    async def Heartbeat(self, request_iterator: Any, context: Any) -> Any:
        async for beat in request_iterator:
            _BareServicer.beats += 1
            yield gateway_pb2.HeartbeatResponse(seq=beat.seq, interval_seconds=1.0)


def spawn_clients(
    address: str,
    creds: Any,
    streams: int,
    rate: float,
    seconds: float,
    procs: int,
    *,
    target: Callable[..., None] = client_main,
    extra: Callable[[int], Sequence[Any]] = lambda _i: (),
) -> tuple[list[Any], float]:
    """``procs`` client processes sharing ``streams`` streams (and ``creds``) evenly, each
    running ``target(address, creds, streams, rate, seconds, start_at, *extra(i))``
    (:func:`client_main` unless given; ``start_at``: wall time, 3 s from now)."""
    ctx = mp.get_context("spawn")
    start_at = time.time() + 3.0
    per = [streams // procs + (1 if i < streams % procs else 0) for i in range(procs)]
    out, offset = [], 0
    for i, n in enumerate(per):
        part = creds[offset : offset + n] if creds is not None else None
        offset += n
        args = (address, part, n, rate, seconds, start_at, *extra(i))
        p = ctx.Process(target=target, args=args)
        p.start()
        out.append(p)
    return out, start_at


async def _measure(
    counter: Any,
    procs: list[Any],
    start_at: float,
    warmup: float,
    window: float,
    settled: Any = None,
) -> tuple[float, float]:
    """Beats/s and coordinator cores over ``window`` seconds, after ``warmup`` and, if
    given, once ``settled()`` (e.g. the join-time state changes are all published)."""
    await warmed_up(start_at, warmup, settled)
    measured = await cpu_window(counter, window)
    for p in procs:  # measured: the clients' remaining time is not waited for
        p.terminate()
        await asyncio.to_thread(p.join)
    return measured


async def warmed_up(start_at: float, warmup: float, settled: Any = None) -> None:
    """Return ``warmup`` seconds after the clients' ``start_at`` and, if given, once
    ``settled()`` holds (polled for up to two minutes)."""
    await asyncio.sleep(max(0.0, start_at + warmup - time.time()))
    for _ in range(600):  # polled: the monitor has no event for "backlog empty"
        if settled is None or settled():
            break
        await asyncio.sleep(0.2)


async def cpu_window(counter: Any, window: float) -> tuple[float, float]:
    """Beats/s (``counter()``'s growth) and this process's cores (user+system CPU seconds
    per wall second, psutil) over the next ``window`` seconds."""
    me = psutil.Process()
    b0, c0, t0 = counter(), sum(me.cpu_times()[:2]), time.monotonic()
    await asyncio.sleep(window)
    b1, c1, t1 = counter(), sum(me.cpu_times()[:2]), time.monotonic()
    return (b1 - b0) / (t1 - t0), (c1 - c0) / (t1 - t0)


async def paced_cpu(nodes: int, seconds: float, warmup: float) -> tuple[float, float]:
    """(beats/s, coordinator cores) for ``nodes`` hollow nodes at 1 Hz into a fresh
    coordinator in this process."""
    env = await start_temporal()
    with tempfile.TemporaryDirectory(prefix="bench-") as d:
        cluster = LocalCluster(env.client, Path(d), cluster=f"hb-{uuid.uuid4().hex[:4]}")
        await cluster.start()
        try:
            creds = node_credentials(cluster, nodes)
            monitor = cluster.coordinator.liveness  # type: ignore[attr-defined]
            procs, start_at = spawn_clients(
                cluster.agent_gateway, creds, nodes, 1.0, warmup + seconds + 120, 2
            )
            # Long warm-up: thousands of TLS handshakes and join-time state changes (one
            # Temporal signal per node) are not the steady state being measured.
            return await _measure(
                lambda: monitor.beats, procs, start_at, warmup, seconds - 8.0,
                settled=lambda: monitor.backlog == 0,
            )  # fmt: skip
        finally:
            await cluster.close()
            await env.shutdown()


def node_credentials(
    cluster: LocalCluster, n: int, validity: timedelta = timedelta(days=30)
) -> list[tuple[str, bytes, bytes, bytes]]:
    """(name, key, certificate, CA) of ``n`` hollow nodes, issued by the cluster's CA now,
    valid for ``validity``."""
    ca = CertificateAuthority.load(cluster.coordinator_dir)
    creds = []
    for i in range(n):
        key, cert = ca.issue(Identity(cluster.cluster, "node", f"hollow-{i}"), validity=validity)
        creds.append((f"hollow-{i}", key, cert, ca.cert_pem))
    return creds


def paced_with_default_listener(nodes: int, seconds: float, warmup: float) -> tuple[float, float]:
    """:func:`paced_cpu` in a child process running gRPC's own default listener (the
    EventEngine one): the baseline for ``cloudless.grpc_tuning``, in the same run."""
    env = {**os.environ, "GRPC_EXPERIMENTS": "event_engine_listener"}
    out = subprocess.run(
        [sys.executable, __file__, "--paced-only", "--nodes", str(nodes),
         "--seconds", str(seconds), "--warmup", str(warmup)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rate, cpu = json.loads(out.stdout.strip().splitlines()[-1])
    return float(rate), float(cpu)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--streams", type=int, default=100, help="for the throughput run")
    parser.add_argument("--seconds", type=float, default=20.0, help="per run; window is 8 s less")
    parser.add_argument(
        "--warmup", type=float, default=45.0, help="paced runs: handshakes and joins first"
    )
    parser.add_argument("--paced-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging("ERROR")
    if args.paced_only:  # the child of paced_with_default_listener
        print(json.dumps(await paced_cpu(args.nodes, args.seconds, args.warmup)))
        return
    results: list[dict[str, Any]] = []
    window = args.seconds - 8.0
    if window <= 0:
        parser.error("--seconds must be more than 8 (each measured window is 8 s shorter)")

    # Baseline: bare grpcio bidi stream, plaintext, same messages, separate client process.
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(_BareServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    procs, start_at = spawn_clients(f"127.0.0.1:{port}", None, args.streams, 0.0, args.seconds, 1)
    rate, cpu = await _measure(lambda: _BareServicer.beats, procs, start_at, 4.0, window)
    await server.stop(None)
    base = {"streams": args.streams, "tls": False}
    results.append(summarize("[baseline] bare grpcio stream: msgs/s", "msg/s", [rate], base))
    base_per_core = rate / cpu if cpu else float("nan")
    results.append(
        summarize("[baseline] bare grpcio stream: msgs per server CPU-s", "msg/cpu-s",
                  [base_per_core], base)
    )  # fmt: skip
    print_table(results)

    env = await start_temporal()
    with tempfile.TemporaryDirectory(prefix="bench-") as d:
        cluster = LocalCluster(env.client, Path(d), cluster=f"hb-{uuid.uuid4().hex[:4]}")
        await cluster.start()
        try:
            creds = node_credentials(cluster, args.streams)
            monitor = cluster.coordinator.liveness  # type: ignore[attr-defined]
            procs, start_at = spawn_clients(
                cluster.agent_gateway, creds, args.streams, 0.0, args.seconds, 1
            )
            rate, cpu = await _measure(lambda: monitor.beats, procs, start_at, 4.0, window)
            p = {"streams": args.streams, "mtls": True}
            results.append(summarize("heartbeat ingest over mTLS: beats/s", "beat/s", [rate], p))
            r = summarize(
                "heartbeat ingest: beats per coordinator CPU-s (one core)", "beat/cpu-s",
                [rate / cpu if cpu else float("nan")], p,
            )  # fmt: skip
            r["ratio_p50_vs_baseline"] = round(r["p50"] / base_per_core, 2)
            results.append(r)
            print_table(results[-2:])
        finally:
            await cluster.close()
            await env.shutdown()

    p = {"nodes": args.nodes, "rate_hz": 1.0, "mtls": True, "grpc_listener": "classic"}
    rate, cpu = await paced_cpu(args.nodes, args.seconds, args.warmup)
    results.append(summarize(f"{args.nodes} nodes at 1 Hz: beats/s", "beat/s", [rate], p))
    mine = summarize(f"{args.nodes} nodes at 1 Hz: coordinator CPU", "cores", [cpu], p)
    results.append(mine)
    _, default_cpu = await asyncio.to_thread(
        paced_with_default_listener, args.nodes, args.seconds, args.warmup
    )
    p = {**p, "grpc_listener": "event_engine (grpcio default)"}
    results.append(
        summarize(
            f"[baseline] {args.nodes} nodes at 1 Hz: coordinator CPU, grpcio's default listener",
            "cores", [default_cpu], p,
        )
    )  # fmt: skip
    mine["ratio_p50_vs_baseline"] = round(cpu / default_cpu, 2) if default_cpu else None
    print()
    print_table(results)
    path = write_results(
        "heartbeat_ingest",
        results,
        notes="Single-shot figures per run (n=1 window each): throughput is beats over the "
        "measurement window; CPU is the coordinator process's user+system time over the "
        "same window. Hollow-node clients run in separate processes on the same 2 cores. "
        "The coordinator runs with cloudless.grpc_tuning (gRPC's classic listener); the "
        "baseline row repeats the 1 Hz run in a child process with grpcio's default "
        "EventEngine listener.",
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
