"""Probes end to end on the agent: real Docker containers and real processes, the real
supervisor loop, readiness as the wire (ListReplicas/heartbeat) status reports it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.runtime.base import PortMapping, ProbeSpec, ReplicaPhase, ReplicaSpec, ReplicaStatus
from agent.runtime.docker import DockerDriver, container_name
from agent.runtime.exec import ExecDriver
from agent.server import status_to_proto
from agent.supervisor import Supervisor
from cloudless.api import agent_pb2
from cloudless.testing.cluster import free_port
from tests.conftest import removing_containers

pytestmark = pytest.mark.docker

_T = TypeVar("_T")


def fast(action: str, **kw: Any) -> ProbeSpec:
    """A probe every 0.2 s, so verdicts come within a second."""
    return ProbeSpec(action, period=0.2, timeout=1.0, **kw)


async def eventually(check: Callable[[], Awaitable[_T | None]], timeout: float = 20) -> _T:
    """Poll ``check`` until it returns something truthy (probe verdicts emit no events)."""
    async with asyncio.timeout(timeout):
        while True:
            if result := await check():
                return result
            await asyncio.sleep(0.05)


class Agent:
    """A driver and a running supervisor loop, as the agent process wires them."""

    def __init__(self, runtime: str, driver: Any, state_dir: Path) -> None:
        self.runtime = runtime
        self.driver = driver
        self.supervisor = Supervisor(state_dir, {runtime: driver}, interval=0.1, kill_grace=1.0)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Agent:
        self._task = asyncio.create_task(self.supervisor.run(self._stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        for status in await self.driver.list():
            await self.driver.stop(status.replica_id, 1.0)
        await self.driver.close()

    async def run(self, spec: ReplicaSpec, policy: str = "Always") -> ReplicaStatus:
        status: ReplicaStatus = await self.driver.run(spec)
        assert status.phase == ReplicaPhase.RUNNING, status.message
        self.supervisor.want(self.runtime, policy, spec, status)
        return status

    async def wire(self, replica_id: str) -> agent_pb2.ReplicaStatus | None:
        """The replica's status exactly as ListReplicas and heartbeats report it."""
        for status in await self.driver.list():
            if status.replica_id == replica_id:
                return status_to_proto(status, self.runtime, "n", self.supervisor)
        return None

    async def until(
        self, replica_id: str, pred: Callable[[agent_pb2.ReplicaStatus], bool], timeout: float = 20
    ) -> agent_pb2.ReplicaStatus:
        async def check() -> agent_pb2.ReplicaStatus | None:
            wire = await self.wire(replica_id)
            return wire if wire is not None and pred(wire) else None

        return await eventually(check, timeout)


