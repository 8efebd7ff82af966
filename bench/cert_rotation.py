"""Rotation of a fleet's node certificates: time, coordinator CPU, heartbeat gaps (issue 11).

One coordinator (in this process, with the real Temporal dev server) and ``--nodes``
hollow nodes in two client processes. Each node has

- a real ``node/<id>`` workflow, Ready: started by the enrollment workflow's last step
  (``NodeHandle.enroll``, what the ``register_node`` activity calls) with a record naming
  a certificate the cluster CA issued here, so the workflow probes the node's real
  ``AgentService`` over mutual TLS and reconciles it before it is Ready (token checking
  and the first signing, the rest of an enrollment, are skipped: at 5,000 nodes they
  cost minutes and are not what is measured);
- a mutual-TLS heartbeat stream at 1 Hz (``heartbeat_ingest.PacedStreams``: one ticker
  per client process writes every stream's beat in turn).

Then every node renews its certificate through the agent's own code,
:class:`agent.renewal.CertificateRenewer` (new P-256 key and CSR, a new mTLS channel
with the certificate being renewed, the gateway's ``RenewCertificate`` RPC, the
``renew_certificate`` Update of ``node/<id>``, the ``sign_node_certificate`` activity,
the answer checked and committed to the node's state directory, retries as the agent
retries them), and then switches as the agent does: the AgentService serves the new
certificate to new handshakes and the heartbeat stream is handed over to a new one made
with it (make before break). Only the moment is the bench's: the renewer's
``_renew_with_retries``, which its ``run`` calls when the renewal falls due, is called at
each node's due time.

The due times spread as a fleet's do when every node enrolled at the same moment
(``policies.renewal.renew_at``: 2/3 of the lifetime, ± ``RENEW_JITTER`` of it, uniform),
with ``--window`` seconds standing for the ±5 % jitter window: the certificates' lifetime
is ``window / (2 * RENEW_JITTER)`` (600 s for a 60 s window; the coordinator issues
renewals for that long, ``--node-cert-validity``), so a window of a 30-day fleet
(3 days) is compressed ``30 d / L`` times. The fleet's first certificates, issued here at
one moment, live ``--first-lifetime`` (default twice that: room to set 5,000 nodes up), and
the first rotation starts once a quarter of it has passed (``node/<id>`` issues a node at
most one certificate per quarter of the last one's lifetime); repetitions (``--reps``)
renew the fleet again, each once a quarter lifetime has passed since the previous one's
last certificate.

Measured per repetition: rotation time (first renewal request to last certificate
received), renewals/s, each attempt's latency as the agent sees it (CSR, mTLS handshake of
a new channel, RPC, check, commit to disk on tmpfs), failed attempts by gRPC code (must be
none), coordinator CPU in cores over 1 s samples (psutil, this process: gateway, Temporal
worker, liveness; the Temporal server and the clients are other processes, sampled apart)
during the rotation and in a baseline window of heartbeats only just before it, and the
heartbeat gap.

**Heartbeat gap**, measured at the coordinator: for each node, the longest interval
between two consecutive beats its gateway took in (``LivenessMonitor.beat``, whichever
stream they came on; an interval still open at the window's end counts to that end),
minus the 1 s beat period: how much later than scheduled the coordinator heard from the
node. Measured there because that is what liveness sees (client-side, a written beat only
means it was queued on the client). The clients' own lateness (how far behind its slot a
beat was written) is reported beside it: a gap the client caused is not the
coordinator's. Goal: at most 1 s for every node.

Checked: every node renewed and handed its stream over; the gateway saw every new
certificate on a heartbeat stream (the serials of the streams it accepted); the liveness
monitor emitted no state change during a rotation; at the end every node is Ready in the
ledger and its ``node/<id>`` records the newest certificate's serial.

    python bench/cert_rotation.py [--nodes 5000] [--window 60] [--reps 3] [--baseline 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# isort: split
import workers  # noqa: F401  (its __init__ applies cloudless.grpc_tuning before grpc loads)

# isort: split

import grpc
import psutil

from agent.renewal import CertificateExpired, CertificateRenewer, RenewalRefused
from bench.common import print_table, summarize, write_results
from bench.heartbeat_ingest import PacedStreams, node_credentials, spawn_clients, warmed_up
from cloudless.api import gateway_pb2
from cloudless.client import CloudlessClient
from cloudless.contracts import NodeHandle
from cloudless.logs import configure_logging
from cloudless.model import NodeState
from cloudless.pki import cert_not_after, cert_not_before, cert_serial
from cloudless.pki.authority import CLOCK_SKEW
from cloudless.testing.cluster import LocalCluster, start_temporal
from cloudless.testing.hollow import HollowDriver, serve_agent, shard_port, wait_ready
from cloudless.tls import TLSMaterial, certificate_lifetime
from policies.renewal import MIN_RENEWAL_INTERVAL, RENEW_AT, RENEW_JITTER, Lifetime, renew_at
from workers.gateway import record_from_facts
from workers.liveness import LivenessMonitor

#: Client processes (the fleet split between them; hollow nodes as heartbeat_ingest's).
CLIENTS = 2
#: ``node/<id>`` starts in flight at once while the fleet is set up.
ENROLLING = 64
#: A node's renewal (with the agent's retries) must be done this long after it fell due.
NODE_DEADLINE = 300.0
#: Stream handovers: as the agent's (agent.heartbeat.HANDOVER_TIMEOUT).
HANDOVER_TIMEOUT = 10.0
PERIOD = 1.0  # the heartbeat period (1 Hz)


# --------------------------------------------------------------------- client processes


class TimedRenewer(CertificateRenewer):
    """The agent's renewer, each attempt timed and each failed one counted by its code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: (wall time it started, seconds) of every attempt.
        self.attempts: list[tuple[float, float]] = []
        self.errors: Counter[str] = Counter()

    async def renew_now(self, stop: asyncio.Event) -> None:
        """What :meth:`run` does once the renewal falls due: renew, retrying as it does."""
        await self._renew_with_retries(certificate_lifetime(self.material.cert_pem), stop)

    async def _renew(self, key_pem: bytes) -> None:
        started, t0 = time.time(), time.perf_counter()
        try:
            await super()._renew(key_pem)
        except grpc.aio.AioRpcError as err:
            self.errors[err.code().name] += 1
            raise
        except Exception as err:
            self.errors[type(err).__name__] += 1
            raise
        finally:
            self.attempts.append((started, time.perf_counter() - t0))


