"""``workload/<ns>/<name>`` on the real Temporal dev server, with stand-in activities.

Each test runs the real ``WorkloadWorkflow`` on a fresh task queue; the activities it calls
(placement, commits, starts, stops) are stand-ins registered under the real names that
record every call and answer from a small in-memory cluster (``standins.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from cloudless.contracts import workload as wl
from cloudless.model import (
    ReplicaPhase,
    ReplicasLost,
    ReplicasPreempted,
    ScaleInput,
    StopReplicaInput,
    WaitInput,
    WorkloadPhase,
    WorkloadStatus,
    WorkloadWorkflowInput,
)
from tests.conftest import unique
from tests.integration.standins import StandIns, eventually, fresh_queue, worker
from workflows.workload import WorkloadWorkflow

pytestmark = pytest.mark.temporal


def manifest(name: str, replicas: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cloudless.dev/v1",
        "kind": "Workload",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "runtime": "exec",
            "container": {"command": ["sleep", "3600"]},
            "resources": {"cpu": "100m", "memory": "16Mi"},
            **spec,
        },
    }


Handle = WorkflowHandle[WorkloadWorkflow, WorkloadStatus]


async def start(
    client: Client, queue: str, m: dict[str, Any], max_history_events: int = 0
) -> Handle:
    return await client.start_workflow(
        WorkloadWorkflow.run,
        WorkloadWorkflowInput(cluster="test", manifest=m, max_history_events=max_history_events),
        id=f"workload/default/{m['metadata']['name']}",
        task_queue=queue,
    )


async def until(
    client: Client, workflow_id: str, ok: Callable[[WorkloadStatus], bool]
) -> WorkloadStatus:
    """The status of the workflow's latest run, once ``ok`` holds for it."""

    async def check() -> WorkloadStatus | None:
        status = await wl.STATUS.query(client.get_workflow_handle(workflow_id))
        return status if ok(status) else None

    result: WorkloadStatus = await eventually(check)
    return result


async def settled(handle: Handle, generation: int, all_ready: bool = True) -> WorkloadStatus:
    return await wl.WAIT_SETTLED.execute(
        handle,
        WaitInput(generation=generation, timeout_seconds=20, all_ready=all_ready),
    )


async def test_apply_places_starts_and_becomes_available(temporal_env: WorkflowEnvironment) -> None:
    client, queue, fake = temporal_env.client, fresh_queue("wl"), StandIns()
    async with worker(client, queue, [WorkloadWorkflow], fake):
        handle = await start(client, queue, manifest(unique("web"), 3))
        status = await settled(handle, 1)
        assert status.phase == WorkloadPhase.AVAILABLE and status.ready == 3
        assert [r.phase for r in status.replicas] == [ReplicaPhase.RUNNING] * 3
        ids = [r.replica_id for r in status.replicas]
        # One placement of all three, one batch of starts, nothing stopped or released.
        (placed,) = fake.named("place_replicas")
        assert placed.replica_ids == ids and placed.workload == status.namespace + "/" + status.name
        (batch,) = fake.named("run_replicas")
        assert [r.replica_id for r in batch.replicas] == ids
        assert [r.epoch for r in batch.replicas] == [1, 2, 3] and status.epoch == 3
        assert not fake.named("stop_replica") and not fake.named("commit_plan")
        assert {r.replica_id: r.node_id for r in status.replicas} == fake.allocated
        await wl.DELETE.execute(handle)
        assert (await handle.result()).phase == WorkloadPhase.DELETED


