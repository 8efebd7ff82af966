"""No one can block an endpoint with idle or slow connections (issue 10, item 5).

Real processes, as deployed: ``cloudless-transit`` (plain HTTP on loopback as the dev
stack runs it, and with TLS) and a ``cloudless-agent`` enrolled through a coordinator's
gateway (mTLS). Each is flooded from one client address with 1,000 idle TCP connections
and a slowloris writer (a request head, or a TLS ClientHello, a byte every 0.1 s), then
from a second address (127.0.0.2). Meanwhile an authenticated client's requests, each on
a fresh connection as a ``cloudlessctl`` command makes them, must keep succeeding within
:data:`BOUND` seconds; afterwards every flood socket must have been closed by the server.

The servers run with short deadlines (flags) so the test awaits them in seconds; each
server process starts with a soft open-files limit of 1,024, as a login shell gives it,
and must have raised it to the hard limit.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import resource
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest
from temporalio.testing import WorkflowEnvironment

from cloudless.api import agent_pb2, agent_pb2_grpc
from cloudless.cli.devstack import port_open, wait_until
from cloudless.client import CloudlessClient
from cloudless.model import NodeState
from cloudless.pki import CertificateAuthority, Identity
from cloudless.testing.cluster import LocalCluster, free_port
from cloudless.testing.flood import TLS_SLOWLORIS, Flood
from cloudless.tls import TLSMaterial, secure_channel
from cloudless.transit.client import ADDRESS_FILE
from tests.conftest import unique

REPO = Path(__file__).resolve().parents[2]

#: What one local user holds in the issue's report is ~600 connections; the test holds more.
IDLE = 1000
MAX_PER_PEER = 256
HEADER_TIMEOUT = 3.0
IDLE_TIMEOUT = 6.0
#: Seconds an authenticated request (new connection, TLS handshake included) may take.
BOUND = 5.0
#: Seconds a deadline may be seen late on a loaded machine (this one is shared).
SLACK = 4.0
PROBES = 20


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``args`` in a new session with a soft open-files limit of 1,024."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["sh", "-c", 'ulimit -Sn 1024 && exec "$@"', "sh", *args],
            cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)


def _open_files(pid: int) -> tuple[int, int]:
    """The (soft, hard) open-files limit of process ``pid``."""
    line = next(
        line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
        if line.startswith("Max open files")
    )  # fmt: skip
    soft, hard = re.findall(r"\d+|unlimited", line)[:2]
    return int(soft), int(hard)


def _assert_raised_open_files(pid: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard > 1024:
        assert _open_files(pid) == (hard, hard)


def _certificate(directory: Path) -> tuple[Path, Path, Path]:
    """(cert, key, CA) files: a cluster CA's certificate for 127.0.0.1."""
    ca = CertificateAuthority.bootstrap(directory / "ca", "flood")
    key, cert = ca.issue(Identity("flood", "coordinator", "transit"), ip_addresses=["127.0.0.1"])
    paths = directory / "tls.crt", directory / "tls.key", directory / "ca.crt"
    for path, data in zip(paths, (cert, key, ca.cert_pem), strict=True):
        path.write_bytes(data)
    return paths