class Fleet:
    """One client process's share of the hollow nodes: their AgentServices, heartbeat
    streams and renewers."""

    def __init__(
        self, address: str, creds: list[tuple[str, bytes, bytes, bytes]], root: Path
    ) -> None:
        self.address = address
        self.creds = creds
        self.root = root
        self.servers: list[Any] = []
        self.credentials: list[Any] = []
        self.streams = PacedStreams(address, creds, 1.0 / PERIOD)
        self.renewers: list[TimedRenewer] = []
        self.handovers: dict[int, asyncio.Task[bool]] = {}
        self.stop = asyncio.Event()

    async def serve(self, shard: int, shards: int) -> list[tuple[str, str]]:
        """Serve every node's AgentService; (node, address) of each."""
        out, k = [], 0
        for name, key, cert, ca in self.creds:
            port, k = shard_port(shard, shards, k)
            address = f"127.0.0.1:{port}"
            drivers = {"docker": HollowDriver("docker"), "exec": HollowDriver("exec")}
            server, credentials = await serve_agent(TLSMaterial(key, cert, ca), address, drivers)
            self.servers.append(server)
            self.credentials.append(credentials)
            out.append((name, address))
        return out

    def renewer(self, j: int) -> TimedRenewer:
        name, key, cert, ca = self.creds[j]
        state_dir = self.root / name
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

        async def switch(renewed: TLSMaterial) -> None:
            """As the agent's: new handshakes get the new certificate, the heartbeat
            stream is handed over to one made with it."""
            self.credentials[j].update(renewed)
            self.handovers[j] = asyncio.create_task(
                self.streams.hand_over(j, renewed, HANDOVER_TIMEOUT)
            )

        return TimedRenewer(
            state_dir, TLSMaterial(key, cert, ca), self.address, on_renewed=[switch]
        )

    async def rotate(self, at: float, window: float, seed: int) -> dict[str, Any]:
        """Renew every node once, due as a fleet enrolled together at one moment is (the
        jitter window ``window`` seconds from wall time ``at``); what happened."""
        if not self.renewers:
            self.renewers = [self.renewer(j) for j in range(len(self.creds))]
        rng = random.Random(seed)
        model = window / (2 * RENEW_JITTER)  # the lifetime whose jitter window this is
        origin = datetime.fromtimestamp(at, UTC) - timedelta(
            seconds=model * (RENEW_AT - RENEW_JITTER)
        )
        lifetime = Lifetime(issued=origin, not_after=origin + timedelta(seconds=model))
        dues = [renew_at(lifetime, rng.uniform(-1.0, 1.0)).timestamp() for _ in self.renewers]
        for r in self.renewers:
            r.attempts.clear()
            r.errors.clear()
        self.streams.lateness, reopened = 0.0, self.streams.reopened
        got: list[float] = []
        unrenewed: Counter[str] = Counter()
        handed, serials = 0, {}

        async def one(j: int, due: float) -> None:
            nonlocal handed
            await asyncio.sleep(max(0.0, due - time.time()))
            renewer = self.renewers[j]
            try:
                await asyncio.wait_for(renewer.renew_now(self.stop), NODE_DEADLINE)
            except (CertificateExpired, RenewalRefused, TimeoutError) as err:
                unrenewed[type(err).__name__] += 1
                return
            got.append(time.time())
            serials[self.creds[j][0]] = cert_serial(renewer.material.cert_pem)
            if await self.handovers.pop(j):
                handed += 1

        await asyncio.gather(*(one(j, due) for j, due in enumerate(dues)))
        attempts = [a for r in self.renewers for a in r.attempts]
        errors: Counter[str] = Counter()
        for r in self.renewers:
            errors.update(r.errors)
        return {
            "first": min((a[0] for a in attempts), default=math.nan),
            "last": max(got, default=math.nan),
            "latencies": [a[1] for a in attempts],
            "errors": dict(errors),
            "renewed": len(got),
            "unrenewed": dict(unrenewed),
            "handed_over": handed,
            "serials": serials,
            "lateness": self.streams.lateness,
            "reopened": self.streams.reopened - reopened,
        }

    async def close(self) -> None:
        self.stop.set()
        await self.streams.close()
        await asyncio.gather(*(s.stop(None) for s in self.servers), return_exceptions=True)