async def test_scale_down_removes_pending_then_newest(temporal_env: WorkflowEnvironment) -> None:
    client, queue, fake = temporal_env.client, fresh_queue("wl"), StandIns()  # room for 4
    async with worker(client, queue, [WorkloadWorkflow], fake):
        handle = await start(client, queue, manifest(unique("web"), 3))
        first = [r.replica_id for r in (await settled(handle, 1)).replicas]
        up = await wl.SCALE.execute(handle, ScaleInput(replicas=5))
        status = await settled(handle, up.generation, all_ready=False)
        phases = [r.phase for r in status.replicas]
        assert phases == [ReplicaPhase.RUNNING] * 4 + [ReplicaPhase.PENDING], status
        assert "pending" in status.message and "no room" in status.replicas[4].message
        added = [r.replica_id for r in status.replicas[3:]]

        down = await wl.SCALE.execute(handle, ScaleInput(replicas=2))
        status = await settled(handle, down.generation)
        # The pending replica goes first, then the newest running ones; the oldest stay.
        assert [r.replica_id for r in status.replicas] == first[:2]
        assert status.phase == WorkloadPhase.AVAILABLE
        stopped = [s.replica_id for s in fake.named("stop_replica")]
        assert sorted(stopped) == sorted([first[2], added[0]])  # the pending one ran nowhere
        released = [a.replica_id for p in fake.named("commit_plan") for a in p.releases]
        assert sorted(released) == sorted(stopped)
        assert sorted(fake.allocated) == sorted(first[:2])
        await wl.DELETE.execute(handle)
        await handle.result()


async def test_lost_replicas_are_replaced_without_a_stop(temporal_env: WorkflowEnvironment) -> None:
    client, queue = temporal_env.client, fresh_queue("wl")
    fake = StandIns(slots={"n1": 2, "n2": 2, "n3": 2})
    async with worker(client, queue, [WorkloadWorkflow], fake):
        handle = await start(client, queue, manifest(unique("web"), 3))
        status = await settled(handle, 1)
        assert [r.node_id for r in status.replicas] == ["n1", "n2", "n3"]
        lost = status.replicas[0].replica_id

        fake.down.add("n1")
        await wl.REPLICAS_LOST.send(handle, ReplicasLost(node_id="n1", reason="node n1 offline"))

        status = await until(
            client,
            handle.id,
            lambda s: (
                s.phase == WorkloadPhase.AVAILABLE
                and lost not in {r.replica_id for r in s.replicas}
            ),
        )
        assert len(status.replicas) == 3 and all(r.node_id != "n1" for r in status.replicas)
        assert not fake.named("stop_replica")  # its node is gone: released, never stopped
        released = [a.replica_id for p in fake.named("commit_plan") for a in p.releases]
        assert released == [lost]
        assert len(fake.named("place_replicas")) == 2
        await wl.DELETE.execute(handle)
        await handle.result()


def first_input(history: Any) -> dict[str, Any]:
    """The workflow input of a run, as JSON (the pydantic converter's payload)."""
    start = history.events[0]
    assert start.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    payload = start.workflow_execution_started_event_attributes.input.payloads[0]
    data: dict[str, Any] = json.loads(payload.data)
    return data


