"""``workload/<ns>/<name>`` stays able to make progress, and says when it cannot.

Real ``WorkloadWorkflow`` on the real dev server with stand-in activities (as in
``test_workload_workflow.py``): an activity that fails for good makes the workload Stuck
with the reason instead of failing the workflow (which would drop it from every list and
leave its reservations behind); what it keeps of agents' free text and of placement
explanations is bounded; a teardown run removes exactly what an ended run left.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from cloudless.client import CloudlessClient
from cloudless.contracts import limits
from cloudless.contracts import workload as wl
from cloudless.contracts.workload import stand_in_manifest
from cloudless.model import (
    CandidateScore,
    CapacityAvailable,
    Leftovers,
    LeftoversInput,
    PlacementRequest,
    PlacementResult,
    ReplicaExited,
    ReplicaPhase,
    ReplicaReadiness,
    ReplicaRecord,
    ScaleInput,
    WorkloadPhase,
    WorkloadState,
    WorkloadStatus,
    WorkloadWorkflowInput,
)
from tests.conftest import unique
from tests.integration.standins import StandIns, eventually, fresh_queue, worker
from tests.integration.test_workload_workflow import manifest, settled, start, until
from workflows.workload import WorkloadWorkflow

pytestmark = pytest.mark.temporal


@dataclass
class Refusing(StandIns):
    """Placement fails for good (non-retryable) while ``refuse`` is set."""

    refuse: bool = True

    @activity.defn(name="place_replicas")
    async def place_replicas(self, req: PlacementRequest) -> PlacementResult:
        if self.refuse:
            self.calls.append(("place_replicas", req))
            raise ApplicationError(
                "the scheduler cannot use this manifest", type="InvalidSpec", non_retryable=True
            )
        return await super().place_replicas(req)


@dataclass
class Flaky(StandIns):
    """Placement fails with a transient error (retried by Temporal) while ``flaky``."""

    flaky: bool = True

    @activity.defn(name="place_replicas")
    async def place_replicas(self, req: PlacementRequest) -> PlacementResult:
        if self.flaky:
            raise ApplicationError("the ledger is not answering", type="LedgerUnavailable")
        return await super().place_replicas(req)


@dataclass
class Explaining(StandIns):
    """Placement explains every choice with three scored candidates."""

    @activity.defn(name="place_replicas")
    async def place_replicas(self, req: PlacementRequest) -> PlacementResult:
        result = await super().place_replicas(req)
        why = [CandidateScore(node_id=n, score=50.0, factors={"cost": 0.5}) for n in ("n1", "n2")]
        for p in result.placements:
            p.score, p.candidates = 50.0, why
        return result


async def test_an_activity_that_fails_for_good_makes_the_workload_stuck_not_failed(
    temporal_env: WorkflowEnvironment,
) -> None:
    client, queue, fake = temporal_env.client, fresh_queue("wl"), Refusing()
    async with worker(client, queue, [WorkloadWorkflow], fake):
        handle = await start(client, queue, manifest(unique("refused"), 2))
        stuck = await until(client, handle.id, lambda s: s.phase == WorkloadPhase.STUCK)
        assert "placement failed: the scheduler cannot use this manifest" in stuck.message
        assert all(r.phase == ReplicaPhase.PENDING for r in stuck.replicas)
        assert all("cannot use this manifest" in r.message for r in stuck.replicas)
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

        # Once the cause is gone, the next pass gets through and the workload recovers.
        fake.refuse = False
        await wl.CAPACITY_AVAILABLE.send(handle, CapacityAvailable(reason="test"))
        status = await until(client, handle.id, lambda s: s.phase == WorkloadPhase.AVAILABLE)
        assert status.message == "" and status.ready == 2

        # And a Stuck workload can still be deleted.
        fake.refuse = True
        await wl.SCALE.execute(handle, ScaleInput(replicas=3))
        await until(client, handle.id, lambda s: s.phase == WorkloadPhase.STUCK)
        await wl.DELETE.execute(handle)
        final = await handle.result()
        assert final.phase == WorkloadPhase.DELETED and not fake.allocated


async def test_an_activity_retried_for_a_while_shows_in_the_status(
    temporal_env: WorkflowEnvironment,
) -> None:
    """A workflow waiting on an activity that keeps failing answers queries but does not
    move: the client adds the retries, read from Temporal, to its message."""
    client, queue, fake = temporal_env.client, fresh_queue("wl"), Flaky()
    library = CloudlessClient(client, "test")
    async with worker(client, queue, [WorkloadWorkflow], fake):
        name = unique("flaky")
        handle = await start(client, queue, manifest(name, 1))

        async def retrying() -> WorkloadStatus | None:
            status = await library.workload_status("default", name)
            return status if "place_replicas failing (attempt" in status.message else None

        status = await eventually(retrying, timeout=30)
        assert "LedgerUnavailable: the ledger is not answering" in status.message
        assert status.generation == 1  # it answered: its state is known
        fake.flaky = False
        settled_status = await settled(handle, 1)
        assert settled_status.phase == WorkloadPhase.AVAILABLE
        assert "failing" not in (await library.workload_status("default", name)).message
        await wl.DELETE.execute(handle)
        await handle.result()


async def test_free_text_and_explanations_stay_bounded(temporal_env: WorkflowEnvironment) -> None:
    client, queue = temporal_env.client, fresh_queue("wl")
    fake = Explaining(slots={"n1": 60, "n2": 60})
    count = limits.MAX_EXPLAINED_REPLICAS + 6
    async with worker(client, queue, [WorkloadWorkflow], fake):
        handle = await start(client, queue, manifest(unique("wordy"), count))
        status = await settled(handle, 1)
        explained = [r for r in status.replicas if r.candidates]
        assert len(explained) == limits.MAX_EXPLAINED_REPLICAS
        newest = sorted(status.replicas, key=lambda r: r.epoch)[-limits.MAX_EXPLAINED_REPLICAS :]
        assert {r.replica_id for r in explained} == {r.replica_id for r in newest}
        assert all(r.score == 50.0 for r in status.replicas)  # scores stay on every replica

        first, second = status.replicas[0], status.replicas[1]
        essay = "why " * 5_000
        await wl.REPLICA_READINESS.send(
            handle,
            ReplicaReadiness(
                replica_id=second.replica_id, node_id=second.node_id, ready=False, message=essay
            ),
        )
        await wl.REPLICA_EXITED.send(
            handle,
            ReplicaExited(
                replica_id=first.replica_id,
                node_id=first.node_id,
                phase=ReplicaPhase.FAILED,
                exit_code=1,
                message=essay,
            ),
        )
        later = await until(
            client,
            handle.id,
            lambda s: any(r.ready_message for r in s.replicas) and "failed" in s.message,
        )
        assert len(later.message) <= limits.MAX_MESSAGE_CHARS
        for r in later.replicas:
            assert len(r.message) <= limits.MAX_REPLICA_MESSAGE_CHARS
            assert len(r.ready_message) <= limits.MAX_REPLICA_MESSAGE_CHARS
        await wl.DELETE.execute(handle)
        await handle.result()


async def test_a_teardown_run_claims_the_workload_and_stops_what_was_left(
    temporal_env: WorkflowEnvironment,
) -> None:
    """What ended runs left: the teardown run finds the replicas agents still run, claims
    the workload (the ledger frees everything those runs held, and refuses their late
    plans), stops those replicas, and releases nothing itself (nothing is released twice)."""
    client, queue = temporal_env.client, fresh_queue("wl")
    name = unique("left")

    def left(rid: str) -> ReplicaRecord:
        return ReplicaRecord(
            replica_id=rid,
            generation=0,
            spec_hash="",
            phase=ReplicaPhase.RUNNING,
            node_id="n1",
            address="n1:7443",
            released=True,  # as find_leftovers marks them: the claim frees the ledger
        )

    @dataclass
    class Leaving(StandIns):
        @activity.defn(name="find_leftovers")
        async def find_leftovers(self, inp: LeftoversInput) -> Leftovers:
            self.calls.append(("find_leftovers", inp))
            return Leftovers(replicas=[left("a"), left("b")], unreachable=["n9"])

    fake = Leaving()
    async with worker(client, queue, [WorkloadWorkflow], fake):
        handle = await client.start_workflow(
            WorkloadWorkflow.run,
            WorkloadWorkflowInput(
                cluster="test",
                state=WorkloadState(
                    manifest=stand_in_manifest("default", name),
                    deleting=True,
                    orphans=True,
                    message="deleted while stuck: test",
                ),
            ),
            id=wl.workflow_id("default", name),
            task_queue=queue,
        )
        final = await handle.result()
    assert final.phase == WorkloadPhase.DELETED and final.replicas == []
    assert final.manifest is None  # the stand-in is never shown
    (found,) = fake.named("find_leftovers")
    assert (found.namespace, found.name) == ("default", name)
    (claimed,) = fake.named("claim_workload")
    assert claimed.workload == f"default/{name}"
    order = [n for n, _ in fake.calls]
    assert order.index("find_leftovers") < order.index("claim_workload")  # found, then freed
    assert sorted(s.replica_id for s in fake.named("stop_replica")) == ["a", "b"]
    assert not fake.named("commit_plan")  # the claim released it all
