"""Crash-loop rescheduling in ``workload/<ns>/<name>``, on the real Temporal dev server with
stand-in activities (``standins.py``): crash reports arrive as the gateway sends them, and
the tests check what the workflow places, starts, stops and shows.
"""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from cloudless.contracts import workload as wl
from cloudless.model import (
    ReplicaCrashed,
    ReplicaExited,
    ReplicaPhase,
    ReplicaRecord,
    ScaleInput,
    WorkloadPhase,
    WorkloadStatus,
)
from tests.conftest import unique
from tests.integration.standins import StandIns, fresh_queue, worker
from tests.integration.test_workload_workflow import Handle, manifest, settled, start, until
from workflows.workload import WorkloadWorkflow

pytestmark = pytest.mark.temporal

FAST = {"failures": 3, "failureWindow": "60s", "delay": "0s", "maxDelay": "10s"}


def crashed(r: ReplicaRecord, count: int, code: int = 1) -> ReplicaCrashed:
    return ReplicaCrashed(
        replica_id=r.replica_id,
        node_id=r.node_id,
        crashes=count,
        exit_code=code,
        reason=f"exited with code {code}",
    )


async def crash(handle: Handle, r: ReplicaRecord, counts: range, code: int = 1) -> None:
    for n in counts:
        await wl.REPLICA_CRASHED.send(handle, crashed(r, n, code))


async def test_a_crash_looping_replica_moves_to_another_node(
    temporal_env: WorkflowEnvironment,
) -> None:
    client, queue, fake = temporal_env.client, fresh_queue("crash"), StandIns()
    async with worker(client, queue, [WorkloadWorkflow], fake):
        handle = await start(client, queue, manifest(unique("loop"), 1, reschedule=FAST))
        (first,) = (await settled(handle, 1)).replicas
        assert first.node_id == "n1"

        # Two crashes (and a repeated report): the agent's restarts handle it.
        await crash(handle, first, range(1, 3))
        await wl.REPLICA_CRASHED.send(handle, crashed(first, 2))
        status = await until(client, handle.id, lambda s: len(s.replicas[0].crash_times) == 2)
        assert status.phase == WorkloadPhase.AVAILABLE and not status.reschedules
        assert "crashed (exit code 1), restarted by its agent" in status.replicas[0].message

        await crash(handle, first, range(3, 4))  # the third within the window
        status = await until(
            client,
            handle.id,
            lambda s: (
                [r.replica_id for r in s.replicas] != [first.replica_id]
                and len(s.replicas) == 1
                and s.phase == WorkloadPhase.AVAILABLE
            ),
        )
        (moved,) = status.replicas
        assert moved.node_id == "n2" and moved.replaces == first.replica_id
        assert moved.avoid_nodes == ["n1"] and len(moved.reschedule_times) == 1
        (event,) = status.reschedules
        assert (event.replica_id, event.node_id, event.crashes, event.exit_code) == (
            first.replica_id,
            "n1",
            3,
            1,
        )
        assert (event.replacement, event.to_node, event.held) == (moved.replica_id, "n2", "")
        # Placed away from n1, started, and only then the crash-looping one stopped.
        assert fake.named("place_replicas")[-1].avoid_nodes == ["n1"]
        order = [name for name, arg in fake.calls if name in ("run_replicas", "stop_replica")]
        assert order[-2:] == ["run_replicas", "stop_replica"]
        assert fake.named("stop_replica")[-1].replica_id == first.replica_id
        assert sorted(fake.allocated) == [moved.replica_id]
        await wl.DELETE.execute(handle)
        await handle.result()


async def test_a_replica_crashing_everywhere_stops_moving_and_says_why(
    temporal_env: WorkflowEnvironment,
) -> None:
    client, queue, fake = temporal_env.client, fresh_queue("crash"), StandIns()
    policy = {**FAST, "attempts": 1, "interval": "10m"}
    async with worker(client, queue, [WorkloadWorkflow], fake):
        handle = await start(client, queue, manifest(unique("loop"), 1, reschedule=policy))
        (first,) = (await settled(handle, 1)).replicas
        await crash(handle, first, range(1, 4))
        status = await until(
            client, handle.id, lambda s: len(s.replicas) == 1 and s.replicas[0].node_id == "n2"
        )
        (second,) = status.replicas
        await crash(handle, second, range(1, 4), code=2)
        status = await until(client, handle.id, lambda s: s.phase == WorkloadPhase.DEGRADED)
        (stays,) = status.replicas
        assert stays.replica_id == second.replica_id and stays.node_id == "n2"
        assert "rescheduled 1 time(s) in the last 600s" in stays.crash_loop
        assert "not rescheduled" in status.message and "crash-looping on n2" in status.message
        assert [(e.node_id, e.to_node, bool(e.held)) for e in status.reschedules] == [
            ("n1", "n2", False),
            ("n2", "", True),
        ]
        placements = len(fake.named("place_replicas"))

        # Its agent gives up: it stays failed where it is, not replaced behind the limit.
        await wl.REPLICA_EXITED.send(
            handle,
            ReplicaExited(
                replica_id=stays.replica_id,
                node_id="n2",
                phase=ReplicaPhase.FAILED,
                exit_code=2,
                message="exited with code 2",
            ),
        )
        await until(client, handle.id, lambda s: s.replicas[0].phase == ReplicaPhase.FAILED)
        status = await settled(handle, 1, all_ready=False)  # a pass ran on the failure
        assert status.phase == WorkloadPhase.DEGRADED
        assert [r.replica_id for r in status.replicas] == [stays.replica_id]
        assert len(fake.named("place_replicas")) == placements
        await wl.DELETE.execute(handle)
        await handle.result()