async def test_repeated_preemption_after_continue_as_new_evicts_nothing_more(
    temporal_env: WorkflowEnvironment,
) -> None:
    """``preempted_by`` is part of the carried state: a preempting plan's signal that is
    delivered again in the next run (the ledger retries its signals) is ignored."""
    client, queue = temporal_env.client, fresh_queue("wl")
    fake = StandIns(slots={"n1": 2, "n2": 2})
    async with worker(client, queue, [WorkloadWorkflow], fake):
        # A low threshold: each run continues as new after its first busy reconcile, while an
        # idle run (a handful of events) stays.
        handle = await start(client, queue, manifest(unique("web"), 2), max_history_events=12)
        latest = client.get_workflow_handle(handle.id, result_type=WorkloadStatus)  # latest run

        async def next_run(after: str) -> str | None:
            run = (await latest.describe()).run_id
            return run if run != after else None

        run = await eventually(lambda: next_run(handle.run_id or ""))  # after the first pass
        status = await until(client, handle.id, lambda s: s.phase == WorkloadPhase.AVAILABLE)
        on_n1 = [r.replica_id for r in status.replicas if r.node_id == "n1"]
        assert len(on_n1) == 1

        preempt = ReplicasPreempted(node_id="n1", count=1, reason="preempted", plan_id="plan-7")
        await wl.REPLICAS_PREEMPTED.send(latest, preempt)
        status = await until(
            client,
            handle.id,
            lambda s: (
                s.phase == WorkloadPhase.AVAILABLE
                and on_n1[0] not in {r.replica_id for r in s.replicas}
            ),
        )
        assert [s.replica_id for s in fake.named("stop_replica")] == on_n1
        assert not fake.named("commit_plan")  # the preempting plan released it already
        # The reconcile that moved it was busy enough to continue as new; the new run
        # carries the plan id.
        run = await eventually(lambda: next_run(run))

        async def carried() -> dict[str, Any] | None:
            state = first_input(await latest.fetch_history())["state"]
            return state if state["preempted_by"] == ["plan-7"] else None

        await eventually(carried)

        # The same signal again, in the new run: nothing is evicted.
        await wl.REPLICAS_PREEMPTED.send(latest, preempt)
        after = await wl.STATUS.query(latest)  # the query follows the signal
        assert [r.replica_id for r in after.replicas] == [r.replica_id for r in status.replicas]
        assert all(r.phase == ReplicaPhase.RUNNING for r in after.replicas)
        assert len(fake.named("stop_replica")) == 1 and len(fake.named("place_replicas")) == 2
        assert (await latest.describe()).run_id == run  # still idle: no reconcile happened

        await wl.DELETE.execute(latest)
        final = await latest.result()
        assert final.phase == WorkloadPhase.DELETED


async def test_delete_stops_and_releases_everything(temporal_env: WorkflowEnvironment) -> None:
    client, queue, fake = temporal_env.client, fresh_queue("wl"), StandIns()
    async with worker(client, queue, [WorkloadWorkflow], fake):
        handle = await start(client, queue, manifest(unique("web"), 3))
        ids = {r.replica_id for r in (await settled(handle, 1)).replicas}
        generation = await wl.DELETE.execute(handle)
        assert generation == 1
        final = await handle.result()
        assert final.phase == WorkloadPhase.DELETED and not final.replicas
        stops: list[StopReplicaInput] = fake.named("stop_replica")
        assert {s.replica_id for s in stops} == ids
        assert all(s.epoch > 0 and s.node_id for s in stops)
        released = {a.replica_id for p in fake.named("commit_plan") for a in p.releases}
        assert released == ids and not fake.allocated


async def test_a_stop_given_up_asks_its_node_to_reconcile(
    temporal_env: WorkflowEnvironment,
) -> None:
    """A stop that cannot reach the agent is given up so that nothing wedges, and the
    replica is released: its node is asked to reconcile, or the replica could run on,
    outside the ledger, on a node that never leaves Ready (issue #10)."""
    client, queue, fake = temporal_env.client, fresh_queue("wl"), StandIns()
    async with worker(client, queue, [WorkloadWorkflow], fake):
        handle = await start(client, queue, manifest(unique("web"), 3))
        status = await settled(handle, 1)
        on = {r.replica_id: r.node_id for r in status.replicas}
        fake.unstoppable.add("n1")

        down = await wl.SCALE.execute(handle, ScaleInput(replicas=0))
        status = await settled(handle, down.generation)
        assert not status.replicas and not fake.allocated  # released all the same
        unstopped = sorted(rid for rid, node in on.items() if node == "n1")
        assert [(r.node_id, sorted(r.replica_ids)) for r in fake.named("request_reconcile")] == [
            ("n1", unstopped)
        ]
        (request,) = fake.named("request_reconcile")
        assert request.reason == f"default/{status.name} gave up stopping 2 replica(s) there"
        await wl.DELETE.execute(handle)
        await handle.result()