def rotation_client(
    address: str, creds: list[tuple[str, bytes, bytes, bytes]], streams: int, rate: float,
    seconds: float, start_at: float, conn: Any, shard: int, shards: int,
) -> None:  # fmt: skip
    """A client process (``spawn_clients``' target), driven over ``conn``: it serves the
    nodes' AgentServices and says where; on ``beat`` it opens their streams; on
    ``rotate`` it renews them all and reports; on ``stop`` it ends."""
    configure_logging("ERROR")

    async def go() -> None:
        loop = asyncio.get_running_loop()
        shm = Path("/dev/shm")  # fsyncs of 2,500 nodes' state would stall the one loop
        with tempfile.TemporaryDirectory(prefix="rot-", dir=shm if shm.is_dir() else None) as d:
            fleet = Fleet(address, creds, Path(d))
            ticker: asyncio.Task[None] | None = None
            try:
                conn.send(("agents", await fleet.serve(shard, shards)))
                while True:
                    cmd, *args = await loop.run_in_executor(None, conn.recv)
                    if cmd == "beat":
                        await fleet.streams.open()
                        until = time.monotonic() + seconds
                        ticker = asyncio.create_task(fleet.streams.run(until))
                        conn.send(("beating",))
                    elif cmd == "rotate":
                        conn.send(("rotated", await fleet.rotate(*args)))
                    else:
                        break
            finally:
                if ticker is not None:
                    ticker.cancel()
                await fleet.close()

    asyncio.run(go())


# --------------------------------------------------------------------- coordinator side


