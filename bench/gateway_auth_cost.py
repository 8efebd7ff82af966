"""Authentication cost per heartbeat at the gateway, revocation checks included (issue 11).

The gateway checks every beat's client certificate against the coordinator's revocation
list (removed nodes' and revoked users' certificates), but only when the list is not
empty; ``bench/heartbeat_ingest.py`` runs with nothing revoked, so it never exercised the
check. Here one coordinator (in this process) takes ``--nodes`` hollow nodes heartbeating
at 1 Hz over mutual TLS (clients in two child processes, the machinery of
``heartbeat_ingest``) and its CPU is measured in two phases, alternated on the same open
streams (A B, B A, A B, ... over ``--reps`` repetitions, so drift and the other jobs on the
machine fall on both alike):

- A: nothing revoked (the gateway's fast path, today's figure);
- B: ``--revoked`` certificates of other identities revoked, half removed nodes and half
  revoked users, recorded in the ledger the way production does (the ``remove_node`` op of
  ``apply_batch`` that ``node/<id>`` sends on removal; ``register_user``/``revoke_user`` as
  ``cloudlessctl user create|revoke`` call them) and loaded by the coordinator's own
  :class:`~cloudless.revocation.RevocationList` from the ledger.

The phases switch the list's fetch: both query the ledger every refresh (same cost), A
drops the answer. After every B window a fresh heartbeat stream with a revoked node's
certificate must be refused (PERMISSION_DENIED, "revoked"), so the check is on the path.

    python bench/gateway_auth_cost.py [--nodes 5000] [--revoked 1000] [--reps 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# isort: split
import workers  # noqa: F401  (its __init__ applies cloudless.grpc_tuning before grpc loads)

# isort: split

import grpc

from bench.common import print_table, summarize, write_results
from bench.heartbeat_ingest import cpu_window, node_credentials, spawn_clients, warmed_up
from cloudless.api import gateway_pb2, gateway_pb2_grpc
from cloudless.client import CloudlessClient
from cloudless.contracts.ledger import LedgerHandle
from cloudless.logs import configure_logging
from cloudless.model import LedgerBatch, LedgerOp, RemoveNodeInput, RevokedCertificate
from cloudless.pki import CertificateAuthority, Identity, cert_not_after, cert_serial
from cloudless.revocation import SERIAL_CACHE_SIZE, RevocationList
from cloudless.testing.cluster import LocalCluster, start_temporal
from cloudless.tls import GATEWAY_SERVER_NAME, TLSMaterial, secure_channel
from cloudless.users import issue_user
from cloudless.vocabulary import AccessRole

#: Removals per ``apply_batch`` Update (a coordinator's writer batches the same way).
BATCH = 100
#: User Updates in flight at once: Temporal allows at most 10 per workflow.
USER_UPDATES = 8


class Switch:
    """The coordinator's revocation-list fetch, phase by phase: the ledger is asked every
    time (the refresh costs the same in both phases); phase A drops its answer."""

    def __init__(self, fetch: Callable[[], Awaitable[list[RevokedCertificate]]]) -> None:
        self._fetch = fetch
        self.on = False

    async def __call__(self) -> list[RevokedCertificate]:
        listed = await self._fetch()
        return listed if self.on else []


async def revoke_through_ledger(
    cluster: LocalCluster, ca: CertificateAuthority, count: int
) -> TLSMaterial:
    """Revoke ``count`` certificates of identities outside the fleet: half removed nodes,
    half users; the first removed node's material (for the refusal probe)."""
    nodes, users = count - count // 2, count // 2
    ledger = LedgerHandle(cluster.client, cluster.cluster)
    probe: TLSMaterial | None = None
    ops = []
    for i in range(nodes):
        key, cert = ca.issue(Identity(cluster.cluster, "node", f"removed-{i}"))
        probe = probe or TLSMaterial(key, cert, ca.cert_pem)
        ops.append(
            LedgerOp(
                remove_node=RemoveNodeInput(
                    node_id=f"removed-{i}",
                    certificate_serial=cert_serial(cert),
                    certificate_not_after=cert_not_after(cert),
                    reason="benchmark: revoked before the fleet joined",
                )
            )
        )
    for start in range(0, len(ops), BATCH):
        done = await ledger.apply_batch(LedgerBatch(ops=ops[start : start + BATCH]))
        failed = [r.error for r in done.results if r.removed is None or not r.removed.revoked]
        if failed:
            raise RuntimeError(f"the ledger did not revoke {len(failed)} removal(s): {failed[0]}")
    people = CloudlessClient(cluster.client, cluster.cluster)
    gate = asyncio.Semaphore(USER_UPDATES)

    async def user(i: int) -> None:
        issued = issue_user(ca, cluster.cluster, f"former-{i}", AccessRole.OPERATOR)
        async with gate:
            await people.register_user(issued)
            revoked = await people.revoke_user(issued.name, reason="benchmark")
        if revoked.certificates != 1:
            raise RuntimeError(f"revoking user {issued.name} revoked {revoked.certificates}")

    await asyncio.gather(*(user(i) for i in range(users)))
    if probe is None:
        raise ValueError("--revoked must be at least 1 (a removed node's certificate)")
    return probe


