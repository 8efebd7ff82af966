"""Transit latency and throughput through hvac over loopback HTTP, against raw AES-GCM.

Stack: ``cloudless-transit`` in this process (the production aiohttp server on its own
event loop in a helper thread, on a free 127.0.0.1 port with a sealed keyring in a temp
dir), driven by ``hvac.Client`` exactly as
Cloudless code drives it: keep-alive HTTP/1.1, JSON, base64. Measured sequentially:
encrypt, decrypt and datakey (plaintext, 256 bits), each ``--n`` requests after a warm-up;
then throughput with ``--threads`` client threads (one hvac client each) encrypting
concurrently.

Baselines in the same run: raw ``AESGCM.encrypt`` with a fresh 96-bit nonce (what one
transit encrypt does cryptographically) and the in-process keyring (crypto plus key
lookup, no HTTP), so ``ratio_p50_vs_baseline`` shows what the HTTP API costs.

    python bench/transit_latency.py [--n 2000] [--threads 8] [--payload 32]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hvac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.common import print_table, summarize, write_results
from cloudless.logs import configure_logging
from cloudless.testing.transit import transit_server
from transit.keyring import Keyring

US = 1e6


def timed(n: int, call: Callable[[int], object], warmup: int = 200) -> list[float]:
    """Per-call latency in microseconds; the warm-up calls are not recorded."""
    for i in range(warmup):
        call(i)
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - t0) * US)
    return samples


def concurrent_encrypts(
    url: str, token: str, threads: int, per_thread: int, plaintext: str
) -> tuple[list[float], float]:
    """Latencies of every request and the wall time for all threads together."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        client = hvac.Client(url=url, token=token)
        transit = client.secrets.transit
        transit.encrypt_data("bench", plaintext=plaintext)  # open the connection
        start.wait()
        try:
            for _ in range(per_thread):
                t0 = time.perf_counter()
                transit.encrypt_data("bench", plaintext=plaintext)
                latencies[index].append((time.perf_counter() - t0) * US)
        except BaseException as err:  # reported after join
            errors.append(err)
        finally:
            client.adapter.close()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return [x for per in latencies for x in per], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="sequential requests per operation")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--per-thread", type=int, default=500)
    parser.add_argument("--payload", type=int, default=32, help="plaintext bytes (a data key)")
    args = parser.parse_args()
    configure_logging("WARNING")

    payload = os.urandom(args.payload)
    plaintext = base64.b64encode(payload).decode()
    common = {"payload_bytes": args.payload, "key_type": "aes256-gcm96"}
    results: list[dict[str, Any]] = []

    key = AESGCM(os.urandom(32))
    raw = summarize(
        "AESGCM.encrypt in-process [baseline]",
        "us",
        timed(args.n, lambda _: key.encrypt(os.urandom(12), payload, None)),
        common,
    )
    results.append(raw)
    ring = Keyring()
    ring.create_key("bench")
    results.append(
        summarize(
            "keyring.encrypt in-process (no HTTP)",
            "us",
            timed(args.n, lambda _: ring.encrypt("bench", payload)),
            common,
        )
    )

    with transit_server() as server:
        client = hvac.Client(url=server.url, token=server.token)
        transit = client.secrets.transit
        transit.create_key("bench")
        ciphertexts: list[str] = []

        def encrypt(_: int) -> None:
            out = transit.encrypt_data("bench", plaintext=plaintext)
            ciphertexts.append(out["data"]["ciphertext"])

        enc = summarize("encrypt via hvac/HTTP", "us", timed(args.n, encrypt), common)
        enc["ratio_p50_vs_baseline"] = round(enc["p50"] / raw["p50"], 1)
        results.append(enc)

        def decrypt(i: int) -> None:
            out = transit.decrypt_data("bench", ciphertext=ciphertexts[i % len(ciphertexts)])
            assert out["data"]["plaintext"] == plaintext

        dec = summarize("decrypt via hvac/HTTP", "us", timed(args.n, decrypt), common)
        dec["ratio_p50_vs_baseline"] = round(dec["p50"] / raw["p50"], 1)
        results.append(dec)

        def datakey(_: int) -> None:
            transit.generate_data_key("bench", key_type="plaintext", bits=256)

        dk = summarize(
            "datakey/plaintext (256 bits) via hvac/HTTP",
            "us",
            timed(args.n, datakey),
            {"bits": 256, "key_type": "aes256-gcm96"},
        )
        dk["ratio_p50_vs_baseline"] = round(dk["p50"] / raw["p50"], 1)
        results.append(dk)
        client.adapter.close()

        # The same request over a bare keep-alive http.client connection: separates the
        # server's cost from hvac's and requests' client-side overhead.
        host, port = server.address
        conn = http.client.HTTPConnection(host, port)
        body = json.dumps({"plaintext": plaintext})
        headers = {"X-Vault-Token": server.token, "Content-Type": "application/json"}

        def bare(_: int) -> None:
            conn.request("POST", "/v1/transit/encrypt/bench", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200

        bare_result = summarize(
            "encrypt via bare http.client (no hvac/requests)", "us", timed(args.n, bare), common
        )
        bare_result["ratio_p50_vs_baseline"] = round(bare_result["p50"] / raw["p50"], 1)
        results.append(bare_result)
        conn.close()

        sequential_rate = 1e6 / enc["mean"]
        latencies, wall = concurrent_encrypts(
            server.url, server.token, args.threads, args.per_thread, plaintext
        )
        total = args.threads * args.per_thread
        conc = summarize(
            f"encrypt via hvac/HTTP, {args.threads} client threads",
            "us",
            latencies,
            {**common, "threads": args.threads, "requests": total, "wall_s": round(wall, 3)},
        )
        conc["throughput_ops_per_s"] = round(total / wall, 1)
        conc["sequential_ops_per_s"] = round(sequential_rate, 1)
        results.append(conc)

    print_table(results)
    for r in results:
        extra = {k: r[k] for k in r if k.startswith(("ratio", "throughput", "sequential"))}
        if extra:
            print(f"  {r['metric']}: {extra}")
    path = write_results(
        "transit_latency",
        results,
        notes="cloudless-transit in this process (aiohttp on its own event loop in a helper "
        "thread, loopback, no TLS), driven by hvac with keep-alive. Client and server share "
        "this process's GIL, so the "
        "8-thread throughput is bounded by one core's worth of Python for both sides: a floor "
        "for a separate server process. The bare http.client row shows how much of the hvac "
        "latency is client-side (requests) rather than server work.",
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
