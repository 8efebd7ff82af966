"""The typed handles against the real Temporal dev server and the real ledger and secret
workflows: names, inputs and results line up on the wire, update-with-start creates,
signal_unless_gone tells a gone workflow apart, and send_external signals from a workflow."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from temporalio import workflow
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from cloudless.contracts import (
    LedgerHandle,
    SecretHandle,
    WorkloadHandle,
    names,
    signal_unless_gone,
    workload,
)
from cloudless.model import (
    Allocation,
    CapacityAvailable,
    CommitPlanInput,
    NodeRecord,
    Resources,
    SchedulerSettings,
    UpsertNodeInput,
)
from cloudless.secrets.model import (
    CreateSecretInput,
    DeleteSecretInput,
    ReserveUsesInput,
    RevokeInput,
    RewrapInput,
    SecretRecord,
    UpdateSecretInput,
)
from cloudless.vocabulary import NodeState
from workflows import secret as secret_workflow
from workflows.cluster import ClusterWorkflow
from workflows.secret import SecretWorkflow

pytestmark = pytest.mark.temporal


@workflow.defn
class CapacityListener:
    """Stands in for a workload: waits for one capacity_available signal."""

    def __init__(self) -> None:
        self._reason: str | None = None

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self._reason is not None)
        assert self._reason is not None
        return self._reason

    @workflow.signal(name=workload.CAPACITY_AVAILABLE.name)
    def capacity_available(self, sig: CapacityAvailable) -> None:
        self._reason = sig.reason


@workflow.defn
class CapacitySender:
    @workflow.run
    async def run(self, target: str) -> None:
        await workload.CAPACITY_AVAILABLE.send_external(
            target, CapacityAvailable(reason="room on n1")
        )


@pytest.fixture(scope="module")
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[str]:
    """A cluster name whose ledger and shared queues are served by in-process workers."""
    name = f"h-{uuid.uuid4().hex[:6]}"
    client = temporal_env.client
    runner = UnsandboxedWorkflowRunner()
    async with (
        Worker(
            client,
            task_queue=names.ledger_task_queue(name),
            workflows=[ClusterWorkflow],
            workflow_runner=runner,
        ),
        Worker(
            client,
            task_queue=names.task_queue(name),
            workflows=[SecretWorkflow, CapacityListener, CapacitySender],
            workflow_runner=runner,
        ),
    ):
        yield name


async def test_ledger_handle(temporal_env: WorkflowEnvironment, cluster: str) -> None:
    ledger = LedgerHandle(temporal_env.client, cluster)
    await ledger.start()
    await ledger.start()  # idempotent
    record = NodeRecord(node_id="n1", zone="z", capacity=Resources(cpu_millis=1000))
    upserted = await ledger.upsert_node(UpsertNodeInput(record=record, state=NodeState.READY))
    assert upserted.node.node_id == "n1" and upserted.version == await ledger.version()
    node = await ledger.wait_node("n1", [NodeState.READY], timeout=5)
    assert node is not None and node.state == NodeState.READY
    assert await ledger.wait_node("n2", timeout=0.1) is None

    alloc = Allocation(
        replica_id="r1", workload="ns/w", node_id="n1", resources=Resources(cpu_millis=600)
    )
    committed = await ledger.commit_plan(CommitPlanInput(plan_id="p1", allocations=[alloc]))
    assert committed.applied and committed.allocations == [alloc]
    with pytest.raises(WorkflowUpdateFailedError):  # the validator: n1 would be over-committed
        await ledger.commit_plan(
            CommitPlanInput(
                plan_id="p2", allocations=[alloc.model_copy(update={"replica_id": "r2"})]
            )
        )
    assert await ledger.node_workloads("n1") == ["ns/w"]
    assert await ledger.totals() == (committed.version, 1, 1)
    snap = await ledger.snapshot()
    assert [(n.node_id, n.allocated.cpu_millis) for n in snap.nodes] == [("n1", 600)]

    settings = SchedulerSettings(weights={"cost": 2.0})
    version = await ledger.set_scheduler_settings(settings)
    assert version == await ledger.version()
    assert (await ledger.scheduler_settings()).weights["cost"] == 2.0


async def test_secret_handle(temporal_env: WorkflowEnvironment, cluster: str) -> None:
    handle = SecretHandle(temporal_env.client, "ns", f"db-{uuid.uuid4().hex[:6]}")
    record = SecretRecord(
        namespace=handle.namespace,
        name=handle.name,
        audiences=["app"],
        keys=["K"],
        ciphertext="c1",
        wrapped_key="vault:v1:k1",
        key_version=1,
    )
    created = await handle.create(CreateSecretInput(record=record), cluster=cluster)
    assert created.version == 1
    with pytest.raises(WorkflowUpdateFailedError):  # it exists: the validator refuses
        await handle.create(CreateSecretInput(record=record), cluster=cluster)
    updated = await handle.update(
        UpdateSecretInput(
            expected_version=1,
            ciphertext="c2",
            wrapped_key="vault:v1:k2",
            key_version=1,
            keys=["K"],
            updated_at=1.0,
        )
    )
    assert updated.version == 2
    assert await handle.revoke(RevokeInput(token_id="t1", expires_at=4e9))
    assert not await handle.revoke(RevokeInput(token_id="t1", expires_at=4e9))
    rewrapped = await handle.rewrap(
        RewrapInput(expected_wrapped_key="vault:v1:k2", wrapped_key="vault:v2:k2", key_version=2)
    )
    assert rewrapped.applied and rewrapped.key_version == 2
    view = await handle.view()
    assert view is not None and view.record.ciphertext == "c2" and "t1" in view.revoked
    assert await handle.delete(DeleteSecretInput(actor="test"))
    await handle.handle.result()  # deleting completes the workflow

    # Completed: a signal is not delivered, and that is not an error.
    sig = CapacityAvailable(reason="x")
    assert not await signal_unless_gone(handle.handle, workload.CAPACITY_AVAILABLE, sig)


async def test_a_secret_tracks_a_bounded_number_of_live_tokens(
    temporal_env: WorkflowEnvironment, cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Use-limited tokens and revocations ride in the secret's state: past the bound a new
    one is refused (RESOURCE_EXHAUSTED, saying why and what to do) instead of growing the
    state until Temporal refuses it; known and expired entries never count."""
    monkeypatch.setattr(secret_workflow, "MAX_TRACKED_TOKENS", 2)  # in-process worker
    handle = SecretHandle(temporal_env.client, "ns", f"bound-{uuid.uuid4().hex[:6]}")
    record = SecretRecord(namespace="ns", name=handle.name, audiences=["app"], keys=["K"])
    await handle.create(CreateSecretInput(record=record), cluster=cluster)
    live, gone = 4e9, 1.0
    assert await handle.revoke(RevokeInput(token_id="old", expires_at=gone))
    for token in ("r1", "r2"):
        assert await handle.revoke(RevokeInput(token_id=token, expires_at=live))
    assert not await handle.revoke(RevokeInput(token_id="r1", expires_at=live))  # known
    with pytest.raises(WorkflowUpdateFailedError) as full:
        await handle.revoke(RevokeInput(token_id="r3", expires_at=live))
    cause = full.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ResourceExhausted"
    assert "already tracks 2 unexpired revocations" in cause.message

    for token in ("u1", "u2"):
        want = ReserveUsesInput(token_id=token, max_uses=5, expires_at=live, want=1)
        assert await handle.reserve_uses(want) == 1
    again = ReserveUsesInput(token_id="u1", max_uses=5, expires_at=live, want=2)
    assert await handle.reserve_uses(again) == 2  # a known token still reserves
    with pytest.raises(WorkflowUpdateFailedError) as full:
        await handle.reserve_uses(
            ReserveUsesInput(token_id="u3", max_uses=5, expires_at=live, want=1)
        )
    cause = full.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ResourceExhausted"
    assert "already tracks 2 unexpired use-limited tokens" in cause.message
    assert await handle.delete(DeleteSecretInput(actor="test"))


async def test_signal_unless_gone_and_send_external(
    temporal_env: WorkflowEnvironment, cluster: str
) -> None:
    client = temporal_env.client
    never = WorkloadHandle(client, "ns", f"never-{uuid.uuid4().hex[:6]}")
    assert not await signal_unless_gone(
        never.handle, workload.CAPACITY_AVAILABLE, CapacityAvailable()
    )

    listener_id = f"listener-{uuid.uuid4().hex[:6]}"
    listener = await client.start_workflow(
        CapacityListener.run, id=listener_id, task_queue=names.task_queue(cluster)
    )
    await client.execute_workflow(
        CapacitySender.run,
        listener_id,
        id=f"sender-{uuid.uuid4().hex[:6]}",
        task_queue=names.task_queue(cluster),
    )
    assert await listener.result() == "room on n1"