async def refusal(address: str, material: TLSMaterial) -> str:
    """The gateway's answer to a heartbeat stream with ``material``: its refusal's detail,
    or '' if it was accepted."""
    async with secure_channel(address, GATEWAY_SERVER_NAME, material.ca_pem, material) as ch:

        async def beats() -> AsyncIterator[gateway_pb2.HeartbeatRequest]:
            yield gateway_pb2.HeartbeatRequest(seq=1)

        try:
            async for _ in gateway_pb2_grpc.GatewayServiceStub(ch).Heartbeat(beats(), timeout=10):
                return ""
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.PERMISSION_DENIED:
                raise
            return err.details() or ""
    return ""


async def run(nodes: int, revoked: int, reps: int, window: float, warmup: float) -> dict[str, Any]:
    """Cores and beats/s of each window, by phase, and the probes' refusals."""
    env = await start_temporal()
    with tempfile.TemporaryDirectory(prefix="bench-") as d:
        cluster = LocalCluster(env.client, Path(d), cluster=f"auth-{uuid.uuid4().hex[:4]}")
        await cluster.start()
        procs: list[Any] = []
        try:
            coordinator: Any = cluster.coordinator
            revocations: RevocationList = coordinator.revocations
            monitor = coordinator.liveness
            ca = CertificateAuthority.load(cluster.coordinator_dir)
            t0 = time.monotonic()
            probe = await revoke_through_ledger(cluster, ca, revoked)
            print(f"revoked {revoked} certificates in the ledger in {time.monotonic() - t0:.1f} s")
            switch = Switch(revocations._fetch)  # the ledger's query the coordinator set
            revocations._fetch = switch
            await revocations.refresh()
            creds = node_credentials(cluster, nodes)
            duration = warmup + reps * 2 * (window + 15) + 120
            procs, start_at = spawn_clients(cluster.agent_gateway, creds, nodes, 1.0, duration, 2)
            await warmed_up(start_at, warmup, settled=lambda: monitor.backlog == 0)
            out: dict[str, Any] = {"A": [], "B": [], "rate_A": [], "rate_B": [], "refused": []}
            for rep in range(reps):
                for phase in "AB" if rep % 2 == 0 else "BA":
                    switch.on = phase == "B"
                    await revocations.refresh()
                    listed = len(revocations.serials)
                    if listed != (revoked if switch.on else 0):
                        raise RuntimeError(f"phase {phase}: the list holds {listed} serials")
                    await asyncio.sleep(1.0)  # beats already in flight land before the window
                    rate, cores = await cpu_window(lambda: monitor.beats, window)
                    out[phase].append(cores)
                    out[f"rate_{phase}"].append(rate)
                    print(f"rep {rep} phase {phase}: {cores:.4f} cores, {rate:.0f} beats/s")
                    if phase == "B":  # outside the window: the probe is not charged
                        out["refused"].append(await refusal(cluster.agent_gateway, probe))
            out["pems"] = [cert for _name, _key, cert, _ca in creds]
            switch.on = True
            out["listed"] = await switch()
            return out
        finally:
            for p in procs:
                p.terminate()
                await asyncio.to_thread(p.join)
            await cluster.close()
            await env.shutdown()


