"""The gateway turns heartbeats into workload signals: readiness as ``replica_readiness``
(only changes, deduplicated, nothing for healthy unprobed replicas or agents too old to
report it) and each new crash as ``replica_crashed``."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from cloudless.api import agent_pb2, gateway_pb2
from cloudless.contracts import workload
from cloudless.model import ReplicaCrashed, ReplicaExited, ReplicaReadiness
from workers import liveness
from workers.liveness import LivenessMonitor


def replica(rid: str, ready: bool, message: str = "", gated: bool = True, **kw: Any) -> Any:
    return agent_pb2.ReplicaStatus(
        replica_id=rid,
        namespace="default",
        workload="web",
        phase=kw.pop("phase", "Running"),
        ready=ready,
        ready_message=message,
        readiness_gated=gated,
        **kw,
    )


def beat(monitor: LivenessMonitor, *replicas: Any) -> list[tuple[str, Any]]:
    monitor.beat("n1", gateway_pb2.HeartbeatRequest(seq=1, replicas=list(replicas)))
    out = []
    while not monitor._exits.empty():
        _wf, signal, event = monitor._exits.get_nowait()
        out.append((signal.name, event))
    return out


@pytest.fixture
def monitor() -> LivenessMonitor:
    return LivenessMonitor(cast(Any, None), "c", "g")


def test_gated_replica_signals_its_first_state_then_only_changes(monitor: LivenessMonitor) -> None:
    waiting = replica("r1", False, "waiting for the first probe")
    assert beat(monitor, waiting) == [
        (
            workload.REPLICA_READINESS.name,
            ReplicaReadiness(
                replica_id="r1", node_id="n1", ready=False, message="waiting for the first probe"
            ),
        )
    ]
    assert beat(monitor, waiting) == []  # unchanged: nothing
    [(name, event)] = beat(monitor, replica("r1", True))
    assert name == workload.REPLICA_READINESS.name and event.ready and event.message == ""
    assert beat(monitor, replica("r1", True)) == []


def test_unprobed_running_replicas_cost_no_signals(monitor: LivenessMonitor) -> None:
    for _ in range(3):
        assert beat(monitor, replica("r1", True, gated=False)) == []
    [(_, event)] = beat(monitor, replica("r1", False, "replica is Failed", gated=False))
    assert not event.ready and event.message == "replica is Failed"


def test_a_new_reason_is_rate_limited_but_a_flip_is_not(
    monitor: LivenessMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    assert len(beat(monitor, replica("r1", False, "GET: HTTP status 404"))) == 1
    now[0] += 1
    assert beat(monitor, replica("r1", False, "GET: HTTP status 503")) == []
    now[0] += liveness.READINESS_MESSAGE_INTERVAL
    [(_, event)] = beat(monitor, replica("r1", False, "GET: HTTP status 503"))
    assert event.message == "GET: HTTP status 503"
    now[0] += 1
    assert len(beat(monitor, replica("r1", True))) == 1


def test_old_agents_and_terminal_replicas(monitor: LivenessMonitor) -> None:
    # An agent that predates readiness sends neither ready nor a reason: no signal.
    assert beat(monitor, replica("r1", False, gated=False)) == []
    events = beat(monitor, replica("r2", False, "x", terminal=True, phase="Failed"))
    assert [name for name, _ in events] == [workload.REPLICA_EXITED.name]
    assert isinstance(events[0][1], ReplicaExited)


def test_replicas_a_node_stops_reporting_are_forgotten(monitor: LivenessMonitor) -> None:
    beat(monitor, replica("r1", True))
    beat(monitor)  # r1 gone (stopped, moved)
    assert not monitor._readiness.get("n1")
    assert len(beat(monitor, replica("r1", True))) == 1  # reported again: current state


@pytest.mark.parametrize("gated", [False, True])
def test_a_replica_starting_for_the_first_time_signals_nothing(
    monitor: LivenessMonitor, gated: bool
) -> None:
    """Issue 10 item 12: a heartbeat taken while a replica was still Starting reached the
    workload after its start activity said Running, and marked it not ready ("replica is
    Starting"): `apply --wait` answered 28/30 ready. Readiness is only a Running replica's."""
    for phase in ("Pending", "Starting"):
        assert beat(monitor, replica("r1", False, f"replica is {phase}", gated, phase=phase)) == []
    why = "waiting for the first probe" if gated else ""
    running = beat(monitor, replica("r1", not gated, why, gated))
    assert [e.ready for _, e in running] == ([] if not gated else [False])


def test_a_replica_seen_before_that_restarts_in_place_is_not_ready(
    monitor: LivenessMonitor,
) -> None:
    assert beat(monitor, replica("r1", True, gated=False)) == []
    [(_, event)] = beat(
        monitor, replica("r1", False, "replica is Starting", False, phase="Starting")
    )
    assert not event.ready and event.message == "replica is Starting"


def crashing(rid: str, crashes: int, **kw: Any) -> Any:
    return replica(rid, True, gated=False, crashes=crashes, **kw)


def test_every_new_crash_count_is_signalled_once(monitor: LivenessMonitor) -> None:
    """Crashes ride the heartbeat as the agent's running count: each new count is one
    ``replica_crashed`` signal with the latest exit code and reason, repeats are not."""
    assert beat(monitor, crashing("r1", 0)) == []
    [(name, event)] = beat(
        monitor,
        crashing("r1", 1, has_crash_exit_code=True, crash_exit_code=1, crash_reason="exited 1"),
    )
    assert name == workload.REPLICA_CRASHED.name
    assert event == ReplicaCrashed(
        replica_id="r1", node_id="n1", crashes=1, exit_code=1, reason="exited 1"
    )
    assert beat(monitor, crashing("r1", 1)) == []
    [(_, event)] = beat(monitor, crashing("r1", 3, crash_reason="x" * 1000))  # two more
    assert event.crashes == 3 and event.exit_code is None and len(event.reason) == 300


def test_a_final_crash_is_signalled_as_the_exit(monitor: LivenessMonitor) -> None:
    beat(monitor, crashing("r1", 9))
    events = beat(monitor, crashing("r1", 10, terminal=True, phase="Failed"))
    assert [name for name, _ in events] == [workload.REPLICA_EXITED.name]


def test_crash_counts_of_replicas_no_longer_reported_are_forgotten(
    monitor: LivenessMonitor,
) -> None:
    beat(monitor, crashing("r1", 2))
    beat(monitor)  # the node runs nothing now
    assert "n1" not in monitor._crashes
    # Seen again (say, by a gateway that restarted): signalled; the workload deduplicates.
    assert [e.crashes for _, e in beat(monitor, crashing("r1", 2))] == [2]