async def receive(conn: Any, proc: Any, what: str, timeout: float) -> Any:
    """The next message from a client process, within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while not await loop.run_in_executor(None, conn.poll, 1.0):
        if not proc.is_alive():
            raise RuntimeError(f"a client process exited (code {proc.exitcode}) before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} from a client process within {timeout:g}s")
    return conn.recv()


class Gaps:
    """Per node, the longest interval between two beats the gateway took in, while
    recording (``LivenessMonitor.beat`` wrapped: it runs for every beat of every stream)."""

    def __init__(self, monitor: LivenessMonitor) -> None:
        self._beat = monitor.beat
        monitor.beat = self  # type: ignore[method-assign]
        self.last: dict[str, float] = {}
        self._longest: dict[str, float] | None = None
        self._since = 0.0

    def __call__(self, node_id: str, report: gateway_pb2.HeartbeatRequest) -> None:
        now = time.monotonic()
        longest = self._longest
        if longest is not None:
            interval = now - self.last.get(node_id, self._since)
            if interval > longest.get(node_id, 0.0):
                longest[node_id] = interval
        self.last[node_id] = now
        self._beat(node_id, report)

    def start(self) -> None:
        self._since, self._longest = time.monotonic(), {}

    def stop(self, names: Iterable[str]) -> list[float]:
        """Each node's gap beyond the beat period (seconds, >= 0) since :meth:`start`; an
        interval still open counts until now."""
        now, longest = time.monotonic(), self._longest or {}
        self._longest = None
        out = []
        for name in names:
            interval = max(longest.get(name, 0.0), now - self.last.get(name, self._since))
            out.append(max(0.0, interval - PERIOD))
        return out


class Cpu:
    """Cores of named processes over 1 s samples (user + system CPU seconds per second)."""

    def __init__(self, procs: dict[str, list[psutil.Process]]) -> None:
        self.procs = procs
        #: (wall time at the sample's end, {name: cores}).
        self.samples: list[tuple[float, dict[str, float]]] = []

    def _times(self) -> dict[str, float]:
        out = {}
        for name, procs in self.procs.items():
            total = 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error):  # it exited: its time is gone
                    total += sum(p.cpu_times()[:2])
            out[name] = total
        return out

    async def run(self) -> None:
        before, t0 = self._times(), time.monotonic()
        while True:
            await asyncio.sleep(1.0 - (time.monotonic() - t0) % 1.0)
            now, t1 = self._times(), time.monotonic()
            self.samples.append((time.time(), {k: (now[k] - before[k]) / (t1 - t0) for k in now}))
            before, t0 = now, t1

    def window(self, name: str, start: float, end: float) -> list[float]:
        """``name``'s samples at least half within [start, end] (wall times)."""
        return [s[name] for t, s in self.samples if t > start + 0.5 and t - 1.0 < end - 0.5]


async def enroll_nodes(
    cluster: LocalCluster, creds: list[tuple[str, bytes, bytes, bytes]], where: dict[str, str]
) -> None:
    """Start every node's ``node/<id>`` as the enrollment workflow does once it has signed
    (``register_node``): with the record of its facts and its certificate."""
    gate = asyncio.Semaphore(ENROLLING)

    async def one(name: str, cert: bytes) -> None:
        facts = gateway_pb2.NodeFacts(
            zone="zone-a",
            capacity=gateway_pb2.Capacity(
                cpu_millis=4000, memory_bytes=8 * 2**30, storage_bytes=64 * 2**30
            ),
            address=where[name],
            runtimes=["docker", "exec"],
            agent_version="hollow",
        )
        record = record_from_facts(name, facts).model_copy(
            update={
                "certificate_not_after": cert_not_after(cert),
                "certificate_serial": cert_serial(cert),
                "enrolled_at": cert_not_before(cert) + CLOCK_SKEW,  # when it was issued
            }
        )
        async with gate:
            await NodeHandle(cluster.client, name).enroll(cluster.cluster, record)

    await asyncio.gather(*(one(name, cert) for name, _key, cert, _ca in creds))