async def check_cost(
    pems: list[bytes], listed: list[RevokedCertificate], rounds: int = 5
) -> tuple[list[float], list[float]]:
    """µs per beat of the check alone, in this process, the fleet's certificates in turn
    as their beats arrive: a stream's serial looked up (what the gateway does), and each
    certificate through the list's bounded cache (a call's path; every beat's before)."""

    async def fetch() -> list[RevokedCertificate]:
        return listed

    rl = RevocationList(fetch)
    await rl.refresh()
    serials = [rl.serial(pem) for pem in pems]
    stream, call = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for serial in serials:
            rl.whose(serial)
        t1 = time.perf_counter()
        for pem in pems:
            rl.revoked(pem)
        t2 = time.perf_counter()
        stream.append(1e6 * (t1 - t0) / len(pems))
        call.append(1e6 * (t2 - t1) / len(pems))
    return stream, call


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--revoked", type=int, default=1000, help="half nodes, half users")
    parser.add_argument("--reps", type=int, default=6, help="repetitions of A and B (>= 1)")
    parser.add_argument("--window", type=float, default=12.0, help="seconds per phase")
    parser.add_argument(
        "--warmup", type=float, default=45.0, help="handshakes and joins first (seconds)"
    )
    args = parser.parse_args()
    if args.reps < 1 or args.revoked < 1 or args.nodes < 1 or args.window <= 0:
        parser.error("--reps, --revoked and --nodes must be at least 1, --window positive")
    configure_logging("ERROR")
    load_before = os.getloadavg()[0]
    out = await run(args.nodes, args.revoked, args.reps, args.window, args.warmup)
    load_after = os.getloadavg()[0]
    refused = [r for r in out["refused"] if "was revoked" in r]
    if len(refused) != len(out["refused"]):
        raise SystemExit(f"a revoked node certificate was accepted during B: {out['refused']}")
    p = {
        "nodes": args.nodes,
        "rate_hz": 1.0,
        "mtls": True,
        "window_seconds": args.window,
        "repetitions": args.reps,
        "order": " ".join("AB" if r % 2 == 0 else "BA" for r in range(args.reps)),
    }
    pb = {
        **p,
        "revoked": args.revoked,
        "revoked_nodes": args.revoked - args.revoked // 2,
        "revoked_users": args.revoked // 2,
        "revoked_node_probe_refused": f"{len(refused)}/{len(out['refused'])}",
    }
    n = args.nodes
    a = summarize(f"[A] {n} nodes at 1 Hz, nothing revoked: coordinator CPU", "cores", out["A"], p)
    b = summarize(
        f"[B] {n} nodes at 1 Hz, {args.revoked} certificates revoked: coordinator CPU",
        "cores", out["B"], pb,
    )  # fmt: skip
    b["ratio_p50_vs_baseline"] = round(b["p50"] / a["p50"], 3) if a["p50"] else None
    ratios = [y / x for x, y in zip(out["A"], out["B"], strict=True) if x]
    r = summarize("B/A coordinator CPU, per repetition (paired)", "ratio", ratios, pb)
    r["min"], r["max"] = round(min(ratios), 4), round(max(ratios), 4)
    r["stdev"] = round(statistics.stdev(ratios), 4) if len(ratios) > 1 else None
    per_beat = {
        ph: [1e6 * c / rate for c, rate in zip(out[ph], out[f"rate_{ph}"], strict=True)]
        for ph in "AB"
    }
    ua = summarize("[A] coordinator CPU per beat, nothing revoked", "us/beat", per_beat["A"], p)
    ub = summarize(
        f"[B] coordinator CPU per beat, {args.revoked} revoked", "us/beat", per_beat["B"], pb
    )
    ub["ratio_p50_vs_baseline"] = round(ub["p50"] / ua["p50"], 3) if ua["p50"] else None
    stream, call = await check_cost(out["pems"], out["listed"])
    pc = {"certificates": n, "revoked": args.revoked, "rounds": len(stream)}
    cs = summarize("revocation check per beat alone: stream's serial looked up", "us", stream, pc)
    cc = summarize(
        "[baseline] the same through the certificate cache (per call; every beat before)",
        "us", call, {**pc, "cache_entries": SERIAL_CACHE_SIZE},
    )  # fmt: skip
    cs["ratio_p50_vs_baseline"] = round(cs["p50"] / cc["p50"], 4) if cc["p50"] else None
    results = [
        a,
        b,
        r,
        ua,
        ub,
        cs,
        cc,
        summarize(f"[A] {n} nodes at 1 Hz: beats/s", "beat/s", out["rate_A"], p),
        summarize(f"[B] {n} nodes at 1 Hz: beats/s", "beat/s", out["rate_B"], pb),
    ]
    print()
    print_table(results)
    print(f"B/A per repetition: {[round(x, 3) for x in ratios]}")
    path = write_results(
        "gateway_auth_cost",
        results,
        notes=(
            "One coordinator (this process), hollow nodes heartbeating at 1 Hz over mutual "
            "TLS from two client processes on the same 2 cores (other jobs shared them). "
            "CPU is the coordinator process's user+system time (psutil) over each window, "
            "not wall time. A and B alternate on the same open streams (order per "
            "repetition in the parameters); B's list is the ledger's (removed nodes' "
            "certificates via apply_batch remove_node, revoked users' via "
            "register_user/revoke_user), loaded by the coordinator's RevocationList; A's "
            "fetch asks the ledger too and drops the answer. After each B window a fresh "
            "stream with a revoked node certificate was refused (PERMISSION_DENIED). The "
            "ratio row is each repetition's B/A; this run's: "
            f"{', '.join(f'{x:.3f}' for x in ratios)} (mean {statistics.fmean(ratios):.3f}). "
            f"Load average (1 min) {load_before:.1f} before the run, {load_after:.1f} after. "
            "The check-alone rows time the revocation lookup by itself in this process "
            f"after the run ({n} certificates in turn, {args.revoked} revoked)."
        ),
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