def _report(what: str, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    median, worst = ordered[len(ordered) // 2], ordered[-1]
    return f"{what}: n={len(ordered)} median={median:.3f}s max={worst:.3f}s"


# --------------------------------------------------------------------------- transit


@dataclass
class Transit:
    url: str
    port: int
    token: str
    ca: Path | None
    pid: int

    def client_tls(self) -> ssl.SSLContext | None:
        return None if self.ca is None else ssl.create_default_context(cafile=str(self.ca))

    def encrypt_on_a_new_connection(self) -> float:
        """One authenticated transit request as ``cloudlessctl`` makes it: a new client, a
        new connection; its seconds. Raises if it fails."""
        started = time.monotonic()
        client = hvac.Client(
            url=self.url, token=self.token, verify=str(self.ca) if self.ca else True, timeout=BOUND
        )
        try:
            reply = client.secrets.transit.encrypt_data(
                "flood", plaintext=base64.b64encode(b"still served").decode()
            )
        finally:
            client.adapter.close()
        assert reply["data"]["ciphertext"].startswith("vault:v1:")
        return time.monotonic() - started


@pytest.fixture(params=["plain", "tls"])
def transit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Transit]:
    port, token = free_port(), "clt." + secrets.token_urlsafe(16)
    data = tmp_path / "transit"
    args = [
        sys.executable, "-m", "transit.server", "--listen", f"127.0.0.1:{port}",
        "--data-dir", str(data), "--max-connections-per-peer", str(MAX_PER_PEER),
        "--header-timeout", str(HEADER_TIMEOUT), "--idle-timeout", str(IDLE_TIMEOUT),
    ]  # fmt: skip
    ca = None
    if request.param == "tls":
        cert, key, ca = _certificate(tmp_path)
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
    log = tmp_path / "transit.log"
    proc = _spawn(args, log, {"CLOUDLESS_TRANSIT_TOKEN": token})
    try:
        wait_until(
            lambda: (data / ADDRESS_FILE).exists() and port_open(port), "transit", 30, proc, log
        )
        url = (data / ADDRESS_FILE).read_text().strip()
        yield Transit(url, port, token, ca, proc.pid)
    finally:
        _stop(proc)


async def _lookup_self(
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], token: str
) -> bytes:
    """One authenticated request on a kept-alive connection; its status line."""
    reader, writer = stream
    ask = f"GET /v1/auth/token/lookup-self HTTP/1.1\r\nHost: x\r\nX-Vault-Token: {token}\r\n"
    writer.write(ask.encode() + b"\r\n")
    async with asyncio.timeout(BOUND):
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: (\d+)", head)
        assert length is not None, head
        await reader.readexactly(int(length.group(1)))
    return head.split(b"\r\n", 1)[0]


async def _probe(transit: Transit) -> list[float]:
    return [await asyncio.to_thread(transit.encrypt_on_a_new_connection) for _ in range(PROBES)]


async def test_transit_serves_authenticated_clients_through_a_flood(transit: Transit) -> None:
    _assert_raised_open_files(transit.pid)
    baseline = await _probe(transit)
    tls = transit.client_tls()

    # One address: 1,000 idle sockets and a slowloris writer (inside TLS, where there is
    # TLS: the head is what it drips).
    async with Flood("127.0.0.1", transit.port, idle=IDLE, slowloris=1, tls=tls) as flood:
        flooded = await _probe(transit)
        # The per-address limit pushed out the oldest at once (long before any deadline) ...
        early = HEADER_TIMEOUT - 0.25  # the deadline runs from the accept, after `opened`
        pushed_out = [h for h in flood.idle if h.closed and h.closed - h.opened < early]
        assert len(pushed_out) >= IDLE - MAX_PER_PEER
        # ... and the header deadline closes the rest, and ends every slowloris.
        await flood.wait_closed(flood.idle, timeout=HEADER_TIMEOUT + SLACK)
        assert max(h.closed - h.opened for h in flood.idle if h.closed) < HEADER_TIMEOUT + SLACK
        await flood.wait_slowloris(2, timeout=2 * (HEADER_TIMEOUT + SLACK))
        assert all(life < HEADER_TIMEOUT + SLACK for life in flood.slowloris_lifetimes)
    assert max(flooded) < BOUND, _report("under the flood", flooded)

    # A second address: its flood pushes out only its own sockets. A client of the first
    # address keeps its kept-alive connection (an older, idle one) all through it.
    neighbour = await asyncio.open_connection("127.0.0.1", transit.port, ssl=tls)
    try:
        assert await _lookup_self(neighbour, transit.token) == b"HTTP/1.1 200 OK"
        async with Flood(
            "127.0.0.1", transit.port, idle=IDLE, slowloris=1, source="127.0.0.2", tls=tls
        ) as other:
            from_elsewhere = await _probe(transit)
            assert other.open_count() <= MAX_PER_PEER
            assert await _lookup_self(neighbour, transit.token) == b"HTTP/1.1 200 OK"
            last_answer = time.monotonic()
            await other.wait_closed(other.idle, timeout=HEADER_TIMEOUT + SLACK)
        assert max(from_elsewhere) < BOUND, _report("flood from 127.0.0.2", from_elsewhere)
        # An authenticated client's idle connection is closed after the idle timeout.
        async with asyncio.timeout(IDLE_TIMEOUT + SLACK):
            assert await neighbour[0].read() == b""
        assert time.monotonic() - last_answer > IDLE_TIMEOUT - 1
    finally:
        neighbour[1].transport.abort()
    print(_report("baseline", baseline), _report("flooded", flooded), sep="\n")