async def check_records(cluster: LocalCluster, serials: dict[str, str]) -> list[str]:
    """Nodes whose ``node/<id>`` does not record ``serials[node]`` as its certificate."""
    gate = asyncio.Semaphore(16)

    async def one(name: str, serial: str) -> str | None:
        async with gate:
            status = await NodeHandle(cluster.client, name).describe()
        ok = status is not None and status.record.certificate_serial == serial
        return None if ok else name

    found = await asyncio.gather(*(one(n, s) for n, s in serials.items()))
    return [n for n in found if n is not None]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n, window = args.nodes, args.window
    lifetime = window / (2 * RENEW_JITTER)
    env = await start_temporal()
    with tempfile.TemporaryDirectory(prefix="bench-") as d:
        cluster = LocalCluster(
            env.client,
            Path(d),
            cluster=f"rot-{uuid.uuid4().hex[:4]}",
            node_cert_validity=timedelta(seconds=lifetime),
        )
        await cluster.start()
        procs: list[Any] = []
        ends: list[Any] = []
        sampling: asyncio.Task[None] | None = None
        try:
            coordinator: Any = cluster.coordinator
            monitor: LivenessMonitor = coordinator.liveness
            gaps = Gaps(monitor)
            changes: list[tuple[str, str, str]] = []
            counting = False
            emit = monitor._emit

            def counted(transition: Any) -> None:
                if counting and transition is not None:
                    changes.append((transition.node_id, transition.health, transition.reason))
                emit(transition)

            monitor._emit = counted  # type: ignore[method-assign]
            presented: set[str | None] = set()
            serial_of = coordinator.revocations.serial

            def serial(pem: bytes) -> str | None:  # once per heartbeat stream (the gateway)
                found: str | None = serial_of(pem)
                presented.add(found)
                return found

            coordinator.revocations.serial = serial
            t0, expiry = time.monotonic(), time.time() + args.first_lifetime
            creds = node_credentials(cluster, n, timedelta(seconds=args.first_lifetime))
            issued = time.time()  # the last one's issue (each node's bound counts from it)
            print(f"issued {n} certificates in {time.monotonic() - t0:.1f} s", flush=True)
            pipes = [mp.get_context("spawn").Pipe() for _ in range(CLIENTS)]
            ends = [mine for mine, _theirs in pipes]
            duration = 24 * 3600.0  # the ticker runs until told to stop
            procs, _ = spawn_clients(
                cluster.agent_gateway, creds, n, 1.0 / PERIOD, duration, CLIENTS,
                target=rotation_client, extra=lambda i: (pipes[i][1], i, CLIENTS),
            )  # fmt: skip
            for _mine, theirs in pipes:
                theirs.close()
            where: dict[str, str] = {}
            for conn, p in zip(ends, procs, strict=True):
                _, agents = await receive(conn, p, "its agents", 600)
                where.update(agents)
            t1 = time.monotonic()
            await enroll_nodes(cluster, creds, where)
            for conn in ends:
                conn.send(("beat",))
            for conn, p in zip(ends, procs, strict=True):
                await receive(conn, p, "its streams", 600)
            start_beats = time.time()
            await wait_ready(cluster.client, cluster.cluster, set(where), 1800, interval=2.0)
            setup = time.monotonic() - t1
            print(f"{n} nodes Ready and beating in {setup:.1f} s", flush=True)
            await warmed_up(start_beats, args.warmup, settled=lambda: monitor.backlog == 0)
            me = psutil.Process()
            temporal = [c for c in me.children(recursive=True) if "temporal" in c.name()]
            clients = [psutil.Process(p.pid) for p in procs]
            cpu = Cpu({"coordinator": [me], "temporal": temporal, "clients": clients})
            sampling = asyncio.create_task(cpu.run())
            names = sorted(where)
            reps: list[dict[str, Any]] = []
            bound = args.first_lifetime
            for rep in range(args.reps):
                earliest = issued + bound * MIN_RENEWAL_INTERVAL + 2.0
                await asyncio.sleep(max(0.0, earliest - args.baseline - time.time()))
                base_start = time.time()
                gaps.start()
                await asyncio.sleep(args.baseline)
                base_gaps = gaps.stop(names)
                base_end = time.time()
                at = max(time.time() + 1.0, earliest)
                if expiry - at < 2 * window:  # the window, and as long again for retries
                    raise SystemExit(
                        f"repetition {rep}: the certificates expire {expiry - at:.0f} s after "
                        f"the rotation would start; setup took too long for "
                        f"--first-lifetime {args.first_lifetime:g}: raise it"
                    )
                print(f"rep {rep}: rotating from {datetime.fromtimestamp(at):%H:%M:%S}", flush=True)
                gaps.start()
                counting = True
                for conn in ends:
                    conn.send(("rotate", at, window, args.seed + rep))
                parts = [
                    await receive(conn, p, "its rotation", window + NODE_DEADLINE + 120)
                    for conn, p in zip(ends, procs, strict=True)
                ]
                counting = False
                rot_gaps = gaps.stop(names)
                reports = [r for _, r in parts]
                first = min(r["first"] for r in reports)
                last = max(r["last"] for r in reports)
                errors: Counter[str] = Counter()
                unrenewed: Counter[str] = Counter()
                serials: dict[str, str] = {}
                for r in reports:
                    errors.update(r["errors"])
                    unrenewed.update(r["unrenewed"])
                    serials.update(r["serials"])
                out = {
                    "time": last - first,
                    "rate": sum(r["renewed"] for r in reports) / (last - first),
                    "latencies": [x for r in reports for x in r["latencies"]],
                    "errors": dict(errors),
                    "unrenewed": dict(unrenewed),
                    "renewed": sum(r["renewed"] for r in reports),
                    "handed_over": sum(r["handed_over"] for r in reports),
                    "not_presented": sum(1 for s in serials.values() if s not in presented),
                    "serials": serials,
                    "changes": list(changes),
                    "gaps": rot_gaps,
                    "base_gaps": base_gaps,
                    "lateness": max(r["lateness"] for r in reports),
                    "reopened": sum(r["reopened"] for r in reports),
                    "cpu": cpu.window("coordinator", first, last),
                    "base_cpu": cpu.window("coordinator", base_start, base_end),
                    "temporal": cpu.window("temporal", first, last),
                    "base_temporal": cpu.window("temporal", base_start, base_end),
                    "clients": cpu.window("clients", first, last),
                }
                changes.clear()
                reps.append(out)
                print(
                    f"rep {rep}: {out['renewed']}/{n} renewed in {out['time']:.1f} s "
                    f"({out['rate']:.0f}/s), errors {out['errors'] or 'none'}, "
                    f"coordinator {statistics.median(out['cpu'] or [math.nan]):.2f} cores p50 "
                    f"(peak {max(out['cpu'] or [math.nan]):.2f}; baseline "
                    f"{statistics.median(out['base_cpu'] or [math.nan]):.2f}), "
                    f"max gap {max(rot_gaps):.2f} s (baseline {max(base_gaps):.2f} s)",
                    flush=True,
                )
                issued, bound = last, lifetime
                expiry = first + lifetime
            snap = await CloudlessClient(cluster.client, cluster.cluster).snapshot()
            states = Counter(node.state.value for node in snap.nodes)
            ready = states.get(NodeState.READY.value, 0)
            t2 = time.monotonic()
            unrecorded = await check_records(cluster, reps[-1]["serials"]) if reps else []
            print(f"checked {n} node records in {time.monotonic() - t2:.1f} s", flush=True)
            return {
                "reps": reps,
                "setup": setup,
                "states": dict(states),
                "ready": ready,
                "unrecorded": unrecorded,
                "lifetime": lifetime,
            }
        finally:
            if sampling is not None:
                sampling.cancel()
            for conn in ends:
                with contextlib.suppress(OSError):  # it exited already
                    conn.send(("stop",))
            for p in procs:
                await asyncio.to_thread(p.join, 30)
                if p.is_alive():
                    p.terminate()
                    await asyncio.to_thread(p.join)
            await cluster.close()
            await env.shutdown()


