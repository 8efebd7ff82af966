"""Secrets from ``cloudlessctl secrets create`` to a process inside a real container.

Everything real: Temporal dev server, cloudless-transit over HTTP, the coordinator's
SecretsService over mTLS, an agent that mints its own node-bound token (allowed because
the ledger has a replica referencing the secret on that node), Docker. The container
reads the value from its environment and from a file on a tmpfs mount; an update reaches
the file through the heartbeat stream's invalidation; nothing lands on disk.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
from temporalio.testing import WorkflowEnvironment

from agent.runtime.docker import container_name
from cloudless.api import secrets_pb2
from cloudless.client import CloudlessClient
from cloudless.images import BUSYBOX_TAG
from cloudless.secrets.client import SecretsClient
from cloudless.spec import parse_workload
from cloudless.testing.cluster import LocalCluster
from cloudless.testing.transit import transit_server
from tests.conftest import removing_containers

pytestmark = [pytest.mark.temporal, pytest.mark.docker]

VALUE = "pw-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def transit() -> Iterator[Any]:
    with transit_server() as server:
        yield server


@pytest.fixture(scope="module")
async def cluster(
    temporal_env: WorkflowEnvironment, transit: Any, docker_client: Any, busybox_image: str
) -> AsyncIterator[LocalCluster]:
    node = f"sec-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="cl-") as d, removing_containers(docker_client, [node]):
        c = LocalCluster(
            temporal_env.client,
            Path(d),
            cluster=f"d-{uuid.uuid4().hex[:6]}",
            transit=hvac.Client(url=transit.url, token=transit.token),
        )
        await c.start()
        try:
            await c.add_agent(node, cpu="2", memory="2Gi", runtimes=["docker"])
            yield c
        finally:
            await c.close()


def reader(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "cloudless.dev/v1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {
            "replicas": 1,
            "runtime": "docker",
            "container": {
                "image": BUSYBOX_TAG,
                "command": [
                    "sh",
                    "-c",
                    'echo "env=$DB_PASSWORD"; cat /etc/creds/password; echo; sleep 600',
                ],
                "env": [
                    {
                        "name": "DB_PASSWORD",
                        "valueFrom": {
                            "secretKeyRef": {
                                "namespace": "production",
                                "name": "postgres-creds",
                                "key": "DB_PASSWORD",
                                "audience": "backend-api",
                            }
                        },
                    }
                ],
                "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds", "readOnly": True}],
            },
            "volumes": [
                {
                    "name": "creds",
                    "secret": {
                        "namespace": "production",
                        "name": "postgres-creds",
                        "audience": "backend-api",
                        "items": [{"key": "DB_PASSWORD", "path": "password"}],
                    },
                }
            ],
            "resources": {"cpu": "100m", "memory": "32Mi"},
        },
    }


async def until(check: Any, timeout: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out: {what} (last: {result!r})")
        await asyncio.sleep(0.2)


async def test_container_reads_secret_env_and_file_and_sees_updates(
    cluster: LocalCluster, docker_client: Any
) -> None:
    async with SecretsClient.from_dir(cluster.agent_gateway, cluster.root / "admin") as admin:
        await admin.create(
            "production", "postgres-creds", {"DB_PASSWORD": VALUE.encode()}, ["backend-api"]
        )
        client = CloudlessClient(cluster.client, cluster.cluster)
        outcome = await client.apply(parse_workload(reader("db-reader")), wait=True, timeout=60)
        status = await client.wait("apps", "db-reader", outcome.generation, 60, all_ready=True)
        replica = status.replicas[0]
        container = docker_client.containers.get(container_name(replica.replica_id))

        async def logs() -> str:
            return str(await asyncio.to_thread(container.logs), "utf-8")

        text = await until(lambda: _has(logs, VALUE, 2), 30, "the container to print the value")
        assert f"env={VALUE}" in text
        inspect = json.dumps(
            await asyncio.to_thread(lambda: docker_client.api.inspect_container(container.id))
        )
        assert VALUE not in inspect
        mounts = await asyncio.to_thread(container.exec_run, ["cat", "/proc/mounts"])
        assert b"/etc/creds" in mounts.output

        # The node minted its own token, bound to its identity: audited as such.
        entries = await admin.audit(
            secrets_pb2.GetSecretAuditLogRequest(namespace="production", name="postgres-creds")
        )
        actors = {(e.operation, e.actor) for e in entries if e.outcome == "ALLOWED"}
        node_uri = f"cloudless://{cluster.cluster}/node/{replica.node_id}"
        assert ("GENERATE_TOKEN", node_uri) in actors and ("ACCESS", node_uri) in actors

        # An update reaches the mounted file through the heartbeat invalidation.
        await admin.update("production", "postgres-creds", {"DB_PASSWORD": b"rotated"})

        async def file_updated() -> bool:
            out = await asyncio.to_thread(container.exec_run, ["cat", "/etc/creds/password"])
            return bool(out.output == b"rotated")

        await until(file_updated, 15, "the file to show the new value")

        for path in cluster.root.rglob("*"):
            if path.is_file():
                assert VALUE.encode() not in path.read_bytes(), path
        await client.delete("apps", "db-reader")


async def _has(logs: Any, value: str, count: int) -> str | None:
    text: str = await logs()
    return text if text.count(value) >= count else ""  # "" keeps the last output for errors
