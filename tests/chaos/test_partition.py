"""A real network partition: one agent lives in its own network namespace behind a veth
link. Taking the link down stalls its heartbeat stream silently (no RST, like a roaming
phone), so only the TTL can notice; its replicas must move, and when the link comes back
the stale copies must be stopped before the node is Ready. Needs root and iproute2."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime.exec import ExecDriver
from cloudless.cli.devstack import port_open, temporal_binary, wait_until
from cloudless.client import CloudlessClient
from cloudless.model import NodeState
from cloudless.pki import CertificateAuthority
from cloudless.temporal import connect
from cloudless.testing.cluster import stop_exec_replicas
from cloudless.testing.workloads import sleeper
from cloudless.tokens import TokenSigner
from cloudless.vocabulary import AdminAction
from tests.conftest import unavailable

pytestmark = pytest.mark.temporal

REPO = Path(__file__).resolve().parents[2]
HOST_IP, NS_IP = "10.231.7.1", "10.231.7.2"  # the test's own veth link, nothing else


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        unavailable("network namespaces need root and iproute2")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"cl-{tag}", f"clh{tag}", f"cln{tag}"
    try:
        sh("ip", "netns", "add", ns)
    except subprocess.CalledProcessError as err:
        unavailable(f"cannot create a network namespace here: {err.stderr!r}")
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{NS_IP}/30", "dev", ns_if)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_if
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - handed to the child for its lifetime
    return subprocess.Popen(
        args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        env={**os.environ, **(env or {})}, start_new_session=True,
    )  # fmt: skip


async def test_partitioned_agent_replicas_move_and_come_back_clean(
    netns: tuple[str, str], tmp_path: Path
) -> None:
    ns, host_if = netns
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    cluster = "part"
    # Below 10,000 and clear of the other stacks (scripts/test runs two processes).
    tport, gport = 9683, 9693
    env = {
        "CLOUDLESS_TEMPORAL_ADDRESS": f"127.0.0.1:{tport}",
        "CLOUDLESS_CLUSTER": cluster,
        "CLOUDLESS_STATE_DIR": str(tmp_path),
        # This test is about partitions, not payload encryption: it runs without transit
        # and says so (the coordinator refuses to start otherwise).
        "CLOUDLESS_INSECURE_PLAINTEXT_PAYLOADS": "1",
    }
    try:
        procs.append(spawn(
            [temporal_binary(), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
             "--port", str(tport), "--log-level", "error"],
            logs / "temporal.log",
        ))  # fmt: skip
        await asyncio.to_thread(wait_until, lambda: port_open(tport), "temporal", 60)
        procs.append(spawn(
            [sys.executable, "-m", "workers.coordinator",
             "--gateway-listen", f"{HOST_IP}:{gport}", "--agent-listen", f"{HOST_IP}:{gport + 1}",
             "--heartbeat-ttl", "3", "--suspect-grace", "1"],
            logs / "coordinator.log", env,
        ))  # fmt: skip
        await asyncio.to_thread(
            wait_until, lambda: port_open(gport, HOST_IP), "coordinator", 60, procs[-1]
        )
        coord = tmp_path / "coordinator"
        signer, ca = TokenSigner.load(coord), CertificateAuthority.load(coord).cert_pem.decode()
        nodes = {"island-1": (ns, NS_IP, 7301, "island"), "home-1": (None, HOST_IP, 7302, "island")}
        for name, (where, ip, port, zone) in nodes.items():
            token, _ = signer.mint(cluster=cluster, ca_pem=ca, node_name=name)
            cmd = [sys.executable, "-m", "agent.main", "--name", name, "--zone", zone,
                   "--cpu", "2", "--memory", "2Gi", "--runtime", "exec",
                   "--listen", f"{ip}:{port}", "--gateway", f"{HOST_IP}:{gport}",
                   "--state-dir", str(tmp_path / "agents" / name)]  # fmt: skip
            if where:
                cmd = ["ip", "netns", "exec", where, *cmd]
            procs.append(spawn(cmd, logs / f"{name}.log", {**env, "CLOUDLESS_TOKEN": token}))
        client = CloudlessClient(await connect(f"127.0.0.1:{tport}", wait=30), cluster)
        for name in nodes:
            node = await client.wait_node(name, [NodeState.READY], timeout=60)
            assert node is not None and node.state == NodeState.READY, (name, node)

        # Everything lands on the island first.
        await client.node_admin("home-1", AdminAction.CORDON)
        outcome = await client.apply(
            sleeper("isle", 3, placement={"zones": ["island"]}), wait=True, timeout=60
        )
        assert outcome.status is not None
        assert {r.node_id for r in outcome.status.replicas} == {"island-1"}
        await client.node_admin("home-1", AdminAction.UNCORDON)

        sh("ip", "link", "set", host_if, "down")  # the partition: silence, no RST
        node = await client.wait_node("island-1", [NodeState.OFFLINE], timeout=30)
        assert node is not None and node.state == NodeState.OFFLINE
        moved = await client.wait(
            "default", "isle", outcome.generation, 60, all_ready=True, avoid_node="island-1"
        )
        assert {r.node_id for r in moved.replicas} == {"home-1"} and moved.ready == 3

        sh("ip", "link", "set", host_if, "up")  # the partition heals
        node = await client.wait_node("island-1", [NodeState.READY], timeout=60)
        assert node is not None and node.state == NodeState.READY
        island = ExecDriver("island-1", tmp_path / "agents" / "island-1")
        stale = [s for s in await island.list() if s.phase.value == "Running"]
        assert stale == []  # stopped before the node was Ready again: nothing runs twice
        home = ExecDriver("home-1", tmp_path / "agents" / "home-1")
        running = {s.replica_id for s in await home.list() if s.phase.value == "Running"}
        assert running == {r.replica_id for r in moved.replicas}
        await client.delete("default", "isle")
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
        for name in ("island-1", "home-1"):
            await stop_exec_replicas(name, tmp_path / "agents" / name)
