"""Latency of authenticated transit requests with and without a connection flood.

Stack: ``cloudless-transit`` as its own process (``python -m transit.server`` on a free
loopback port, default connection limits, plain HTTP as the dev stack runs it, or TLS
with ``--tls``), its soft open-files limit lowered to 1,024 before it starts (it raises
it to the hard limit itself). The flood (:class:`cloudless.testing.flood.Flood`) is what
one unprivileged local user can do: ``--idle`` silent TCP connections and ``--slowloris``
writers dripping a request head a byte every 0.1 s, from each address in ``--sources``.

Measured: ``encrypt`` through hvac, (a) each on a new client and connection, as every
``cloudlessctl`` command makes it, and (b) on one kept-alive client, as the coordinator
holds it. Baseline and flood alternate over ``--rounds`` rounds (``--n`` requests each
in total), so drift on a shared machine lands on both; each flood is opened fresh for its
round and its requests finish well inside the server's header deadline (10 s), so the
flood is in place throughout. ``ratio_p50_vs_baseline`` compares the two in this run.

    python bench/flood.py [--n 300] [--rounds 3] [--idle 1000] [--slowloris 1]
                          [--sources 127.0.0.1,127.0.0.2] [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# isort: split
import cloudless.testing  # noqa: F401  (applies cloudless.grpc_tuning before grpc loads)

# isort: split
import hvac

from bench.common import print_table, summarize, write_results
from cloudless.cli.devstack import port_open, wait_until
from cloudless.pki import CertificateAuthority, Identity
from cloudless.testing.cluster import free_port
from cloudless.testing.flood import Flood
from cloudless.transit.client import ADDRESS_FILE
from transit.server import LIMITS

ROOT = Path(__file__).resolve().parents[1]
MS = 1e3
PLAINTEXT = base64.b64encode(os.urandom(32)).decode()


@contextmanager
def transit_process(directory: Path, tls: bool) -> Iterator[tuple[str, str, str | bool, int]]:
    """A ``cloudless-transit`` process; (url, token, verify, port)."""
    port, token = free_port(), "clt." + secrets.token_urlsafe(16)
    data = directory / "transit"
    args = [
        sys.executable, "-m", "transit.server",
        "--listen", f"127.0.0.1:{port}", "--data-dir", str(data),
    ]  # fmt: skip
    verify: str | bool = True
    if tls:
        ca = CertificateAuthority.bootstrap(directory / "ca", "bench")
        key, cert = ca.issue(
            Identity("bench", "coordinator", "transit"), ip_addresses=["127.0.0.1"]
        )
        (directory / "tls.key").write_bytes(key)
        (directory / "tls.crt").write_bytes(cert)
        (directory / "ca.crt").write_bytes(ca.cert_pem)
        args += ["--tls-cert", str(directory / "tls.crt"), "--tls-key", str(directory / "tls.key")]
        verify = str(directory / "ca.crt")
    log = directory / "transit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["sh", "-c", 'ulimit -Sn 1024 && exec "$@"', "sh", *args],
            cwd=ROOT, env={**os.environ, "CLOUDLESS_TRANSIT_TOKEN": token},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(
            lambda: (data / ADDRESS_FILE).exists() and port_open(port), "transit", 30, proc, log
        )
        yield (data / ADDRESS_FILE).read_text().strip(), token, verify, port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def new_connection_encrypt(url: str, token: str, verify: str | bool) -> Callable[[], None]:
    def call() -> None:
        client = hvac.Client(url=url, token=token, verify=verify, timeout=30)
        try:
            client.secrets.transit.encrypt_data("bench", plaintext=PLAINTEXT)
        finally:
            client.adapter.close()

    return call


def timed(call: Callable[[], None], n: int) -> list[float]:
    """Latency of each of ``n`` sequential calls, in milliseconds."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * MS)
    return samples