@pytest.fixture
async def docker_agent(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> AsyncIterator[Agent]:
    node = f"probe-{uuid.uuid4().hex[:6]}"
    with removing_containers(docker_client, [node]):
        async with Agent("docker", DockerDriver(node, settle_seconds=0.2), tmp_path) as agent:
            yield agent


def docker_spec(agent: Agent, script: str, **kw: Any) -> ReplicaSpec:
    return ReplicaSpec(
        replica_id=f"probe-{uuid.uuid4().hex[:8]}",
        namespace="default",
        workload="probed",
        node_id=agent.driver.node_id,
        image="cloudless/busybox:latest",
        command=("sh", "-c"),
        args=(script,),
        spec_hash="h1",
        **kw,
    )


def docker_exec(docker_client: Any, replica_id: str, *argv: str) -> None:
    result = docker_client.containers.get(container_name(replica_id)).exec_run(list(argv))
    assert result.exit_code == 0, result.output


async def test_http_readiness_flips_when_the_served_file_appears(
    docker_agent: Agent, docker_client: Any
) -> None:
    spec = docker_spec(
        docker_agent,
        "mkdir -p /www && exec httpd -f -p 8080 -h /www",
        readiness_probe=fast("http", port=8080, path="/ready.html"),
    )
    await docker_agent.run(spec)
    waiting = await docker_agent.until(spec.replica_id, lambda w: "404" in w.ready_message)
    assert waiting.phase == "Running" and not waiting.ready and waiting.readiness_gated
    assert waiting.ready_message.startswith("readiness probe failed: GET http://")
    assert waiting.ready_message.endswith(":8080/ready.html: HTTP status 404")
    docker_exec(docker_client, spec.replica_id, "sh", "-c", "echo ok > /www/ready.html")
    ready = await docker_agent.until(spec.replica_id, lambda w: w.ready)
    assert ready.ready_message == "" and ready.restarts == 0
    docker_exec(docker_client, spec.replica_id, "rm", "/www/ready.html")
    gone = await docker_agent.until(spec.replica_id, lambda w: not w.ready)
    assert "HTTP status 404" in gone.ready_message and gone.phase == "Running"


async def test_failing_exec_liveness_restarts_with_the_reason_recorded(
    docker_agent: Agent, docker_client: Any
) -> None:
    spec = docker_spec(
        docker_agent,
        "mkdir -p /tmp && touch /tmp/healthy && exec sleep 3600",
        liveness_probe=fast("exec", command=("cat", "/tmp/healthy"), failure_threshold=2),
    )
    first = await docker_agent.run(spec)
    before = await docker_agent.until(spec.replica_id, lambda w: w.ready)
    assert before.restarts == 0 and not before.readiness_gated  # liveness does not gate
    docker_exec(docker_client, spec.replica_id, "rm", "/tmp/healthy")
    after = await docker_agent.until(
        spec.replica_id, lambda w: w.restarts >= 1 and w.phase == "Running"
    )
    assert after.runtime_id != first.runtime_id  # a new container
    assert after.restart_reason.startswith(
        "liveness probe failed: exec 'cat /tmp/healthy' exited with 1"
    )
    assert "(2 consecutive failures)" in after.restart_reason
    # The new run has its file again: it stays up and is probed afresh.
    await asyncio.sleep(1.0)  # several probe periods: a wrongly kept verdict would kill it
    still = await docker_agent.wire(spec.replica_id)
    assert still is not None and still.restarts == after.restarts and still.ready


async def test_liveness_failure_with_restart_policy_never_is_terminal(
    docker_agent: Agent,
) -> None:
    spec = docker_spec(
        docker_agent,
        "exec sleep 3600",
        liveness_probe=fast("exec", command=("false",), failure_threshold=1),
    )
    await docker_agent.run(spec, policy="Never")
    exited = await docker_agent.until(spec.replica_id, lambda w: w.terminal)
    assert exited.phase == "Failed" and exited.restarts == 0 and not exited.ready
    assert exited.message.startswith("liveness probe failed: exec 'false' exited with 1")


async def test_tcp_probes_reach_the_container_not_the_port_proxy(docker_agent: Agent) -> None:
    """Readiness over TCP flips once the server listens, although the port is published
    (Docker's proxy would accept on the host port before that)."""
    spec = docker_spec(
        docker_agent,
        "sleep 1.5; exec httpd -f -p 8080",
        ports=(PortMapping(8080, "TCP", free_port()),),
        readiness_probe=fast("tcp", port=8080),
        startup_probe=fast("tcp", port=8080, failure_threshold=50),
    )
    await docker_agent.run(spec)
    early = await docker_agent.wire(spec.replica_id)
    assert early is not None and not early.ready
    assert early.ready_message.startswith(("waiting for", "startup probe failed: TCP"))
    ready = await docker_agent.until(spec.replica_id, lambda w: w.ready)
    assert ready.restarts == 0


# ------------------------------------------------------------------------------ exec runtime


@pytest.fixture
async def exec_agent(tmp_path: Path) -> AsyncIterator[Agent]:
    node = f"probe-{uuid.uuid4().hex[:6]}"
    async with Agent("exec", ExecDriver(node, tmp_path, settle_seconds=0.2), tmp_path) as agent:
        yield agent


async def test_exec_runtime_probes_http_and_exec_with_the_replica_env(
    exec_agent: Agent, tmp_path: Path
) -> None:
    port = free_port()
    www = tmp_path / "www"
    www.mkdir()
    spec = ReplicaSpec(
        replica_id=f"probe-{uuid.uuid4().hex[:8]}",
        namespace="default",
        workload="probed",
        node_id=exec_agent.driver.node_id,
        image="",
        command=("sh", "-c"),
        args=(f'touch "$MARK"; exec busybox httpd -f -p 127.0.0.1:{port} -h {www}',),
        env={"MARK": "alive"},  # relative: in the replica's working directory
        spec_hash="h1",
        readiness_probe=fast("http", port=port, path="/index.html"),
        liveness_probe=fast("exec", command=("sh", "-c", 'test -f "$MARK"'), failure_threshold=2),
    )
    first = await exec_agent.run(spec)
    waiting = await exec_agent.until(spec.replica_id, lambda w: "404" in w.ready_message)
    assert not waiting.ready
    (www / "index.html").write_text("ok")
    await exec_agent.until(spec.replica_id, lambda w: w.ready)
    workdir = tmp_path / "replicas" / spec.replica_id / "work"
    (workdir / "alive").unlink()
    after = await exec_agent.until(
        spec.replica_id, lambda w: w.restarts >= 1 and w.phase == "Running"
    )
    assert after.runtime_id != first.runtime_id  # a new process
    assert after.restart_reason.startswith("liveness probe failed: exec 'sh -c test -f \"$MARK\"'")
    await exec_agent.until(spec.replica_id, lambda w: w.ready)


async def test_exec_runtime_tcp_probe(exec_agent: Agent) -> None:
    port = free_port()
    spec = ReplicaSpec(
        replica_id=f"probe-{uuid.uuid4().hex[:8]}",
        namespace="default",
        workload="probed",
        node_id=exec_agent.driver.node_id,
        image="",
        command=("sh", "-c"),
        args=(f"sleep 1; exec busybox nc -ll -p {port} -e true",),
        spec_hash="h1",
        readiness_probe=fast("tcp", port=port),
    )
    await exec_agent.run(spec)
    early = await exec_agent.wire(spec.replica_id)
    assert early is not None and not early.ready
    ready = await exec_agent.until(spec.replica_id, lambda w: w.ready)
    assert ready.readiness_gated


async def test_stopping_a_replica_stops_its_prober(exec_agent: Agent) -> None:
    spec = ReplicaSpec(
        replica_id=f"probe-{uuid.uuid4().hex[:8]}",
        namespace="default",
        workload="probed",
        node_id=exec_agent.driver.node_id,
        image="",
        command=("sleep", "60"),
        spec_hash="h1",
        liveness_probe=fast("exec", command=("true",)),
    )
    await exec_agent.run(spec)
    probing = exec_agent.supervisor._probing[spec.replica_id]
    exec_agent.supervisor.forget(spec.replica_id)
    await exec_agent.driver.stop(spec.replica_id, 1.0)
    with contextlib.suppress(asyncio.CancelledError):
        await probing.task
    assert probing.task.cancelled() and spec.replica_id not in exec_agent.supervisor._probing


async def test_liveness_kills_count_as_crashes_for_the_backoff(
    exec_agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica whose liveness always fails is restarted with the crash backoff (no wait,
    then 1 s, then 2 s, ...), not in a tight loop."""
    spec = ReplicaSpec(
        replica_id=f"probe-{uuid.uuid4().hex[:8]}",
        namespace="default",
        workload="probed",
        node_id=exec_agent.driver.node_id,
        image="",
        command=("sleep", "60"),
        spec_hash="h1",
        liveness_probe=fast("exec", command=("false",), failure_threshold=1),
    )
    await exec_agent.run(spec)
    # Each restart is timed as the supervisor makes it, on the clock it schedules by (not
    # when a status poll happens to see it: that lag ate into the margin below).
    loop = asyncio.get_running_loop()
    restarted_at: list[float] = []
    run = exec_agent.driver.run

    async def timed_run(spec: ReplicaSpec) -> ReplicaStatus:
        restarted_at.append(loop.time())
        status: ReplicaStatus = await run(spec)
        return status

    monkeypatch.setattr(exec_agent.driver, "run", timed_run)
    wire = await exec_agent.until(spec.replica_id, lambda w: w.restarts >= 3)
    assert wire.restart_reason.startswith("liveness probe failed: exec 'false' exited with 1")
    # Restart 1 comes at once, then the backoff waits 1 s before restart 2 and 2 s before 3
    # (each counted from a tick after the previous restart: at least 3 s, exactly; the
    # 1e-6 is for the rounding of monotonic-clock sums, not for scheduling noise).
    assert restarted_at[2] - restarted_at[0] >= 3.0 - 1e-6, restarted_at
    assert exec_agent.supervisor._desired[spec.replica_id].failures >= 2
