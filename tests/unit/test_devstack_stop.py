"""`dev down` stops only the processes `dev up` can prove it started (issue 10).

Real processes throughout: a pid recorded in dev.json and then reused by an unrelated
process (or a process restarted by hand) must survive `stop_processes`; a genuine
recorded process, and what it started in its session, must not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cloudless.cli.devstack import (
    DEV_FILE,
    StartedProcess,
    load_state,
    record_process,
    stop_processes,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts (own sessions, as `dev up` starts them); killed after."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start(procs: list[subprocess.Popen[bytes]], args: list[str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
    )
    procs.append(proc)
    return proc


def write_state(state: Path, name: str, identity: StartedProcess) -> None:
    (state / DEV_FILE).write_text(
        json.dumps(
            {
                "pids": {name: identity.pid},
                "ports": {},
                "state_dir": str(state),
                "processes": {name: identity.to_json()},
            }
        )
    )


def test_a_genuine_recorded_process_and_its_session_are_stopped(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    leader = start(spawned, ["sh", "-c", "sleep 300 & wait"])
    recorded = record_process(tmp_path, "agent/a", leader.pid)
    assert recorded.mismatch() is None
    deadline = time.monotonic() + 10
    while not (children := psutil.Process(leader.pid).children()):
        assert time.monotonic() < deadline, "the shell never started its child"
        time.sleep(0.02)
    state = load_state(tmp_path)
    assert state is not None and state.pids == {"agent/a": leader.pid}  # readers of pids
    report = stop_processes(tmp_path, grace=5)
    assert (report.stopped, report.not_ours) == (["agent/a"], {})
    assert leader.wait(timeout=5) is not None
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, "the process group the leader started was not stopped"
    assert not (tmp_path / DEV_FILE).exists()


def test_a_reused_pid_is_left_alone(tmp_path: Path, spawned: list[subprocess.Popen[bytes]]) -> None:
    """The recorded process died and its pid now names an unrelated process (here:
    recorded with the old create time and command line, the new process's pid)."""
    original = start(spawned, SLEEPER)
    old = StartedProcess.of(original.pid)
    original.kill()
    original.wait()
    time.sleep(0.1)  # start times 10 ms apart are told apart; keep well past the tolerance
    stranger = start(spawned, ["sleep", "300"])  # leads its own group, like ours did
    write_state(tmp_path, "coordinator", StartedProcess(stranger.pid, *_rest(old)))
    report = stop_processes(tmp_path, grace=1)
    assert report.stopped == []
    assert "another process has this pid now" in report.not_ours["coordinator"]
    assert f"pid {stranger.pid}" in report.not_ours["coordinator"]
    time.sleep(0.2)
    assert stranger.poll() is None, "dev down killed a process it did not start"


def test_a_process_restarted_by_hand_is_left_alone(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    """Same program, same pid number in the file, but another start time: a process
    somebody started by hand (or a pid reused by the very same program) is not ours."""
    original = start(spawned, ["sleep", "300"])
    old = StartedProcess.of(original.pid)
    original.kill()
    original.wait()
    time.sleep(0.1)  # well past the create-time tolerance
    by_hand = start(spawned, ["sleep", "300"])
    write_state(tmp_path, "temporal", StartedProcess(by_hand.pid, *_rest(old)))
    report = stop_processes(tmp_path, grace=1)
    assert report.stopped == []
    assert "different start time" in report.not_ours["temporal"]
    time.sleep(0.2)
    assert by_hand.poll() is None


def test_a_state_file_without_identities_stops_nothing(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    """A dev.json from before identities were recorded names pids only: it proves nothing."""
    proc = start(spawned, ["sleep", "300"])
    (tmp_path / DEV_FILE).write_text(
        json.dumps({"pids": {"transit": proc.pid}, "ports": {}, "state_dir": str(tmp_path)})
    )
    report = stop_processes(tmp_path, grace=1)
    assert report.stopped == [] and "no start time" in report.not_ours["transit"]
    assert proc.poll() is None


def test_an_exited_process_is_neither_stopped_nor_reported(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    proc = start(spawned, ["sleep", "300"])
    record_process(tmp_path, "agent/gone", proc.pid)
    proc.kill()
    proc.wait()
    report = stop_processes(tmp_path, grace=1)
    assert (report.stopped, report.not_ours) == ([], {})


def _rest(identity: StartedProcess) -> tuple[float, float, tuple[str, ...]]:
    return identity.create_time, identity.boot_time, identity.cmdline
