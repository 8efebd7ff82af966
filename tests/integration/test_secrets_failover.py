"""Secrets survive a coordinator: with the first coordinator an agent knows stopped for
good, replicas still get their secrets through the second.

Everything real: the Temporal dev server, cloudless-transit, two coordinators on one
Temporal and one state directory (so one CA and one token key, as the production layout
asks), an agent given both agent gateways, the exec runtime.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import hvac
import pytest
from temporalio.testing import WorkflowEnvironment

from agent.secretfs import DEFAULT_SECRETS_ROOT, SecretFiles
from agent.secrets import CoordinatorSecrets, SecretSource, SecretStore
from cloudless.api import secrets_pb2
from cloudless.client import CloudlessClient
from cloudless.secrets.client import SecretsClient
from cloudless.spec import Workload, parse_workload
from cloudless.testing.cluster import LocalCluster, exec_cluster
from cloudless.testing.transit import transit_server
from cloudless.tls import TLSMaterial
from workers.coordinator import Coordinator

pytestmark = pytest.mark.temporal

NAMESPACE, SECRET, AUDIENCE = "apps", "creds", "reader"
SOURCE = SecretSource(NAMESPACE, SECRET, AUDIENCE)


@pytest.fixture
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    with transit_server() as transit:
        async with exec_cluster(
            temporal_env.client,
            "sf",
            suffix=uuid.uuid4().hex[:6],
            transit=hvac.Client(url=transit.url, token=transit.token),
            suspect_grace=10.0,  # an agent restart is no outage
        ) as c:
            yield c
        for name in c.agent_names:  # their replicas are stopped: their secret files go
            shutil.rmtree(DEFAULT_SECRETS_ROOT / name, ignore_errors=True)


def reader(name: str, replicas: int) -> Workload:
    """Sleepers that mount the secret as files (an exec replica finds them through
    ``CLOUDLESS_SECRET_VOLUME_CREDS``)."""
    return parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "replicas": replicas,
                "runtime": "exec",
                "container": {
                    "command": ["sleep"],
                    "args": ["3600"],
                    "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"}],
                },
                "volumes": [
                    {
                        "name": "creds",
                        "secret": {"namespace": NAMESPACE, "name": SECRET, "audience": AUDIENCE},
                    }
                ],
                "resources": {"cpu": "50m", "memory": "8Mi"},
            },
        }
    )


class CountingSecrets(CoordinatorSecrets):
    """The agent's client, counting the tokens it mints."""

    mints = 0

    def GenerateAccessToken(
        self, request: secrets_pb2.GenerateAccessTokenRequest, *, timeout: float | None = None
    ) -> Awaitable[secrets_pb2.GenerateAccessTokenResponse]:
        self.mints += 1
        return super().GenerateAccessToken(request, timeout=timeout)


async def until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    """Await a condition the system makes true (polled: nothing signals it here)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.05)


def projected(node: str, replica_id: str) -> bytes | None:
    """The secret's file as the agent wrote it for one replica (None: not there yet)."""
    path = SecretFiles(DEFAULT_SECRETS_ROOT, node).volume_dir(replica_id, "creds") / "password"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


async def test_replicas_get_their_secret_through_the_second_coordinator(
    cluster: LocalCluster,
) -> None:
    first = cluster.coordinator
    assert isinstance(first, Coordinator)
    second: Coordinator = await cluster.add_coordinator()
    first_gw, second_gw = cluster.agent_gateway, second.agent_listen
    node = f"sf-{uuid.uuid4().hex[:4]}"
    handle = await cluster.add_agent(node, runtimes=["exec"], agent_gateways=[first_gw, second_gw])
    await until(lambda: handle.heartbeat.connected_gateway() == first_gw, "the first stream")
    c = CloudlessClient(cluster.client, cluster.cluster)
    w = f"rd-{uuid.uuid4().hex[:4]}"

    async with SecretsClient.from_dir(second_gw, cluster.root / "admin") as admin:
        await admin.create(NAMESPACE, SECRET, {"password": b"v1"}, [AUDIENCE])
        outcome = await c.apply(reader(w, 1), wait=True, timeout=60)
        status = await c.wait(NAMESPACE, w, outcome.generation, 60, all_ready=True)
        running = status.replicas[0].replica_id
        assert projected(node, running) == b"v1"

        # A client like the agent's, with the node's certificate, asking the first
        # coordinator first: it mints the token there.
        client = CountingSecrets.connect([first_gw, second_gw], TLSMaterial.load(handle.state_dir))
        store = SecretStore(client)
        try:
            assert (await store.get(SOURCE))["password"] == b"v1"
            assert (client.current, client.mints) == (first_gw, 1)

            await cluster.stop_coordinator(first)

            # The first refuses connections now; the second takes the read, and accepts
            # the first's token (one token key per cluster): nothing is minted again.
            store.invalidate(f"{NAMESPACE}/{SECRET}")
            assert (await store.get(SOURCE))["password"] == b"v1"
            assert (client.current, client.mints) == (second_gw, 1)
        finally:
            await store.close()

        # The agent's stream moves to the second coordinator; an update reaches the
        # running replica's file through it (invalidation, then a fetch the first cannot
        # have served) ...
        await until(
            lambda: handle.heartbeat.connected_gateway() == second_gw,
            "the agent's heartbeat to move to the second coordinator",
        )
        await admin.update(NAMESPACE, SECRET, {"password": b"v2"})
        await until(lambda: projected(node, running) == b"v2", "the running replica's file")

        # ... and after an agent restart (no token, nothing cached) a new replica gets the
        # secret at its start: a token minted and read where only the second can answer.
        await cluster.kill_agent(node)
        handle = await cluster.restart_agent(node)
        node_uri = f"cloudless://{cluster.cluster}/node/{node}"
        minted_before = await node_calls(admin, node_uri, "GENERATE_TOKEN")
        scaled = await c.scale(NAMESPACE, w, 2)
        status = await c.wait(NAMESPACE, w, scaled.generation, 60, all_ready=True)
        assert status.ready == 2
        (added,) = {r.replica_id for r in status.replicas} - {running}
        assert projected(node, added) == b"v2"
        assert await node_calls(admin, node_uri, "GENERATE_TOKEN") == minted_before + 1
        await c.delete(NAMESPACE, w)


async def node_calls(admin: SecretsClient, node_uri: str, operation: str) -> int:
    """How many ``operation`` calls of the node the coordinators allowed (audit log)."""
    entries = await admin.audit(
        secrets_pb2.GetSecretAuditLogRequest(namespace=NAMESPACE, name=SECRET)
    )
    return sum(
        e.operation == operation and e.actor == node_uri and e.outcome == "ALLOWED" for e in entries
    )