async def measure(
    args: argparse.Namespace, url: str, token: str, verify: str | bool, port: int
) -> dict[str, Any]:
    load = round(os.getloadavg()[0], 2)
    kept = hvac.Client(url=url, token=token, verify=verify, timeout=30)
    kept.secrets.transit.encrypt_data("bench", plaintext=PLAINTEXT)  # key and connection
    series: dict[str, list[float]] = {k: [] for k in ("new", "kept", "new_flood", "kept_flood")}
    held: list[int] = []
    fresh = new_connection_encrypt(url, token, verify)

    def kept_call() -> None:
        kept.secrets.transit.encrypt_data("bench", plaintext=PLAINTEXT)

    per_round = max(1, args.n // args.rounds)
    tls_client = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else None
    for _ in range(args.rounds):
        series["new"] += await asyncio.to_thread(timed, fresh, per_round)
        series["kept"] += await asyncio.to_thread(timed, kept_call, per_round)
        async with AsyncExitStack() as stack:
            floods = [
                await stack.enter_async_context(
                    Flood(
                        "127.0.0.1", port, idle=args.idle, slowloris=args.slowloris,
                        source=source, tls=tls_client,
                    )
                )
                for source in args.sources
            ]  # fmt: skip
            started = time.monotonic()
            series["new_flood"] += await asyncio.to_thread(timed, fresh, per_round)
            series["kept_flood"] += await asyncio.to_thread(timed, kept_call, per_round)
            took = time.monotonic() - started
            if took > LIMITS.header_timeout * 0.8:
                raise SystemExit(
                    f"a round took {took:.1f}s, near the server's {LIMITS.header_timeout}s "
                    "header deadline: the flood was not in place throughout; lower --n"
                )
            held.append(sum(f.open_count() for f in floods))
    kept.adapter.close()
    return {"series": series, "held": held, "load": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300, help="requests per series, in total")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=int, default=1000, help="idle connections per source")
    parser.add_argument("--slowloris", type=int, default=1, help="drip-writers per source")
    parser.add_argument(
        "--sources",
        type=lambda s: [a for a in s.split(",") if a],
        default=["127.0.0.1", "127.0.0.2"],
        help="client addresses the flood comes from (127.0.0.0/8)",
    )
    parser.add_argument("--tls", action="store_true", help="serve transit over TLS")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bench-flood-") as d,
        transit_process(Path(d), args.tls) as (url, token, verify, port),
    ):
        out = asyncio.run(measure(args, url, token, verify, port))
    series = out["series"]
    parameters = {
        "idle_per_source": args.idle,
        "slowloris_per_source": args.slowloris,
        "sources": args.sources,
        "rounds": args.rounds,
        "tls": args.tls,
        "server_limits": {
            "max_connections": LIMITS.max_connections,
            "max_per_peer": LIMITS.max_per_peer,
            "header_timeout_s": LIMITS.header_timeout,
        },
        "flood_sockets_held_by_server_at_round_end": out["held"],
        # The machine may be shared: its load when the run began.
        "load_average_1m_at_start": out["load"],
    }
    results = []
    for kind, label in (
        ("new", "new connection each (cloudlessctl)"),
        ("kept", "kept-alive client"),
    ):
        base = summarize(f"encrypt, {label} [baseline: no flood]", "ms", series[kind], parameters)
        flooded = summarize(
            f"encrypt, {label}, under flood", "ms", series[f"{kind}_flood"], parameters
        )
        flooded["ratio_p50_vs_baseline"] = round(flooded["p50"] / base["p50"], 2)
        results += [base, flooded]
    print_table(results)
    for r in results[1::2]:
        print(f"{r['metric']}: {r['ratio_p50_vs_baseline']}x baseline p50")
    notes = (
        f"cloudless-transit as its own process ({'TLS' if args.tls else 'plain HTTP'}, "
        "loopback, default limits), hvac clients in this process; the flood runs on this "
        f"process's event loop: {args.idle} idle TCP connections and {args.slowloris} "
        f"slowloris writer(s) from each of {', '.join(args.sources)}, opened fresh each "
        "round. The server holds at most max_per_peer of each address's sockets (the rest "
        "are pushed out at once) and closes the rest at the header deadline; "
        "flood_sockets_held_by_server_at_round_end shows it held them while measured. "
        "Baseline and flood rounds alternate in one run."
    )
    print(f"wrote {write_results('flood', results, notes)}")


if __name__ == "__main__":
    main()
