"""Agent autonomy: replicas that exit are restarted per restart policy by the agent alone,
and a restarted agent still knows what it was asked to run."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from pathlib import Path

import pytest

from agent.runtime.base import ReplicaPhase, ReplicaSpec
from agent.runtime.exec import ExecDriver
from agent.supervisor import BACKOFF_MAX, Supervisor


def spec(rid: str, node: str, script: str) -> ReplicaSpec:
    return ReplicaSpec(
        replica_id=rid,
        namespace="default",
        workload="auto",
        node_id=node,
        image="",
        command=("sh", "-c"),
        args=(script,),
        spec_hash="h",
    )


async def _pid(driver: ExecDriver, rid: str) -> int:
    (status,) = [s for s in await driver.list() if s.replica_id == rid]
    return int(status.runtime_id)


@pytest.mark.parametrize(
    ("policy", "exit_code", "restarted"),
    [
        ("Always", 0, True),
        ("Always", 3, True),
        ("OnFailure", 3, True),
        ("OnFailure", 0, False),
        ("Never", 3, False),
    ],
)
async def test_restart_policy(tmp_path: Path, policy: str, exit_code: int, restarted: bool) -> None:
    node = f"auto-{policy.lower()}-{exit_code}"
    driver = ExecDriver(node, tmp_path, settle_seconds=0.0)
    sup = Supervisor(tmp_path, {"exec": driver})
    rid = "default-auto-1"
    try:
        armed = tmp_path / "armed"
        script = f"trap 'exit {exit_code}' TERM; : > {armed}; sleep 60 & wait"
        s = spec(rid, node, script)
        first = await driver.run(s)
        assert first.phase == ReplicaPhase.RUNNING
        sup.want("exec", policy, s)
        pid = await _pid(driver, rid)
        deadline = time.monotonic() + 10
        while not armed.exists():  # a TERM before the trap is set would exit 143
            assert time.monotonic() < deadline, "the replica never set its TERM trap"
            await asyncio.sleep(0.01)
        os.kill(pid, signal.SIGTERM)  # the replica exits with exit_code on its own
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            (st,) = [x for x in await driver.list() if x.replica_id == rid]
            if st.phase != ReplicaPhase.RUNNING:
                break
            await asyncio.sleep(0.02)  # process exit has no event to await through the driver
        await sup.tick(time.monotonic())
        (after,) = [x for x in await driver.list() if x.replica_id == rid]
        if restarted:
            assert after.phase == ReplicaPhase.RUNNING and int(after.runtime_id) != pid
            assert sup.restarts(rid) == 1
        else:
            assert after.phase != ReplicaPhase.RUNNING and sup.restarts(rid) == 0
    finally:
        for st in await driver.list():
            await driver.stop(st.replica_id, 1.0)


async def _exited(driver: ExecDriver, rid: str) -> None:
    """Wait (real time) until the replica's process is seen to have exited."""
    deadline = time.monotonic() + 10
    while any(
        s.replica_id == rid and s.phase in (ReplicaPhase.RUNNING, ReplicaPhase.STARTING)
        for s in await driver.list()
    ):
        assert time.monotonic() < deadline, "the crashing replica never exited"
        await asyncio.sleep(0.01)  # process exit has no event to await through the driver


async def test_backoff_and_retry_cap(tmp_path: Path) -> None:
    driver = ExecDriver("auto-cap", tmp_path, settle_seconds=0.05)
    sup = Supervisor(tmp_path, {"exec": driver})
    s = spec("default-auto-crash", "auto-cap", "exit 1")
    sup.want("exec", "Always", s)
    # The fake clock starts on a whole second and every instant is computed from the tick
    # number, not accumulated: all of it, and the supervisor's deadlines (now + 1, 2, 4 ...
    # 60 s), is exact in binary floating point, so no tick is early or late by an ulp.
    start, step = float(math.ceil(time.monotonic())), 2.0

    async def tick(now: float) -> int:
        before = sup.restarts(s.replica_id)
        await sup.tick(now)
        if sup.restarts(s.replica_id) != before:
            # However slow `exit 1` is on a loaded machine, the next tick sees the crash.
            await _exited(driver, s.replica_id)
        return sup.restarts(s.replica_id)

    try:
        assert await tick(start) == 1  # first crash: restarted at once
        assert await tick(start + 0.5) == 1  # crashed again: now it backs off (1 s)
        gaps: list[int] = []  # between restarts, in ticks: integers, compared exactly
        last, count = 0, 1
        for k in range(1, 401):  # the supervisor's 1 s ticks, on a fake clock in 2 s steps
            if (restarts := await tick(start + k * step)) != count:
                count = restarts
                gaps.append(k - last)
                last = k
        assert count == 9  # the 10th consecutive crash gives up (retry cap)
        # Exponential backoff: the gaps grow, then stay at the cap (60 s, rounded up to
        # the tick after the crash was seen).
        assert gaps == sorted(gaps) and gaps[-1] * step >= 32, gaps
        assert len(set(gaps[:-1])) == len(gaps) - 1 and gaps[-1] == gaps[-2], gaps
        assert gaps[-1] * step <= BACKOFF_MAX + 2 * step, gaps
    finally:
        for st in await driver.list():
            await driver.stop(st.replica_id, 1.0)