async def test_the_reschedule_waits_for_its_delay(temporal_env: WorkflowEnvironment) -> None:
    client, queue, fake = temporal_env.client, fresh_queue("crash"), StandIns()
    policy = {**FAST, "delay": "2s"}
    async with worker(client, queue, [WorkloadWorkflow], fake):
        handle = await start(client, queue, manifest(unique("loop"), 1, reschedule=policy))
        (first,) = (await settled(handle, 1)).replicas
        await crash(handle, first, range(1, 4))

        def crashed_thrice(s: WorkloadStatus) -> bool:
            mine = [r for r in s.replicas if r.replica_id == first.replica_id]
            return bool(mine and len(mine[0].crash_times) >= 3)

        # Read the third crash's time while the replica is still there (the delay holds it;
        # once rescheduled, the old record may already be gone).
        status = await until(client, handle.id, crashed_thrice)
        (old,) = [r for r in status.replicas if r.replica_id == first.replica_id]
        status = await until(client, handle.id, lambda s: bool(s.reschedules))
        (event,) = status.reschedules
        # Timed on the workflow's clock: at least the delay after the third crash.
        assert event.at.timestamp() - old.crash_times[-1] >= 2.0
        await wl.DELETE.execute(handle)
        await handle.result()


async def test_a_failed_replica_is_replaced_away_from_its_node(
    temporal_env: WorkflowEnvironment,
) -> None:
    """An agent that gave up (or restartPolicy Never) reports a failed exit: that replica
    is replaced per the policy too, on another node."""
    client, queue, fake = temporal_env.client, fresh_queue("crash"), StandIns()
    async with worker(client, queue, [WorkloadWorkflow], fake):
        m: dict[str, Any] = manifest(unique("fail"), 1, reschedule=FAST)
        handle = await start(client, queue, m)
        (first,) = (await settled(handle, 1)).replicas
        await wl.REPLICA_EXITED.send(
            handle,
            ReplicaExited(
                replica_id=first.replica_id,
                node_id="n1",
                phase=ReplicaPhase.FAILED,
                exit_code=3,
                message="exited with code 3",
            ),
        )
        status = await until(
            client,
            handle.id,
            lambda s: (
                s.phase == WorkloadPhase.AVAILABLE and [r.node_id for r in s.replicas] == ["n2"]
            ),
        )
        (event,) = status.reschedules
        assert (event.node_id, event.exit_code, event.to_node) == ("n1", 3, "n2")
        await wl.DELETE.execute(handle)
        await handle.result()


async def test_a_replica_that_dies_at_start_moves_and_then_stays_put(
    temporal_env: WorkflowEnvironment,
) -> None:
    """A start that fails on a node counts as a crash there: the replacement avoids the
    node, and a replica failing everywhere stops being replaced once its attempts are
    used up (instead of being replaced forever with the retry backoff)."""
    client, queue = temporal_env.client, fresh_queue("crash")
    fake = StandIns(fail_on={"n1"})
    policy = {**FAST, "attempts": 1, "interval": "10m"}
    async with worker(client, queue, [WorkloadWorkflow], fake):
        handle = await start(client, queue, manifest(unique("die"), 1, reschedule=policy))
        status = await until(
            client,
            handle.id,
            lambda s: (
                s.phase == WorkloadPhase.AVAILABLE and [r.node_id for r in s.replicas] == ["n2"]
            ),
        )
        assert [(e.node_id, e.exit_code, e.to_node) for e in status.reschedules] == [
            ("n1", 1, "n2")
        ]

        fake.fail_on.add("n2")  # now it fails everywhere
        again = await wl.SCALE.execute(handle, ScaleInput(replicas=2))
        status = await until(client, handle.id, lambda s: s.phase == WorkloadPhase.DEGRADED)
        await settled(handle, again.generation, all_ready=False)
        placements = len(fake.named("place_replicas"))
        status = await settled(handle, again.generation, all_ready=False)
        assert len(fake.named("place_replicas")) == placements  # not replaced again
        failed = [r for r in status.replicas if r.phase == ReplicaPhase.FAILED]
        assert failed and all(r.crash_loop for r in failed), status.replicas
        assert "not rescheduled" in status.message
        await wl.DELETE.execute(handle)
        await handle.result()
