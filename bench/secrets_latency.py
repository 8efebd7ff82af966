"""SecretsService latency and throughput: CreateSecret, GetSecret, GenerateAccessToken.

Stack: the real Temporal dev server, ``cloudless-transit`` (a thread, HTTP on loopback,
reached through hvac) and a coordinator (LocalCluster) serving the SecretsService over
gRPC with mutual TLS; the client uses the admin certificate. Figures, each ``--n`` calls
after a warm-up:

- ``create``: CreateSecret end to end (transit datakey + seal + update-with-start of the
  ``secret/<ns>/<name>`` workflow, durable in Temporal before it answers).
- ``token``: GenerateAccessToken end to end, and the signing alone (``mint``).
- ``get warm``: GetSecret when the coordinator has the record and data key in memory
  (an agent cache miss); ``get cold``: coordinator caches dropped before every call
  (Temporal query + transit unwrap); ``get handler``: the warm path without gRPC.
- ``get agent cache hit``: the agent-side SecretStore answering from memory.
- throughput: ``--procs`` client processes issuing GetSecret for ``--seconds``, and the
  same load against a no-op GetSecret (the ceiling of the gRPC stack on this machine).

Baseline in the same run: a no-op GetSecret on an identical gRPC+mTLS server, the floor
any RPC pays on this machine (``ratio_p50_vs_baseline``).

    python bench/secrets_latency.py [--n 1000] [--procs 2] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# isort: split
import workers  # noqa: F401  (its __init__ applies cloudless.grpc_tuning before grpc loads)

# isort: split

import grpc
import hvac

from agent.secrets import SecretSource, SecretStore
from bench.common import print_table, summarize, write_results
from cloudless import tls
from cloudless.api import secrets_pb2, secrets_pb2_grpc
from cloudless.logs import configure_logging
from cloudless.pki import Identity
from cloudless.secrets.client import SecretsClient
from cloudless.testing.cluster import LocalCluster, start_temporal
from cloudless.testing.transit import transit_server

US = 1e6


async def timed(n: int, call: Callable[[int], Awaitable[object]], warmup: int = 50) -> list[float]:
    for i in range(warmup):
        await call(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        out.append((time.perf_counter() - t0) * US)
    return out


class NoopSecrets(secrets_pb2_grpc.SecretsServiceServicer):
    async def GetSecret(
        self, request: secrets_pb2.GetSecretRequest, context: Any
    ) -> secrets_pb2.GetSecretResponse:
        return secrets_pb2.GetSecretResponse()


async def noop_server(material: tls.TLSMaterial) -> tuple[grpc.aio.Server, str]:
    server = tls.server()
    secrets_pb2_grpc.add_SecretsServiceServicer_to_server(NoopSecrets(), server)
    port = server.add_secure_port(
        "127.0.0.1:0", tls.server_credentials(material, require_client_auth=True)
    )
    await server.start()
    return server, f"127.0.0.1:{port}"


def load_worker(address: str, admin_dir: str, token: str, seconds: float, out: Any) -> None:
    """A client process: GetSecret in a closed loop with 16 in flight; reports the count."""

    async def go() -> int:
        async with SecretsClient.from_dir(address, Path(admin_dir)) as c:
            req = secrets_pb2.GetSecretRequest(namespace="bench", name="hot", token=token)
            deadline = time.perf_counter() + seconds
            done = 0

            async def loop() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    await c.stub.GetSecret(req, timeout=10)
                    done += 1

            await asyncio.gather(*(loop() for _ in range(16)))
            return done

    out.put(asyncio.run(go()))


async def main(args: argparse.Namespace) -> None:
    configure_logging(level="warning")
    env = await start_temporal()
    results: list[dict[str, Any]] = []
    params = {"n": args.n, "transport": "gRPC mTLS loopback", "transit": "cloudless-transit"}
    try:
        with transit_server() as transit, tempfile.TemporaryDirectory(prefix="cl-") as d:
            cluster = LocalCluster(
                env.client,
                Path(d),
                cluster="bench",
                transit=hvac.Client(transit.url, transit.token),
            )
            await cluster.start()
            admin = SecretsClient.from_dir(cluster.agent_gateway, cluster.root / "admin")
            coordinator: Any = cluster.coordinator
            servicer = coordinator.secrets_runtime.servicer
            await admin.create("bench", "hot", {"DB_PASSWORD": b"x" * 32}, ["app"])
            token = (await admin.token("bench", "hot", "app")).token

            create = await timed(
                args.n // 5,
                lambda i: admin.create(
                    "bench", f"s-{i}-{time.monotonic_ns()}", {"K": b"v"}, ["app"]
                ),
                warmup=10,
            )
            results.append(summarize("CreateSecret end to end", "us", create, params))
            tok = await timed(args.n, lambda i: admin.token("bench", "hot", "app"))
            results.append(summarize("GenerateAccessToken end to end", "us", tok, params))
            caller = Identity(cluster="bench", role="admin", name="admin")
            mint_req = secrets_pb2.GenerateAccessTokenRequest(
                namespace="bench", name="hot", audience="app"
            )
            token_handler = await timed(args.n * 5, lambda i: servicer._mint(caller, mint_req))
            results.append(
                summarize("GenerateAccessToken handler only (no gRPC)", "us", token_handler, params)
            )
            tokens = servicer._tokens
            mint = await timed(
                args.n * 5,
                lambda i: asyncio.sleep(
                    0, tokens.mint(namespace="bench", name="hot", audience="app")
                ),
            )
            results.append(summarize("GenerateAccessToken signing only (mint)", "us", mint, params))
            warm = await timed(args.n, lambda i: admin.get("bench", "hot", token))
            base_server, base_addr = await noop_server(
                tls.TLSMaterial.load(cluster.coordinator_dir)
            )
            async with SecretsClient.from_dir(base_addr, cluster.root / "admin") as floor_client:
                floor = await timed(args.n, lambda i: floor_client.get("bench", "hot", token))
            await base_server.stop(None)
            w = summarize("GetSecret warm (agent cache miss, coordinator hit)", "us", warm, params)
            f = summarize("baseline: no-op GetSecret over the same gRPC+mTLS", "us", floor, params)
            w["ratio_p50_vs_baseline"] = round(w["p50"] / f["p50"], 2)
            results += [w, f]
            req = secrets_pb2.GetSecretRequest(namespace="bench", name="hot", token=token)
            handler = await timed(args.n * 5, lambda i: servicer._get(caller, req, "bench"))
            results.append(
                summarize("GetSecret warm handler only (no gRPC)", "us", handler, params)
            )

            def drop_caches() -> None:
                servicer.store.entries.clear()
                servicer.store.data_keys.clear()

            async def cold_get(i: int) -> object:
                drop_caches()
                return await admin.get("bench", "hot", token)

            cold = await timed(args.n // 5, cold_get, warmup=10)
            results.append(
                summarize("GetSecret cold (Temporal query + transit unwrap)", "us", cold, params)
            )
            hits, misses = await agent_cache(cluster, args.n)
            results.append(summarize("GetSecret agent cache hit (memory)", "us", hits, params))
            results.append(
                summarize(
                    "GetSecret agent cache miss (cached token, one RPC)", "us", misses, params
                )
            )

            admin_dir = str(cluster.root / "admin")
            total = await throughput(cluster.agent_gateway, admin_dir, token, args)
            results.append(
                rate_row("GetSecret throughput (warm), coordinator requests/s", total, args)
            )
            # The ceiling: the same load against a no-op GetSecret on the same stack.
            base_server, base_addr = await noop_server(
                tls.TLSMaterial.load(cluster.coordinator_dir)
            )
            floor_total = await throughput(base_addr, admin_dir, token, args)
            await base_server.stop(None)
            results.append(
                rate_row("baseline: no-op GetSecret throughput, requests/s", floor_total, args)
            )
            await admin.close()
            await cluster.close()
    finally:
        await env.shutdown()
    print_table(results)
    path = write_results(
        "secrets_latency",
        results,
        notes=(
            "2-CPU machine; client, coordinator, Temporal and transit share it. Writes "
            "(CreateSecret) are durable in Temporal before answering; warm reads touch "
            "neither Temporal nor transit."
        ),
    )
    print(f"wrote {path}")


async def throughput(address: str, admin_dir: str, token: str, args: argparse.Namespace) -> int:
    """GetSecret calls answered by ``address`` in ``args.seconds`` from ``args.procs``
    client processes (16 in flight each)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=load_worker, args=(address, admin_dir, token, args.seconds, queue))
        for _ in range(args.procs)
    ]
    for p in procs:
        p.start()
    total = 0
    for _ in procs:
        total += await asyncio.to_thread(queue.get)
    for p in procs:
        p.join()
    return total


def rate_row(metric: str, total: int, args: argparse.Namespace) -> dict[str, Any]:
    rate = round(total / args.seconds, 1)
    return {
        "metric": metric,
        "unit": "req/s",
        "p50": rate,
        "p95": rate,
        "p99": rate,
        "n": total,
        "parameters": {"procs": args.procs, "in_flight": 16 * args.procs, "seconds": args.seconds},
    }


async def agent_cache(cluster: LocalCluster, n: int) -> tuple[list[float], list[float]]:
    """The agent's SecretStore: hits from memory, and misses with a cached token (one
    GetSecret RPC each). The admin certificate stands in for a node's: same code path."""
    store = SecretStore.connect(cluster.agent_gateway, tls.TLSMaterial.load(cluster.root / "admin"))
    source = SecretSource("bench", "hot", "app")
    await store.get(source)
    hits = await timed(n * 5, lambda i: store.get(source))

    async def miss(i: int) -> object:
        store.invalidate(source.secret)
        return await store.get(source)

    misses = await timed(n, miss)
    await store.close()
    return hits, misses


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    asyncio.run(main(parser.parse_args()))