async def test_desired_set_survives_an_agent_restart(tmp_path: Path) -> None:
    driver = ExecDriver("auto-persist", tmp_path, settle_seconds=0.0)
    sup = Supervisor(tmp_path, {"exec": driver})
    s = spec("default-auto-p", "auto-persist", "sleep 60")
    try:
        await driver.run(s)
        sup.want("exec", "Always", s)
        assert (tmp_path / "desired.json").stat().st_mode & 0o777 == 0o600
        await driver.stop(s.replica_id, 1.0)  # it dies while the agent is down
        again = Supervisor(tmp_path, {"exec": ExecDriver("auto-persist", tmp_path)})
        again.load()
        await again.tick(time.monotonic())
        assert [x.phase for x in await driver.list()] == [ReplicaPhase.RUNNING]
        again.forget(s.replica_id)
        fresh = Supervisor(tmp_path, {"exec": driver})
        fresh.load()
        assert fresh.restarts(s.replica_id) == 0 and not fresh._desired
    finally:
        for st in await driver.list():
            await driver.stop(st.replica_id, 1.0)


async def test_every_crash_is_counted_and_reported_at_once(tmp_path: Path) -> None:
    """Each crash the agent restarts is counted (exit code, reason, time), wakes the
    heartbeat so the control plane hears of it now, and the count survives a restart of
    the agent; a clean exit under OnFailure is no crash."""
    driver = ExecDriver("auto-crash-report", tmp_path, settle_seconds=0.05)
    woken: list[int] = []
    sup = Supervisor(tmp_path, {"exec": driver}, on_crash=lambda: woken.append(1))
    s = spec("default-auto-report", "auto-crash-report", "echo boom; exit 7")
    start = float(math.ceil(time.monotonic()))
    try:
        before = time.time()
        await driver.run(s)  # as RunReplica does: start it, then keep it running
        sup.want("exec", "Always", s)
        assert sup.crash_report(s.replica_id) is None
        await _exited(driver, s.replica_id)
        await sup.tick(start)  # the first crash: counted, reported, restarted at once
        report = sup.crash_report(s.replica_id)
        assert report is not None and report.crashes == 1 and woken == [1]
        assert report.exit_code == 7 and "exited with code 7" in report.reason
        await _exited(driver, s.replica_id)
        await sup.tick(start + 0.5)  # it crashed again: counted before the backoff
        report = sup.crash_report(s.replica_id)
        assert report is not None and report.crashes == 2 and woken == [1, 1]
        assert before <= report.at <= time.time()
        again = Supervisor(tmp_path, {"exec": driver})
        again.load()
        reloaded = again.crash_report(s.replica_id)
        assert reloaded is not None and reloaded.crashes == 2
    finally:
        for st in await driver.list():
            await driver.stop(st.replica_id, 1.0)


async def test_a_clean_exit_under_on_failure_is_no_crash(tmp_path: Path) -> None:
    driver = ExecDriver("auto-clean", tmp_path, settle_seconds=0.0)
    sup = Supervisor(tmp_path, {"exec": driver})
    s = spec("default-auto-clean", "auto-clean", "exit 0")
    try:
        await driver.run(s)
        sup.want("exec", "OnFailure", s)
        await _exited(driver, s.replica_id)
        await sup.tick(time.monotonic())
        assert sup.crash_report(s.replica_id) is None
    finally:
        for st in await driver.list():
            await driver.stop(st.replica_id, 1.0)
