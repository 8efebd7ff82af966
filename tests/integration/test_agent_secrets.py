"""Secret delivery end to end: a real agent, real Docker, real gRPC over mutual TLS.

The coordinator side is a small fake (``FakeCoordinator``) serving ``SecretsService`` and
``GatewayService.Heartbeat`` on one mTLS port, the way the real coordinator's agent port
does. It checks the caller's node certificate, mints opaque tokens, counts calls and can
push ``invalidated_secrets`` on the heartbeat stream. The agent is the real
``agent.main.serve`` on a pre-enrolled state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from agent.enroll import GATEWAY_SERVER_NAME, NODE_FILE
from agent.main import serve
from agent.runtime.base import SECRET_VOLUME_ENV_PREFIX
from agent.secretfs import filesystem_type
from cloudless import tls
from cloudless.api import (
    agent_pb2,
    agent_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    secrets_pb2,
    secrets_pb2_grpc,
)
from cloudless.pki import CertificateAuthority, Identity, write_private_file
from cloudless.testing.cluster import free_port
from cloudless.tls import CA_FILE, CERT_FILE, KEY_FILE, TLSMaterial, peer_identity
from tests.conftest import removing_containers, unavailable

pytestmark = pytest.mark.docker

SECRET = "prod/db"
PASSWORD = 'pa55-w0rd\'with "quotes" $and `stuff`'
ROTATED = "rotated-Xq9-value"
Context = grpc.aio.ServicerContext[Any, Any]


# ---------------------------------------------------------------------------- fake coordinator


@dataclass
class FakeCoordinator(
    secrets_pb2_grpc.SecretsServiceServicer, gateway_pb2_grpc.GatewayServiceServicer
):
    """SecretsService as a node sees it, plus a heartbeat stream that can invalidate."""

    cluster: str
    node: str
    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    #: (secret, audience) pairs this node may mint tokens for (the node-authorizer rule).
    grants: set[tuple[str, str]] = field(default_factory=set)
    calls: Counter[str] = field(default_factory=Counter)
    tokens: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    pending_invalidations: list[str] = field(default_factory=list)
    token_ttl: float = 600.0
    cache_ttl: float = 300.0

    async def _node(self, context: Context) -> str:
        ident = peer_identity(context)
        if ident is None or ident.role != "node" or ident.cluster != self.cluster:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "node certificate required")
        assert ident is not None
        return ident.name

    async def GenerateAccessToken(
        self, request: secrets_pb2.GenerateAccessTokenRequest, context: Context
    ) -> secrets_pb2.GenerateAccessTokenResponse:
        self.calls["GenerateAccessToken"] += 1
        node = await self._node(context)
        secret = f"{request.namespace}/{request.name}"
        if node != self.node or (secret, request.audience) not in self.grants:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {node} runs no replica that references {secret} for audience "
                f"{request.audience!r}",
            )
        token = uuid.uuid4().hex
        expires = time.time() + min(request.ttl_seconds or 3600, self.token_ttl)
        self.tokens[token] = (secret, request.audience, expires)
        return secrets_pb2.GenerateAccessTokenResponse(
            token=token, token_id=token[:8], expires_at=expires
        )

    async def GetSecret(
        self, request: secrets_pb2.GetSecretRequest, context: Context
    ) -> secrets_pb2.GetSecretResponse:
        self.calls["GetSecret"] += 1
        await self._node(context)
        secret = f"{request.namespace}/{request.name}"
        scope, _audience, expires = self.tokens.get(request.token, ("", "", 0.0))
        if scope != secret or expires < time.time():
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "invalid token")
        if secret not in self.secrets:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"secret {secret} does not exist")
        return secrets_pb2.GetSecretResponse(
            metadata=secrets_pb2.SecretMetadata(namespace=request.namespace, name=request.name),
            data=self.secrets[secret],
            cache_ttl_seconds=min(self.cache_ttl, expires - time.time()),
        )

    async def Heartbeat(
        self,
        request_iterator: AsyncIterator[gateway_pb2.HeartbeatRequest],
        context: Context,
    ) -> AsyncIterator[gateway_pb2.HeartbeatResponse]:
        await self._node(context)
        async for beat in request_iterator:
            invalidated, self.pending_invalidations = self.pending_invalidations, []
            yield gateway_pb2.HeartbeatResponse(
                seq=beat.seq, interval_seconds=0.2, invalidated_secrets=invalidated
            )

    def update(self, secret: str, data: dict[str, bytes]) -> None:
        """What an UpdateSecret does as far as agents can tell."""
        self.secrets[secret] = data
        self.pending_invalidations.append(secret)


# ---------------------------------------------------------------------------- the setup


@dataclass
class Setup:
    fake: FakeCoordinator
    node: str
    address: str
    state_dir: Path
    secrets_dir: Path
    coordinator: TLSMaterial
    restart: Callable[[], Awaitable[None]]

    async def run(self, spec: agent_pb2.ReplicaSpec) -> agent_pb2.ReplicaStatus:
        async with tls.secure_channel(
            self.address, self.node, self.coordinator.ca_pem, self.coordinator
        ) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            response = await stub.RunReplica(agent_pb2.RunReplicaRequest(spec=spec), timeout=60)
        status: agent_pb2.ReplicaStatus = response.status
        return status

    async def stop(self, replica_id: str) -> None:
        async with tls.secure_channel(
            self.address, self.node, self.coordinator.ca_pem, self.coordinator
        ) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            await stub.StopReplica(
                agent_pb2.StopReplicaRequest(replica_id=replica_id, grace_seconds=1), timeout=30
            )


def write_enrolled_state(ca: CertificateAuthority, node: str, state: Path, gateway: str) -> None:
    """What a successful enrollment leaves behind, without a Temporal cluster."""
    state.mkdir(parents=True, mode=0o700)
    key, cert = ca.issue(Identity(ca.cluster, "node", node), dns_names=[node])
    write_private_file(state / KEY_FILE, key)
    (state / CERT_FILE).write_bytes(cert)
    (state / CA_FILE).write_bytes(ca.cert_pem)
    node_info = {"node_id": node, "cluster": ca.cluster, "agent_gateway": gateway}
    (state / NODE_FILE).write_text(json.dumps(node_info))


@pytest.fixture(scope="module")
async def setup(
    docker_client: Any, busybox_image: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Setup]:
    if not Path("/bin/busybox").is_file():
        unavailable("no static /bin/busybox to load secret env vars in containers")
    if filesystem_type("/dev/shm", Path("/proc/self/mountinfo").read_text()) != "tmpfs":
        unavailable("/dev/shm is not a tmpfs on this machine")
    root = tmp_path_factory.mktemp("secrets")
    suffix = uuid.uuid4().hex[:6]
    cluster, node = f"c-{suffix}", f"node-{suffix}"
    ca = CertificateAuthority.bootstrap(root / "ca", cluster)
    key, cert = ca.issue(Identity(cluster, "coordinator", "coord"), dns_names=[GATEWAY_SERVER_NAME])
    coordinator = TLSMaterial(key, cert, ca.cert_pem)
    fake = FakeCoordinator(cluster, node, secrets={SECRET: {"password": PASSWORD.encode()}})
    fake.grants.add((SECRET, "api"))
    server = tls.server()
    secrets_pb2_grpc.add_SecretsServiceServicer_to_server(fake, server)
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(fake, server)
    gateway = f"127.0.0.1:{free_port()}"
    server.add_secure_port(gateway, tls.server_credentials(coordinator, require_client_auth=True))
    await server.start()

    state_dir = root / "agent"
    write_enrolled_state(ca, node, state_dir, gateway)
    secrets_dir = Path(f"/dev/shm/cloudless-test-{suffix}")
    address = f"127.0.0.1:{free_port()}"
    running: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}

    async def start() -> None:
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            serve(
                name=node,
                zone="z",
                listen=address,
                advertise=address,
                gateway=gateway,
                token=None,
                state_dir=state_dir,
                cpu_millis=2000,
                memory_bytes=2**31,
                storage_bytes=2**33,
                labels={},
                runtimes=None,
                docker_url=None,
                ready=ready,
                stop=stop,
                heartbeat_interval=0.2,
                secrets_dir=secrets_dir,
            )
        )
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        running["agent"] = (task, stop)

    async def shutdown() -> None:
        task, stop = running.pop("agent")
        stop.set()
        await asyncio.wait_for(task, timeout=30)

    async def restart() -> None:
        await shutdown()
        await start()

    with removing_containers(docker_client, [node]):
        await start()
        try:
            yield Setup(fake, node, address, state_dir, secrets_dir, coordinator, restart)
        finally:
            await shutdown()
            await server.stop(grace=None)
            shutil.rmtree(secrets_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- helpers


def replica(runtime: str, command: list[str], audience: str = "api") -> agent_pb2.ReplicaSpec:
    rid = f"{runtime}-{uuid.uuid4().hex[:8]}"
    return agent_pb2.ReplicaSpec(
        replica_id=rid,
        namespace="default",
        workload="api",
        runtime=runtime,
        image="cloudless/busybox:latest" if runtime == "docker" else "",
        command=command,
        generation=1,
        spec_hash="h1",
        secret_env=[
            agent_pb2.SecretEnvVar(
                name="DB_PASSWORD",
                ref=agent_pb2.SecretKeySelector(
                    namespace="prod", name="db", key="password", audience=audience
                ),
            )
        ],
        secret_volumes=[
            agent_pb2.SecretVolume(
                volume_name="creds",
                mount_path="/etc/creds",
                namespace="prod",
                name="db",
                audience=audience,
                files=[agent_pb2.SecretFile(key="password", path="password")],
            )
        ],
    )


async def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.1)


def files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            with contextlib.suppress(OSError):
                if needle in path.read_bytes():
                    found.append(path)
    return found


def on_memory_fs(path: str) -> bool:
    mountinfo = Path("/proc/self/mountinfo").read_text()
    return filesystem_type(os.path.realpath(path), mountinfo) in {"tmpfs", "ramfs"}


DOCKER_COMMAND = [
    "sh",
    "-c",
    'echo "env=$DB_PASSWORD"; echo "file=$(cat /etc/creds/password)"; exec sleep 600',
]


# ---------------------------------------------------------------------------- docker


async def test_docker_replica_reads_secret_env_and_file_and_no_value_reaches_disk(
    setup: Setup, docker_client: Any
) -> None:
    spec = replica("docker", DOCKER_COMMAND)
    status = await setup.run(spec)
    assert status.phase == "Running", status.message
    container = docker_client.containers.get(f"cloudless-{spec.replica_id}")

    logs = await eventually(lambda: "file=" in (text := container.logs().decode()) and text)
    assert f"env={PASSWORD}\n" in logs and f"file={PASSWORD}\n" in logs

    # Not in the container's config, nor in what dockerd persisted of it.
    container.reload()
    assert PASSWORD not in json.dumps(container.attrs)
    assert "DB_PASSWORD" not in json.dumps(container.attrs["Config"]["Env"] or [])
    engine_dir = Path("/var/lib/docker/containers") / container.id
    for name in ("config.v2.json", "hostconfig.json"):
        with contextlib.suppress(PermissionError, FileNotFoundError):
            assert PASSWORD.encode() not in (engine_dir / name).read_bytes()
    # Not anywhere the agent persists state.
    assert files_containing(setup.state_dir, PASSWORD.encode()) == []

    # The files behind the read-only mounts are on tmpfs, private, read-only.
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    creds = mounts["/etc/creds"]
    assert creds["RW"] is False and on_memory_fs(creds["Source"])
    password = Path(creds["Source"]) / "password"
    assert stat.S_IMODE(password.stat().st_mode) == 0o400
    assert mounts["/.cloudless/env"]["RW"] is False
    assert on_memory_fs(mounts["/.cloudless/env"]["Source"])
    replica_dir = setup.secrets_dir / setup.node / spec.replica_id
    assert stat.S_IMODE(replica_dir.stat().st_mode) == 0o700
    assert files_containing(setup.secrets_dir, PASSWORD.encode())  # ... and only there

    await setup.stop(spec.replica_id)
    assert not replica_dir.exists()


async def test_second_replica_is_served_from_the_cache(setup: Setup) -> None:
    first = replica("docker", DOCKER_COMMAND)
    await setup.run(first)
    before = Counter(setup.fake.calls)
    second = replica("docker", DOCKER_COMMAND)
    status = await setup.run(second)
    assert status.phase == "Running"
    assert setup.fake.calls == before  # no token minted, no secret read
    for spec in (first, second):
        await setup.stop(spec.replica_id)


async def test_invalidation_on_the_heartbeat_rewrites_mounted_files(
    setup: Setup, docker_client: Any
) -> None:
    spec = replica("docker", DOCKER_COMMAND)
    await setup.run(spec)
    container = docker_client.containers.get(f"cloudless-{spec.replica_id}")

    def inside() -> str:
        return str(container.exec_run(["cat", "/etc/creds/password"]).output.decode())

    assert inside() == PASSWORD
    reads = setup.fake.calls["GetSecret"]
    setup.fake.update(SECRET, {"password": ROTATED.encode()})
    await eventually(lambda: inside() == ROTATED)
    assert setup.fake.calls["GetSecret"] == reads + 1
    # Env vars keep their value until the replica restarts, as in Kubernetes.
    script = "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep ^DB_PASSWORD="
    environ = container.exec_run(["sh", "-c", script]).output.decode()
    assert f"DB_PASSWORD={PASSWORD}\n" in environ and ROTATED not in environ
    await setup.stop(spec.replica_id)
    setup.fake.secrets[SECRET] = {"password": PASSWORD.encode()}
    setup.fake.update(SECRET, setup.fake.secrets[SECRET])


async def test_restarted_agent_fetches_again_before_restarting_a_replica(
    setup: Setup, docker_client: Any
) -> None:
    spec = replica("docker", DOCKER_COMMAND)
    await setup.run(spec)
    name = f"cloudless-{spec.replica_id}"
    await setup.restart()  # empty cache; desired.json holds references only
    assert files_containing(setup.state_dir, PASSWORD.encode()) == []
    reads = setup.fake.calls["GetSecret"]
    old = docker_client.containers.get(name)
    old.kill()

    def restarted() -> Any:
        with contextlib.suppress(Exception):
            new = docker_client.containers.get(name)
            if new.id != old.id and new.status == "running" and "file=" in new.logs().decode():
                return new
        return None

    new = await eventually(restarted, timeout=30)
    assert f"env={PASSWORD}" in new.logs().decode()
    assert setup.fake.calls["GetSecret"] > reads
    await setup.stop(spec.replica_id)


async def test_denied_audience_is_a_failed_precondition_naming_secret_and_reason(
    setup: Setup,
) -> None:
    spec = replica("docker", DOCKER_COMMAND, audience="not-granted")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await setup.run(spec)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = caught.value.details() or ""
    assert "secret prod/db (audience 'not-granted')" in details
    assert "permission denied" in details


# ---------------------------------------------------------------------------- exec


async def test_exec_replica_gets_env_and_a_tmpfs_directory(setup: Setup) -> None:
    spec = replica("exec", ["sh", "-c", "exec sleep 600"])
    status = await setup.run(spec)
    assert status.phase == "Running", status.message
    environ = psutil.Process(int(status.runtime_id)).environ()
    assert environ["DB_PASSWORD"] == PASSWORD
    directory = Path(environ[f"{SECRET_VOLUME_ENV_PREFIX}CREDS"])
    assert (directory / "password").read_text() == PASSWORD
    assert on_memory_fs(str(directory))
    assert files_containing(setup.state_dir, PASSWORD.encode()) == []
    await setup.stop(spec.replica_id)
    assert not directory.exists()
