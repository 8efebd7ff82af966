"""ExecDriver with real processes (no mocks).

Each test gets its own state dir and node id; a finalizer SIGKILLs every process group a
record in that state dir points at, so a failing test never leaks processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from agent.runtime import ExecDriver
from agent.runtime.base import PortMapping, ReplicaPhase, ReplicaSpec, ReplicaStatus
from agent.runtime.exec import LIMITS_NOT_ENFORCED
from cloudless.errors import RuntimeDriverError

_T = TypeVar("_T")


def _kill_recorded_groups(state_dir: Path) -> None:
    for record_file in state_dir.glob("replicas/*/record.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads(record_file.read_text())["pid"])
            if pid > 1:
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def state_dir(tmp_path: Path) -> Any:
    yield tmp_path
    _kill_recorded_groups(tmp_path)


@pytest.fixture
def node_id() -> str:
    return f"test-node-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def driver(node_id: str, state_dir: Path) -> AsyncIterator[ExecDriver]:
    driver = ExecDriver(node_id, state_dir, settle_seconds=0.2)
    yield driver
    for status in await driver.list():
        await driver.stop(status.replica_id, grace_seconds=0.5)
    await driver.close()


def make_spec(node_id: str, script: str = "echo hi; sleep 30", **overrides: Any) -> ReplicaSpec:
    fields: dict[str, Any] = {
        "replica_id": f"r-{uuid.uuid4().hex[:12]}",
        "namespace": "default",
        "workload": "job",
        "node_id": node_id,
        "image": "ignored",
        "command": ("sh", "-c"),
        "args": (script,),
        "spec_hash": "hash-1",
    }
    fields.update(overrides)
    return ReplicaSpec(**fields)


async def read_logs(driver: ExecDriver, replica_id: str, **kwargs: Any) -> bytes:
    return b"".join([chunk async for chunk in driver.logs(replica_id, **kwargs)])


async def eventually(check: Callable[[], Awaitable[_T | None]]) -> _T:
    """Poll ``check`` until it returns something truthy (processes give no events to await)."""
    async with asyncio.timeout(10):
        while True:
            if result := await check():
                return result
            await asyncio.sleep(0.05)


async def wait_for_output(driver: ExecDriver, replica_id: str, needle: bytes) -> bytes:
    async def output() -> bytes | None:
        data = await read_logs(driver, replica_id)
        return data if needle in data else None

    return await eventually(output)


def group_of(pid: int) -> list[psutil.Process]:
    leader = psutil.Process(pid)
    return [leader, *leader.children(recursive=True)]


async def test_available(driver: ExecDriver) -> None:
    assert await driver.available()


async def test_run_starts_a_process_whose_output_is_logged(
    driver: ExecDriver, state_dir: Path
) -> None:
    spec = make_spec(driver.node_id)
    status = await driver.run(spec)
    assert status.phase is ReplicaPhase.RUNNING
    assert (status.replica_id, status.namespace, status.workload) == (
        spec.replica_id,
        "default",
        "job",
    )
    assert status.started_at is not None
    assert status.message == ""  # no limits asked, nothing to confess
    pid = int(status.runtime_id)
    assert psutil.Process(pid).is_running()
    assert os.getpgid(pid) == pid  # own process group
    assert await wait_for_output(driver, spec.replica_id, b"hi") == b"hi\n"
    assert (state_dir / "replicas" / spec.replica_id / "output.log").read_bytes() == b"hi\n"


async def test_env_is_minimal_and_cwd_is_private(driver: ExecDriver, state_dir: Path) -> None:
    spec = make_spec(
        driver.node_id, command=("env",), args=(), env={"GREETING": "hello"}, spec_hash="e"
    )
    status = await driver.run(spec)
    assert (status.phase, status.exit_code) == (ReplicaPhase.STOPPED, 0)
    names = {
        line.split("=", 1)[0]
        for line in (await read_logs(driver, spec.replica_id)).decode().splitlines()
    }
    assert names == {"PATH", "GREETING"}

    pwd = make_spec(driver.node_id, command=("pwd",), args=())
    await driver.run(pwd)
    output = await wait_for_output(driver, pwd.replica_id, b"\n")
    assert Path(output.decode().strip()) == state_dir / "replicas" / pwd.replica_id / "work"


async def test_working_dir_is_where_the_process_and_its_probes_run(
    driver: ExecDriver, tmp_path: Path
) -> None:
    workdir = tmp_path / "srv app"  # a space: passed as a path, never through a shell
    workdir.mkdir()
    (workdir / "marker").touch()
    spec = make_spec(driver.node_id, command=("pwd",), args=(), working_dir=str(workdir))
    await driver.run(spec)
    output = await wait_for_output(driver, spec.replica_id, b"\n")
    assert output.decode().strip() == str(workdir)
    target = driver.probe_target(spec)
    assert (await target.exec(["test", "-f", "marker"], timeout=5)).ok
    assert not (await target.exec(["test", "-f", "elsewhere"], timeout=5)).ok


async def test_a_missing_working_dir_is_refused_before_anything_is_made(
    driver: ExecDriver, state_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(driver.node_id, working_dir=str(tmp_path / "missing"))
    with pytest.raises(RuntimeDriverError, match="does not exist on this node"):
        await driver.run(spec)
    assert not (state_dir / "replicas" / spec.replica_id).exists()
    assert await driver.list() == []


async def test_a_nul_in_argv_or_env_is_refused_before_anything_is_made(
    driver: ExecDriver, state_dir: Path
) -> None:
    """What the agent's validation refuses, the driver refuses too (a spec from a direct
    caller): a clear error, no process, no files; never a ValueError from subprocess."""
    for spec in (
        make_spec(driver.node_id, args=("echo \0",)),
        make_spec(driver.node_id, env={"A": "b\0"}),
    ):
        with pytest.raises(RuntimeDriverError, match="contains a NUL byte"):
            await driver.run(spec)
        assert not (state_dir / "replicas" / spec.replica_id).exists()
    assert await driver.list() == []


async def test_run_is_idempotent_and_replaces_on_new_hash(driver: ExecDriver) -> None:
    spec = make_spec(driver.node_id)
    statuses = await asyncio.gather(*(driver.run(spec) for _ in range(5)))
    assert {status.runtime_id for status in statuses} == {statuses[0].runtime_id}
    again = await driver.run(spec)
    assert again.runtime_id == statuses[0].runtime_id
    assert again.started_at == statuses[0].started_at

    old = group_of(int(again.runtime_id))
    driver.replace_grace_seconds = 2
    changed = make_spec(
        driver.node_id, "echo new; sleep 30", replica_id=spec.replica_id, spec_hash="hash-2"
    )
    replaced = await driver.run(changed)
    assert replaced.phase is ReplicaPhase.RUNNING
    assert replaced.runtime_id != again.runtime_id
    assert replaced.spec_hash == "hash-2"
    _, alive = psutil.wait_procs(old, timeout=5)
    assert alive == []
    assert await wait_for_output(driver, spec.replica_id, b"new") == b"new\n"
    assert len(await driver.list()) == 1


async def test_stop_kills_the_whole_process_group(driver: ExecDriver, state_dir: Path) -> None:
    spec = make_spec(driver.node_id, "sleep 30 & sleep 30 & wait")
    status = await driver.run(spec)

    async def whole_group() -> list[psutil.Process] | None:
        members = group_of(int(status.runtime_id))
        return members if len(members) >= 3 else None

    group = await eventually(whole_group)

    stopped = await driver.stop(spec.replica_id, grace_seconds=5)
    assert stopped is not None
    assert stopped.phase is ReplicaPhase.STOPPED
    assert stopped.exit_code == 128 + signal.SIGTERM
    _, alive = psutil.wait_procs(group, timeout=5)
    assert alive == []
    assert not (state_dir / "replicas" / spec.replica_id).exists()
    assert await driver.stop(spec.replica_id) is None
    assert await driver.list() == []


async def test_stop_escalates_to_sigkill_after_the_grace(driver: ExecDriver) -> None:
    # Ignored signals survive exec, so neither sh nor sleep can be stopped by SIGTERM.
    spec = make_spec(driver.node_id, "trap '' TERM; sleep 30 & wait")
    status = await driver.run(spec)
    group = group_of(int(status.runtime_id))
    loop = asyncio.get_running_loop()
    began = loop.time()
    stopped = await driver.stop(spec.replica_id, grace_seconds=0.5)
    assert loop.time() - began >= 0.5
    assert stopped is not None
    assert stopped.exit_code == 128 + signal.SIGKILL
    _, alive = psutil.wait_procs(group, timeout=5)
    assert alive == []


async def test_a_new_driver_adopts_running_processes(
    driver: ExecDriver, node_id: str, state_dir: Path
) -> None:
    spec = make_spec(driver.node_id)
    first = await driver.run(spec)
    await driver.close()  # the old agent goes away; its processes do not

    adopter = ExecDriver(node_id, state_dir)
    try:
        [listed] = await adopter.list()
        assert listed.replica_id == spec.replica_id
        assert listed.phase is ReplicaPhase.RUNNING
        assert listed.runtime_id == first.runtime_id
        assert listed.started_at == first.started_at
        assert (await adopter.run(spec)).runtime_id == first.runtime_id  # no restart
        assert await wait_for_output(adopter, spec.replica_id, b"hi") == b"hi\n"

        stranger = ExecDriver(f"other-{node_id}", state_dir)
        assert await stranger.list() == []
        assert await stranger.stop(spec.replica_id) is None
        with pytest.raises(RuntimeDriverError, match="belongs to node"):
            await stranger.run(make_spec(stranger.node_id, replica_id=spec.replica_id))

        group = group_of(int(first.runtime_id))
        stopped = await adopter.stop(spec.replica_id, grace_seconds=5)
        assert stopped is not None
        assert stopped.phase is ReplicaPhase.STOPPED
        _, alive = psutil.wait_procs(group, timeout=5)
        assert alive == []
    finally:
        await adopter.close()


async def test_adopted_process_that_dies_is_stopped_with_unknown_code(
    driver: ExecDriver, node_id: str, state_dir: Path
) -> None:
    spec = make_spec(driver.node_id)
    status = await driver.run(spec)
    await driver.close()
    group = group_of(int(status.runtime_id))
    os.killpg(int(status.runtime_id), signal.SIGKILL)
    psutil.wait_procs(group, timeout=5)

    adopter = ExecDriver(node_id, state_dir)

    async def ended() -> list[ReplicaStatus] | None:
        statuses = await adopter.list()
        return None if statuses[0].phase is ReplicaPhase.RUNNING else statuses

    listed = await eventually(ended)
    assert listed[0].phase is ReplicaPhase.STOPPED
    assert listed[0].exit_code is None
    assert "exit code unknown" in listed[0].message
    # Exited means: start again on the next run.
    rerun = await adopter.run(spec)
    assert rerun.phase is ReplicaPhase.RUNNING
    assert rerun.runtime_id != status.runtime_id
    await adopter.stop(spec.replica_id, grace_seconds=1)


async def test_failing_command_is_failed_with_exit_code(driver: ExecDriver) -> None:
    spec = make_spec(driver.node_id, "echo bad; exit 7")
    status = await driver.run(spec)
    assert (status.phase, status.exit_code) == (ReplicaPhase.FAILED, 7)
    assert "bad" in status.message
    [listed] = await driver.list()
    assert (listed.phase, listed.exit_code) == (ReplicaPhase.FAILED, 7)

    late = make_spec(driver.node_id, "sleep 0.5; exit 4")
    assert (await driver.run(late)).phase is ReplicaPhase.RUNNING

    async def late_ended() -> ReplicaStatus | None:
        by_id = {status.replica_id: status for status in await driver.list()}
        status = by_id[late.replica_id]
        return None if status.phase is ReplicaPhase.RUNNING else status

    ended = await eventually(late_ended)
    assert (ended.phase, ended.exit_code) == (ReplicaPhase.FAILED, 4)


async def test_missing_executable_is_a_clear_error(driver: ExecDriver) -> None:
    spec = make_spec(driver.node_id, command=("/no/such/binary",), args=())
    with pytest.raises(RuntimeDriverError, match="/no/such/binary"):
        await driver.run(spec)
    with pytest.raises(RuntimeDriverError, match="no command"):
        await driver.run(make_spec(driver.node_id, command=(), args=()))


async def test_limits_are_reported_as_not_enforced(driver: ExecDriver) -> None:
    spec = make_spec(
        driver.node_id,
        memory_bytes=64 << 20,
        cpu_millis=100,
        ports=(PortMapping(80, host_port=8080),),
    )
    status = await driver.run(spec)
    assert LIMITS_NOT_ENFORCED in status.message
    assert "ports not mapped" in status.message
    [listed] = await driver.list()
    assert LIMITS_NOT_ENFORCED in listed.message


async def test_logs_tail_and_follow(driver: ExecDriver) -> None:
    spec = make_spec(driver.node_id, "echo a; echo b; sleep 0.5; echo c; sleep 0.5")
    await driver.run(spec)
    async with asyncio.timeout(10):
        followed = await read_logs(driver, spec.replica_id, follow=True)
    assert followed == b"a\nb\nc\n"  # follow ends by itself when the process ends
    assert await read_logs(driver, spec.replica_id, tail=1) == b"c\n"
    assert await read_logs(driver, spec.replica_id, tail=2) == b"b\nc\n"
    assert await read_logs(driver, spec.replica_id, tail=10) == b"a\nb\nc\n"

    spec = make_spec(driver.node_id, "echo x; sleep 30")
    await driver.run(spec)
    seen = b""
    async with asyncio.timeout(10):
        async for chunk in driver.logs(spec.replica_id, follow=True):
            seen += chunk
            if b"x" in seen:
                break
    assert seen == b"x\n"
    with pytest.raises(RuntimeDriverError, match="no replica"):
        await read_logs(driver, "r-unknown")


async def test_stop_reaps_strays_of_an_exited_leader(driver: ExecDriver) -> None:
    spec = make_spec(driver.node_id, "sleep 30 & echo $!")
    status = await driver.run(spec)
    assert (status.phase, status.exit_code) == (ReplicaPhase.STOPPED, 0)
    stray = psutil.Process(int((await wait_for_output(driver, spec.replica_id, b"\n")).strip()))
    assert os.getpgid(stray.pid) == int(status.runtime_id)

    await driver.stop(spec.replica_id, grace_seconds=5)
    _, alive = psutil.wait_procs([stray], timeout=5)
    assert alive == []