def spread(row: dict[str, Any], values: list[float]) -> dict[str, Any]:
    """``row`` with the repetitions' min and max (p50 is their median)."""
    row["min"], row["max"] = round(min(values), 4), round(max(values), 4)
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument(
        "--window", type=float, default=60.0,
        help="seconds standing for the fleet's renewal jitter window (±5%% of the lifetime)",
    )  # fmt: skip
    parser.add_argument("--reps", type=int, default=3, help="rotations of the whole fleet")
    parser.add_argument(
        "--baseline", type=float, default=30.0, help="seconds of heartbeats only before each"
    )
    parser.add_argument(
        "--first-lifetime", type=float, default=None,
        help="seconds the fleet's first certificates live (default: twice the renewed "
        "ones', 20 x --window, room for setting up thousands of nodes); the first rotation "
        "waits a quarter of it",
    )  # fmt: skip
    parser.add_argument("--warmup", type=float, default=30.0, help="after the fleet is Ready")
    parser.add_argument("--seed", type=int, default=1, help="of the renewals' jitter")
    args = parser.parse_args()
    if args.nodes < 1 or args.reps < 1 or args.window <= 0 or args.baseline <= 0:
        parser.error("--nodes and --reps must be at least 1, --window and --baseline positive")
    lifetime = args.window / (2 * RENEW_JITTER)
    args.first_lifetime = args.first_lifetime or 2 * lifetime
    if args.first_lifetime < lifetime:
        parser.error(f"--first-lifetime must be at least 10 x --window ({lifetime:g} s)")
    configure_logging("ERROR")
    load_before = os.getloadavg()
    out = await run(args)
    load_after = os.getloadavg()
    reps, n = out["reps"], args.nodes
    p = {
        "nodes": n,
        "window_seconds": args.window,
        "certificate_lifetime_seconds": lifetime,
        "first_certificates_lifetime_seconds": args.first_lifetime,
        "time_compression": round(30 * 86400 / lifetime),
        "repetitions": args.reps,
        "baseline_seconds": args.baseline,
        "heartbeat_hz": 1.0 / PERIOD,
        "mtls": True,
        "renewal": "agent.renewal.CertificateRenewer (new key + CSR, RenewCertificate)",
        "client_processes": CLIENTS,
    }
    times = [r["time"] for r in reps]
    peaks = [max(r["cpu"]) for r in reps]
    base_peaks = [max(r["base_cpu"]) for r in reps]
    cpu = [x for r in reps for x in r["cpu"]]
    base_cpu = [x for r in reps for x in r["base_cpu"]]
    failed = [sum(r["errors"].values()) for r in reps]
    errors: Counter[str] = Counter()
    for r in reps:
        errors.update(r["errors"])
    gaps = [x for r in reps for x in r["gaps"]]
    base_gaps = [x for r in reps for x in r["base_gaps"]]
    rot = summarize(
        f"[rotation] {n} node certificates: first request to last certificate", "s", times, p
    )
    c = summarize("[rotation] coordinator CPU, 1 s samples", "cores", cpu, p)
    b = summarize("[baseline] coordinator CPU, heartbeats only, 1 s samples", "cores", base_cpu, p)
    c["ratio_p50_vs_baseline"] = round(c["p50"] / b["p50"], 3) if b["p50"] else None
    peak = summarize("[rotation] peak coordinator CPU (1 s), per repetition", "cores", peaks, p)
    base_peak = summarize("[baseline] peak coordinator CPU (1 s), per repetition", "cores",
                          base_peaks, p)  # fmt: skip
    peak["ratio_p50_vs_baseline"] = (
        round(peak["p50"] / base_peak["p50"], 3) if base_peak["p50"] else None
    )
    g = summarize(
        "[rotation] heartbeat gap beyond the 1 s period, per node (its longest)", "s", gaps, p
    )
    bg = summarize("[baseline] heartbeat gap beyond the 1 s period, per node", "s", base_gaps, p)
    g["max"], bg["max"] = round(max(gaps), 4), round(max(base_gaps), 4)
    temporal = [x for r in reps for x in r["temporal"]]
    base_temporal = [x for r in reps for x in r["base_temporal"]]
    t = summarize("[rotation] Temporal dev server CPU, 1 s samples", "cores", temporal, p)
    bt = summarize("[baseline] Temporal dev server CPU, 1 s samples", "cores", base_temporal, p)
    t["ratio_p50_vs_baseline"] = round(t["p50"] / bt["p50"], 3) if bt["p50"] else None
    results = [
        spread(rot, times),
        spread(
            summarize("[rotation] renewals per second", "renewal/s", [r["rate"] for r in reps], p),
            [r["rate"] for r in reps],
        ),
        summarize(
            "renewal attempt as the agent sees it (CSR, new mTLS channel, RPC, check, commit)",
            "ms",
            [1000 * x for r in reps for x in r["latencies"]],
            p,
        ),
        {
            **summarize("failed renewal attempts, per repetition", "count", failed, p),
            "by_code": dict(errors),
        },
        c,
        b,
        spread(peak, peaks),
        spread(base_peak, base_peaks),
        g,
        bg,
        t,
        bt,
        summarize(
            "[rotation] client processes' CPU (both), 1 s samples",
            "cores",
            [x for r in reps for x in r["clients"]],
            p,
        ),
        spread(
            summarize(
                "[rotation] clients' beat lateness behind its slot (max), per repetition",
                "s",
                [r["lateness"] for r in reps],
                p,
            ),
            [r["lateness"] for r in reps],
        ),
    ]
    print()
    print_table(results)
    problems = []
    for i, r in enumerate(reps):
        if r["errors"] or r["unrenewed"]:
            problems.append(f"rep {i}: failed attempts {r['errors']}, unrenewed {r['unrenewed']}")
        if r["handed_over"] != n or r["renewed"] != n:
            problems.append(f"rep {i}: {r['renewed']} renewed, {r['handed_over']} handed over")
        if r["not_presented"]:
            problems.append(f"rep {i}: {r['not_presented']} new certificates never on a stream")
        if r["changes"]:
            problems.append(f"rep {i}: liveness changes {r['changes'][:5]}")
        if r["reopened"]:
            problems.append(f"rep {i}: {r['reopened']} streams broke and were reopened")
    if out["ready"] != n:
        problems.append(f"nodes by state at the end: {out['states']}")
    if out["unrecorded"]:
        problems.append(f"node/<id> without the newest serial: {out['unrecorded'][:5]}")
    if g["max"] > 1.0:
        problems.append(f"a heartbeat gap of {g['max']:.2f} s beyond the period (goal: 1 s)")
    checks = (
        "every node renewed once per repetition and handed its heartbeat stream over to the "
        "new certificate; the gateway saw every new certificate on a heartbeat stream; the "
        "liveness monitor emitted no state change during the rotations; every node Ready in "
        "the ledger at the end, its node/<id> recording the newest serial"
        if not problems
        else "FAILED: " + "; ".join(problems)
    )
    path = write_results(
        "cert_rotation",
        results,
        notes=(
            f"One coordinator (this process) and the Temporal dev server; {n} hollow nodes "
            f"in {CLIENTS} client processes on the same 2 cores, each with a real node/<id> "
            "workflow (started as the enrollment workflow's register_node does, with a "
            "certificate issued by the cluster CA; Ready after the coordinator probed its "
            "AgentService over mTLS) and a heartbeat stream at 1 Hz over mTLS. Each "
            "repetition renews every node through agent.renewal.CertificateRenewer (new key "
            "and CSR, RenewCertificate over a new mTLS channel, the node/<id> Update, the "
            "signing activity; answer checked, committed, AgentService and heartbeat stream "
            "switched make-before-break), due as a fleet enrolled at one moment is: "
            f"uniform over a {args.window:g} s window standing for the ±5 % jitter of a "
            f"{lifetime:g} s lifetime (a 30-day fleet's 3-day window compressed "
            f"{p['time_compression']}x). A repetition starts once a quarter lifetime passed "
            "since the previous one's last certificate (node/<id> issues at most one per "
            "quarter lifetime); its baseline is the heartbeats-only window just before it. "
            "CPU: user+system of each process over 1 s samples (psutil); the coordinator "
            "process also runs the in-thread transit server. Heartbeat gap: per node, the "
            "longest interval between two beats the gateway took in (LivenessMonitor.beat), "
            "minus the 1 s period; the clients' lateness row shows how much of it the "
            f"clients caused. Setup ({n} node/<id> started, Ready, beating) took "
            f"{out['setup']:.0f} s. Load average (1/5/15 min) "
            f"{'/'.join(f'{x:.1f}' for x in load_before)} before the run, "
            f"{'/'.join(f'{x:.1f}' for x in load_after)} after (other jobs shared the "
            f"machine). Checked: {checks}."
        ),
    )
    print(f"\nwrote {path}")
    if problems:
        raise SystemExit("goals not met: " + "; ".join(problems))


if __name__ == "__main__":
    asyncio.run(main())