# --------------------------------------------------------------------------- gRPC


@pytest.fixture
async def cluster(temporal_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[LocalCluster]:
    local = LocalCluster(
        temporal_env.client, tmp_path, cluster=unique("flood"), encrypt_payloads=False
    )
    await local.start()
    try:
        yield local
    finally:
        await local.close()


@pytest.mark.temporal
async def test_agent_and_gateway_serve_authenticated_clients_through_a_flood(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    name, port = unique("flooded"), free_port()
    gateway_host, gateway_port = cluster.gateway.rsplit(":", 1)
    # The enrollment port, which takes connections without a client certificate, is
    # flooded while a real agent process enrolls through it.
    async with Flood(gateway_host, int(gateway_port), idle=IDLE, slowloris=1, drip=TLS_SLOWLORIS):
        log = tmp_path / "agent.log"
        agent = _spawn(
            [
                sys.executable, "-m", "agent.main", "--name", name, "--zone", "z",
                "--listen", f"127.0.0.1:{port}", "--gateway", cluster.gateway,
                "--state-dir", str(tmp_path / "agent"), "--runtime", "exec",
                "--cpu", "1", "--memory", "1Gi",
                "--grpc-handshake-timeout", str(HEADER_TIMEOUT),
                "--grpc-idle-timeout", str(IDLE_TIMEOUT),
            ],
            log,
            {"CLOUDLESS_TOKEN": cluster.mint_token(name)},
        )  # fmt: skip
        try:
            await cluster.wait_node_ready(name, timeout=60)
        except BaseException:
            _stop(agent)
            raise
    try:
        _assert_raised_open_files(agent.pid)
        material = TLSMaterial.load(cluster.coordinator_dir)

        async def node_info() -> float:
            started = time.monotonic()
            async with secure_channel(f"127.0.0.1:{port}", name, material.ca_pem, material) as ch:
                info = await agent_pb2_grpc.AgentServiceStub(ch).NodeInfo(
                    agent_pb2.NodeInfoRequest(), timeout=BOUND
                )
            assert info.node_id == name
            return time.monotonic() - started

        # The agent's AgentService (mTLS: only the coordinator may call it), flooded from
        # one address, then from another. gRPC has no per-address limit: its bounds are
        # the handshake deadline and the connection cap (far above 1,000).
        for source in ("127.0.0.1", "127.0.0.2"):
            async with Flood(
                "127.0.0.1", port, idle=IDLE, slowloris=1, source=source, drip=TLS_SLOWLORIS
            ) as flood:
                flooded = [await node_info() for _ in range(PROBES)]
                await flood.wait_closed(flood.idle, timeout=HEADER_TIMEOUT + SLACK)
                assert max(h.closed - h.opened for h in flood.idle if h.closed) < (
                    HEADER_TIMEOUT + SLACK
                )
                await flood.wait_slowloris(1, timeout=HEADER_TIMEOUT + SLACK)
                assert all(life < HEADER_TIMEOUT + SLACK for life in flood.slowloris_lifetimes)
            assert max(flooded) < BOUND, _report(f"NodeInfo, flood from {source}", flooded)
        # The agent's own connections were untouched: it heartbeats on, its node Ready.
        node = await CloudlessClient(cluster.client, cluster.cluster).wait_node(name)
        assert node is not None and node.state == NodeState.READY
    finally:
        _stop(agent)
