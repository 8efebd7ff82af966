"""DockerDriver against the real local engine (no mocks).

Every test labels its containers with a fresh node id and a finalizer force-removes all
containers carrying that label, so a failing test never leaks containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest

from agent.runtime import DockerDriver
from agent.runtime.base import (
    LABEL_MANAGED,
    LABEL_NODE,
    LABEL_SPEC_HASH,
    PortMapping,
    ReplicaPhase,
    ReplicaSpec,
)
from agent.runtime.docker import container_name
from cloudless.errors import RuntimeDriverError
from cloudless.testing.cluster import free_port

pytestmark = pytest.mark.docker

SLEEP = ("sh", "-c")


def _remove_node_containers(client: Any, node_id: str) -> None:
    for container in client.containers.list(
        all=True, filters={"label": f"{LABEL_NODE}={node_id}"}, ignore_removed=True
    ):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


@pytest.fixture
def new_node_id(docker_client: Any) -> Iterator[Callable[[], str]]:
    """Factory of unique node ids whose containers are all removed after the test."""
    issued: list[str] = []

    def make() -> str:
        node_id = f"test-node-{uuid.uuid4().hex[:10]}"
        issued.append(node_id)
        return node_id

    yield make
    for node_id in issued:
        _remove_node_containers(docker_client, node_id)


@pytest.fixture
async def driver(new_node_id: Callable[[], str]) -> AsyncIterator[DockerDriver]:
    driver = DockerDriver(new_node_id(), settle_seconds=0.3)
    yield driver
    await driver.close()


def make_spec(node_id: str, image: str, **overrides: Any) -> ReplicaSpec:
    fields: dict[str, Any] = {
        "replica_id": f"r-{uuid.uuid4().hex[:12]}",
        "namespace": "default",
        "workload": "web",
        "node_id": node_id,
        "image": image,
        "command": SLEEP,
        "args": ("sleep 300",),
        "spec_hash": "hash-1",
    }
    fields.update(overrides)
    return ReplicaSpec(**fields)


@pytest.mark.usefixtures("docker_client")
async def test_available_and_unreachable_engine() -> None:
    here = DockerDriver("n")
    assert await here.available()
    await here.close()
    nowhere = DockerDriver("n", base_url="unix:///nonexistent/docker.sock")
    assert not await nowhere.available()
    with pytest.raises(RuntimeDriverError, match="cannot reach the docker engine"):
        await nowhere.list()


async def test_run_sets_labels_limits_env_command_and_ports(
    driver: DockerDriver, busybox_image: str, docker_client: Any
) -> None:
    port = free_port()
    spec = make_spec(
        driver.node_id,
        busybox_image,
        args=("echo started; sleep 300",),
        env={"GREETING": "hello"},
        cpu_millis=250,
        memory_bytes=64 * 1024 * 1024,
        ports=(PortMapping(8080, host_port=port), PortMapping(9090)),
        labels={"app": "web", LABEL_NODE: "spoofed"},
        generation=3,
    )
    status = await driver.run(spec)

    assert status.phase is ReplicaPhase.RUNNING
    assert (status.replica_id, status.namespace, status.workload) == (
        spec.replica_id,
        "default",
        "web",
    )
    assert status.generation == 3
    assert status.spec_hash == "hash-1"
    assert status.started_at is not None
    attrs = docker_client.containers.get(container_name(spec.replica_id)).attrs
    assert attrs["Id"] == status.runtime_id
    assert attrs["State"]["Status"] == "running"
    labels = attrs["Config"]["Labels"]
    assert labels == spec.managed_labels()
    assert labels[LABEL_NODE] == driver.node_id  # ours win over user labels
    assert labels["app"] == "web"
    host = attrs["HostConfig"]
    assert host["NanoCpus"] == 250_000_000
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["RestartPolicy"]["Name"] in ("", "no")
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    assert "GREETING=hello" in attrs["Config"]["Env"]
    assert attrs["Config"]["Entrypoint"] == ["sh", "-c"]
    assert attrs["Config"]["Cmd"] == ["echo started; sleep 300"]


async def test_args_alone_keep_the_image_entrypoint(
    driver: DockerDriver, busybox_image: str, docker_client: Any
) -> None:
    spec = make_spec(driver.node_id, busybox_image, command=(), args=("sleep", "300"))
    status = await driver.run(spec)
    assert status.phase is ReplicaPhase.RUNNING
    config = docker_client.containers.get(status.runtime_id).attrs["Config"]
    assert not config["Entrypoint"]
    assert config["Cmd"] == ["sleep", "300"]


async def test_run_is_idempotent_and_replaces_on_new_hash(
    driver: DockerDriver, busybox_image: str, docker_client: Any
) -> None:
    spec = make_spec(driver.node_id, busybox_image)
    first = await driver.run(spec)
    again = await driver.run(spec)
    assert again.runtime_id == first.runtime_id
    assert again.started_at == first.started_at  # not restarted

    changed = make_spec(
        driver.node_id, busybox_image, replica_id=spec.replica_id, spec_hash="hash-2"
    )
    replacer = DockerDriver(driver.node_id, replace_grace_seconds=1)
    try:
        replaced = await replacer.run(changed)
    finally:
        await replacer.close()
    assert replaced.phase is ReplicaPhase.RUNNING
    assert replaced.runtime_id != first.runtime_id
    assert replaced.spec_hash == "hash-2"
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(first.runtime_id)
    current = docker_client.containers.get(container_name(spec.replica_id))
    assert current.labels[LABEL_SPEC_HASH] == "hash-2"


async def test_concurrent_runs_create_one_container(
    driver: DockerDriver, busybox_image: str, docker_client: Any
) -> None:
    spec = make_spec(driver.node_id, busybox_image)
    # Two drivers for the same node race through the engine's 409 on the name as well
    # as through the per-replica lock inside each driver.
    other = DockerDriver(driver.node_id, settle_seconds=0.3)
    try:
        statuses = await asyncio.gather(
            *(driver.run(spec) for _ in range(4)), *(other.run(spec) for _ in range(4))
        )
    finally:
        await other.close()
    assert {status.runtime_id for status in statuses} == {statuses[0].runtime_id}
    assert all(status.phase is ReplicaPhase.RUNNING for status in statuses)
    found = docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_NODE}={driver.node_id}"}
    )
    assert [container.id for container in found] == [statuses[0].runtime_id]


async def test_stop_removes_the_container(
    driver: DockerDriver, busybox_image: str, docker_client: Any
) -> None:
    spec = make_spec(driver.node_id, busybox_image)
    started = await driver.run(spec)
    stopped = await driver.stop(spec.replica_id, grace_seconds=1)
    assert stopped is not None
    assert stopped.phase is ReplicaPhase.STOPPED
    assert stopped.runtime_id == started.runtime_id
    assert stopped.exit_code is not None  # sh ignores SIGTERM as PID 1: killed after grace
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(started.runtime_id)
    assert await driver.stop(spec.replica_id) is None
    assert await driver.list() == []


async def test_list_only_shows_this_nodes_containers(
    new_node_id: Callable[[], str], busybox_image: str
) -> None:
    node_a, node_b = DockerDriver(new_node_id()), DockerDriver(new_node_id())
    try:
        spec_a = make_spec(node_a.node_id, busybox_image)
        spec_b = make_spec(node_b.node_id, busybox_image)
        await asyncio.gather(node_a.run(spec_a), node_b.run(spec_b))

        listed_a, listed_b = await asyncio.gather(node_a.list(), node_b.list())
        assert [status.replica_id for status in listed_a] == [spec_a.replica_id]
        assert [status.replica_id for status in listed_b] == [spec_b.replica_id]
        assert listed_a[0].phase is ReplicaPhase.RUNNING
        # Another node's replica is invisible: cannot be stopped, streamed or hijacked.
        assert await node_a.stop(spec_b.replica_id) is None
        with pytest.raises(RuntimeDriverError, match="no replica"):
            _ = [chunk async for chunk in node_a.logs(spec_b.replica_id)]
        hijack = make_spec(node_a.node_id, busybox_image, replica_id=spec_b.replica_id)
        with pytest.raises(RuntimeDriverError, match="refusing"):
            await node_a.run(hijack)
        with pytest.raises(RuntimeDriverError, match="is for node"):
            await node_a.run(spec_b)
    finally:
        await asyncio.gather(node_a.close(), node_b.close())


async def test_container_exiting_at_once_is_failed_with_code_and_logs(
    driver: DockerDriver, busybox_image: str
) -> None:
    spec = make_spec(driver.node_id, busybox_image, args=("echo boom >&2; exit 3",))
    status = await driver.run(spec)
    assert status.phase is ReplicaPhase.FAILED
    assert status.exit_code == 3
    assert "boom" in status.message
    assert "exited with code 3" in status.message

    [listed] = await driver.list()
    assert (listed.phase, listed.exit_code) == (ReplicaPhase.FAILED, 3)

    # An exited replica is removed and started again, even with the same hash.
    rerun = await driver.run(spec)
    assert rerun.runtime_id != status.runtime_id
    assert len(await driver.list()) == 1


async def test_working_dir_reaches_the_container(
    driver: DockerDriver, busybox_image: str, docker_client: Any
) -> None:
    """workingDir replaces the image's WORKDIR (docker creates a missing directory, as
    Kubernetes does); the process and exec probes run there."""
    spec = make_spec(
        driver.node_id, busybox_image, args=("pwd; sleep 300",), working_dir="/srv/app data"
    )
    status = await driver.run(spec)
    assert status.phase is ReplicaPhase.RUNNING
    attrs = docker_client.containers.get(container_name(spec.replica_id)).attrs
    assert attrs["Config"]["WorkingDir"] == "/srv/app data"
    target = driver.probe_target(spec)
    assert (await target.exec(["sh", "-c", '[ "$(pwd)" = "/srv/app data" ]'], timeout=10)).ok
    assert not (await target.exec(["sh", "-c", '[ "$(pwd)" = "/" ]'], timeout=10)).ok
    logs = b"".join([chunk async for chunk in driver.logs(spec.replica_id)])
    assert logs.decode().splitlines()[0] == "/srv/app data"


async def test_without_working_dir_the_image_workdir_stays(
    driver: DockerDriver, busybox_image: str, docker_client: Any
) -> None:
    spec = make_spec(driver.node_id, busybox_image)
    await driver.run(spec)
    attrs = docker_client.containers.get(container_name(spec.replica_id)).attrs
    image_workdir = docker_client.images.get(busybox_image).attrs["Config"].get("WorkingDir")
    assert attrs["Config"]["WorkingDir"] == (image_workdir or "")


async def test_clean_exit_is_stopped(driver: DockerDriver, busybox_image: str) -> None:
    status = await driver.run(make_spec(driver.node_id, busybox_image, args=("true",)))
    assert (status.phase, status.exit_code) == (ReplicaPhase.STOPPED, 0)


async def test_missing_executable_reports_failed_with_reason(
    driver: DockerDriver, busybox_image: str
) -> None:
    # With the init process as PID 1 the exec failure happens inside the container, so it
    # surfaces as a Failed replica (exit 127) carrying the init's complaint.
    spec = make_spec(driver.node_id, busybox_image, command=("/no/such/binary",), args=())
    status = await driver.run(spec)
    assert status.phase == ReplicaPhase.FAILED
    assert status.exit_code == 127
    assert "no/such/binary" in status.message


async def test_logs_read_tail_and_follow(driver: DockerDriver, busybox_image: str) -> None:
    spec = make_spec(
        driver.node_id,
        busybox_image,
        args=("echo one; echo two; sleep 1; echo three; sleep 300",),
    )
    await driver.run(spec)

    async def read(**kwargs: Any) -> bytes:
        return b"".join([chunk async for chunk in driver.logs(spec.replica_id, **kwargs)])

    assert await read() == b"one\ntwo\n"
    assert await read(tail=1) == b"two\n"

    seen = b""
    async with asyncio.timeout(20):
        async for chunk in driver.logs(spec.replica_id, follow=True):
            seen += chunk
            if b"three" in seen:
                break
    assert seen == b"one\ntwo\nthree\n"

    # The reader thread ends once the consumer has gone away.
    async with asyncio.timeout(10):
        while True:
            if not any(t.name == f"logs-{spec.replica_id}" for t in threading.enumerate()):
                break
            await asyncio.sleep(0.05)

    # Following a container that exits ends the stream by itself.
    short = make_spec(driver.node_id, busybox_image, args=("sleep 1; echo bye",))
    await driver.run(short)
    async with asyncio.timeout(20):
        followed = b"".join([c async for c in driver.logs(short.replica_id, follow=True)])
    assert followed == b"bye\n"


async def test_missing_image_is_a_clear_error(driver: DockerDriver) -> None:
    spec = make_spec(driver.node_id, "cloudless/does-not-exist:never")
    with pytest.raises(RuntimeDriverError, match="not present on this node") as info:
        await driver.run(spec)
    assert "no registry pull was possible" in str(info.value)
    assert await driver.list() == []


async def test_unmanaged_container_with_the_name_is_left_alone(
    driver: DockerDriver, busybox_image: str, docker_client: Any
) -> None:
    spec = make_spec(driver.node_id, busybox_image)
    squatter = docker_client.containers.create(
        busybox_image, name=container_name(spec.replica_id), command=["true"]
    )
    try:
        with pytest.raises(RuntimeDriverError, match="unmanaged"):
            await driver.run(spec)
        squatter.reload()
        assert LABEL_MANAGED not in (squatter.labels or {})
    finally:
        squatter.remove(force=True)
