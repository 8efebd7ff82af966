"""``node/<id>`` on the real Temporal dev server, with stand-in activities.

The real ``NodeWorkflow`` runs on a fresh task queue; ``probe_agent``, ``reconcile_node``,
``publish_node``, ``notify_workloads`` and ``wait_node_empty`` are stand-ins registered
under the real names that record every call (``standins.py``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from cloudless.contracts import node as nd
from cloudless.model import (
    EnrollSignal,
    LivenessSignal,
    NodeAdminInput,
    NodeRecord,
    NodeStatus,
    NodeWorkflowInput,
    NotifyWorkloadsInput,
    ReconcileNodeInput,
    ReconcileRequest,
    RemoveNodeInput,
    RenewCertificateInput,
    Resources,
    RetireNodeInput,
    UpsertNodeInput,
)
from cloudless.vocabulary import AdminAction, AdminState, NodeHealth, NodeState
from tests.conftest import unique
from tests.integration.standins import StandIns, eventually, fresh_queue, worker
from workflows.node import NodeWorkflow

pytestmark = pytest.mark.temporal

Handle = WorkflowHandle[NodeWorkflow, None]


def record(node_id: str) -> NodeRecord:
    return NodeRecord(
        node_id=node_id,
        zone="zone-a",
        capacity=Resources(cpu_millis=2000, memory_bytes=2 << 30),
        address="127.0.0.1:7443",
    )


async def enrolled(
    client: Client, queue: str, fake: StandIns, node_id: str, max_history_events: int = 0
) -> Handle:
    """Start ``node/<id>`` with its enrollment; return once Ready has been published."""
    handle = await client.start_workflow(
        NodeWorkflow.run,
        NodeWorkflowInput(
            cluster="test", record=record(node_id), max_history_events=max_history_events
        ),
        id=f"node/{node_id}",
        task_queue=queue,
    )
    await state_is(client, handle.id, NodeState.READY)
    await eventually(lambda: published(fake)[-1:] == [NodeState.READY])  # set, then published
    return handle


async def state_is(client: Client, workflow_id: str, state: NodeState) -> NodeStatus:
    async def check() -> NodeStatus | None:
        status = await nd.DESCRIBE.query(client.get_workflow_handle(workflow_id))
        return status if status is not None and status.state == state else None

    result: NodeStatus = await eventually(check)
    return result


def published(fake: StandIns) -> list[NodeState]:
    return [p.state for p in fake.named("publish_node")]


def liveness(health: NodeHealth, reason: str = "") -> LivenessSignal:
    return LivenessSignal(
        health=health, reason=reason or health.value, at=datetime.now(UTC), gateway="gw-1"
    )


async def test_enroll_probes_reconciles_then_ready(temporal_env: WorkflowEnvironment) -> None:
    client, queue, fake = temporal_env.client, fresh_queue("node"), StandIns()
    node_id = unique("n")
    async with worker(client, queue, [NodeWorkflow], fake):
        handle = await enrolled(client, queue, fake, node_id)
        assert [name for name, _ in fake.calls] == [
            "publish_node",
            "probe_agent",
            "reconcile_node",
            "publish_node",
        ]
        assert published(fake) == [NodeState.JOINING, NodeState.READY]
        (reconciled,) = fake.named("reconcile_node")
        assert reconciled == ReconcileNodeInput(
            node_id=node_id, address="127.0.0.1:7443", cluster="test", fresh=True
        )
        status = await nd.DESCRIBE.query(handle)
        assert status is not None and status.record.runtimes == ["exec"]  # from the probe
        assert [t.state for t in status.transitions] == [NodeState.JOINING, NodeState.READY]
        ready: UpsertNodeInput = fake.named("publish_node")[-1]
        assert ready.record.runtimes == ["exec"] and ready.uptime_ratio == 1.0

        # Enrolling again (an agent restarted with fresh facts) is not a first enrollment.
        await nd.ENROLL.send(handle, EnrollSignal(record=record(node_id)))
        await eventually(lambda: len(fake.named("reconcile_node")) == 2)
        assert fake.named("reconcile_node")[1].fresh is False
        await state_is(client, handle.id, NodeState.READY)
        await handle.terminate()


async def test_liveness_suspect_offline_notifies_workloads_and_reconciles_on_return(
    temporal_env: WorkflowEnvironment,
) -> None:
    client, queue, fake = temporal_env.client, fresh_queue("node"), StandIns()
    node_id = unique("n")
    async with worker(client, queue, [NodeWorkflow], fake):
        handle = await enrolled(client, queue, fake, node_id)
        fake.calls.clear()

        await nd.LIVENESS.send(handle, liveness(NodeHealth.SUSPECT, "missed beats"))
        await state_is(client, handle.id, NodeState.SUSPECT)
        await eventually(lambda: published(fake) == [NodeState.SUSPECT])
        assert not fake.named("notify_workloads")

        await nd.LIVENESS.send(handle, liveness(NodeHealth.OFFLINE, "silent"))
        status = await state_is(client, handle.id, NodeState.OFFLINE)
        await eventually(lambda: fake.named("notify_workloads"))
        assert fake.named("notify_workloads") == [
            NotifyWorkloadsInput(node_id=node_id, reason=f"node {node_id} offline: silent")
        ]
        assert len(status.churn) == 1  # Suspect then Offline is one episode

        await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "back"))
        status = await state_is(client, handle.id, NodeState.READY)
        await eventually(lambda: len(published(fake)) == 3)
        # Stale replicas are stopped before the node is Ready again.
        assert [name for name, _ in fake.calls][-2:] == ["reconcile_node", "publish_node"]
        assert fake.named("reconcile_node")[0].fresh is False
        assert status.gateway == "gw-1" and status.down_since is None
        assert status.offline_seconds > 0
        assert published(fake) == [NodeState.SUSPECT, NodeState.OFFLINE, NodeState.READY]
        await handle.terminate()


async def test_cordon_drain_uncordon(temporal_env: WorkflowEnvironment) -> None:
    client, queue, fake = temporal_env.client, fresh_queue("node"), StandIns()
    node_id = unique("n")
    async with worker(client, queue, [NodeWorkflow], fake):
        handle = await enrolled(client, queue, fake, node_id)
        fake.calls.clear()

        cordoned = await nd.ADMIN.execute(handle, NodeAdminInput(action=AdminAction.CORDON))
        assert cordoned.state == NodeState.CORDONED and cordoned.admin == AdminState.CORDONED
        assert published(fake) == [NodeState.CORDONED]

        # A drain returns only once the ledger lists nothing on the node.
        fake.node_empty.clear()
        drain = asyncio.create_task(
            nd.ADMIN.execute(handle, NodeAdminInput(action=AdminAction.DRAIN))
        )
        await eventually(lambda: fake.named("wait_node_empty"))
        status = await nd.DESCRIBE.query(handle)
        assert status is not None and status.state == NodeState.DRAINING
        assert fake.named("notify_workloads") == [
            NotifyWorkloadsInput(
                node_id=node_id, reason=f"node {node_id} is draining", evacuate=True
            )
        ]
        await asyncio.sleep(0.3)
        assert not drain.done()
        fake.node_empty.set()
        drained = await drain
        assert drained.state == NodeState.DRAINED
        assert published(fake) == [NodeState.CORDONED, NodeState.DRAINING, NodeState.DRAINED]

        back = await nd.ADMIN.execute(handle, NodeAdminInput(action=AdminAction.UNCORDON))
        assert back.state == NodeState.READY and back.admin == AdminState.NONE
        assert published(fake)[-1] == NodeState.READY
        await handle.terminate()


async def test_remove_retires_the_node_and_ends_the_workflow(
    temporal_env: WorkflowEnvironment,
) -> None:
    client, queue, fake = temporal_env.client, fresh_queue("node"), StandIns()
    node_id = unique("n")
    async with worker(client, queue, [NodeWorkflow], fake):
        handle = await client.start_workflow(
            NodeWorkflow.run,
            NodeWorkflowInput(
                cluster="test",
                record=record(node_id).model_copy(update={"certificate_serial": "abc123"}),
            ),
            id=f"node/{node_id}",
            task_queue=queue,
        )
        await state_is(client, handle.id, NodeState.READY)
        await eventually(lambda: published(fake)[-1:] == [NodeState.READY])
        fake.calls.clear()

        removed = await nd.ADMIN.execute(
            handle, NodeAdminInput(action=AdminAction.REMOVE, reason="sold")
        )
        assert removed.state == NodeState.REMOVED and removed.admin == AdminState.REMOVED
        assert [name for name, _ in fake.calls] == [
            "publish_node",
            "notify_workloads",
            "wait_node_released",
            "retire_node",  # it was Ready: its agent may still run replicas
            "remove_node",
        ]
        assert published(fake) == [NodeState.REMOVED]
        assert fake.named("notify_workloads") == [
            NotifyWorkloadsInput(node_id=node_id, reason=f"node {node_id} was removed: sold")
        ]
        assert fake.named("retire_node") == [
            RetireNodeInput(node_id=node_id, address="127.0.0.1:7443")
        ]
        assert fake.named("remove_node") == [
            RemoveNodeInput(node_id=node_id, certificate_serial="abc123", reason="sold")
        ]
        await handle.result()  # the workflow ended: Removed is terminal


async def test_an_offline_node_is_removed_without_dialling_it(
    temporal_env: WorkflowEnvironment,
) -> None:
    client, queue, fake = temporal_env.client, fresh_queue("node"), StandIns()
    node_id = unique("n")
    async with worker(client, queue, [NodeWorkflow], fake):
        handle = await enrolled(client, queue, fake, node_id)
        await nd.LIVENESS.send(handle, liveness(NodeHealth.OFFLINE))
        await state_is(client, handle.id, NodeState.OFFLINE)
        fake.calls.clear()
        removed = await nd.ADMIN.execute(handle, NodeAdminInput(action=AdminAction.REMOVE))
        assert removed.state == NodeState.REMOVED
        assert "retire_node" not in [name for name, _ in fake.calls]
        assert fake.named("remove_node")[0].reason == "removed by an operator"
        await handle.result()


async def test_state_survives_continue_as_new(temporal_env: WorkflowEnvironment) -> None:
    client, queue, fake = temporal_env.client, fresh_queue("node"), StandIns()
    node_id = unique("n")
    async with worker(client, queue, [NodeWorkflow], fake):
        handle = await enrolled(client, queue, fake, node_id, max_history_events=10)
        latest = client.get_workflow_handle(handle.id)  # its latest run

        async def new_run() -> bool:
            return (await latest.describe()).run_id != handle.run_id

        await eventually(new_run)
        await nd.LIVENESS.send(latest, liveness(NodeHealth.SUSPECT))
        await nd.LIVENESS.send(latest, liveness(NodeHealth.READY))
        status = await state_is(client, handle.id, NodeState.READY)
        assert len(status.churn) == 1 and status.first_seen is not None
        states = [t.state for t in status.transitions]
        assert states == [NodeState.JOINING, NodeState.READY, NodeState.SUSPECT, NodeState.READY]
        await latest.terminate()


async def test_every_way_back_to_ready_reconciles_first(
    temporal_env: WorkflowEnvironment,
) -> None:
    """Issue #10: a node that comes back from Suspect (a graceful restart, a blip) or from
    Offline through a Suspect (its old stream closed after it was written off) may run
    replicas the control plane has moved meanwhile; it is reconciled before it is Ready."""
    client, queue, fake = temporal_env.client, fresh_queue("node"), StandIns()
    node_id = unique("n")
    async with worker(client, queue, [NodeWorkflow], fake):
        handle = await enrolled(client, queue, fake, node_id)
        fake.calls.clear()

        restarting = liveness(NodeHealth.SUSPECT, "agent closed its stream (restarting)")
        await nd.LIVENESS.send(handle, restarting.model_copy(update={"graceful": True}))
        await state_is(client, handle.id, NodeState.SUSPECT)
        await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "heartbeat stream opened"))
        await state_is(client, handle.id, NodeState.READY)
        await eventually(lambda: published(fake) == [NodeState.SUSPECT, NodeState.READY])
        assert [name for name, _ in fake.calls] == [
            "publish_node",
            "reconcile_node",
            "publish_node",
        ]
        fake.calls.clear()

        await nd.LIVENESS.send(handle, liveness(NodeHealth.OFFLINE, "no heartbeat for 10.0s"))
        await state_is(client, handle.id, NodeState.OFFLINE)
        await nd.LIVENESS.send(handle, restarting.model_copy(update={"graceful": True}))
        await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "heartbeat stream opened"))
        status = await state_is(client, handle.id, NodeState.READY)
        await eventually(lambda: published(fake) == [NodeState.OFFLINE, NodeState.READY])
        # Written off stays written off: the Suspect changes nothing, the Ready reconciles.
        assert [name for name, _ in fake.calls] == [
            "publish_node",
            "notify_workloads",
            "reconcile_node",
            "publish_node",
        ]
        assert [t.state for t in status.transitions][-2:] == [NodeState.OFFLINE, NodeState.READY]
        await handle.terminate()


async def test_a_node_that_cannot_be_reconciled_is_offline_and_its_replicas_replaced(
    temporal_env: WorkflowEnvironment,
) -> None:
    """A Ready signal proves the agent can reach us, not that we can reach it: if the
    reconcile (or a re-enrollment's probe) fails, the node is Offline, and its workloads
    are told, whichever state it came from."""
    client, queue, fake = temporal_env.client, fresh_queue("node"), StandIns()
    node_id = unique("n")
    async with worker(client, queue, [NodeWorkflow], fake):
        handle = await enrolled(client, queue, fake, node_id)
        fake.calls.clear()
        fake.unreachable.add(node_id)

        await nd.LIVENESS.send(handle, liveness(NodeHealth.SUSPECT, "heartbeat stream broke"))
        await state_is(client, handle.id, NodeState.SUSPECT)
        await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "heartbeat stream opened"))
        status = await state_is(client, handle.id, NodeState.OFFLINE)
        assert status.transitions[-1].reason.startswith("could not reconcile replicas: agent")
        await eventually(lambda: fake.named("notify_workloads"))
        assert [name for name, _ in fake.calls] == [
            "publish_node",
            "reconcile_node",
            "publish_node",
            "notify_workloads",
        ]
        fake.calls.clear()

        await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "heartbeat stream opened"))
        await eventually(lambda: fake.named("reconcile_node"))
        await nd.ENROLL.send(handle, EnrollSignal(record=record(node_id)))
        await state_is(client, handle.id, NodeState.JOINING)
        status = await state_is(client, handle.id, NodeState.OFFLINE)
        assert status.transitions[-1].reason.startswith("agent unreachable")
        await eventually(lambda: len(fake.named("notify_workloads")) == 1)
        # Already Offline: a failed reconcile notifies nobody again; the failed probe of a
        # re-enrollment does (the node was Joining, its replicas still placed there).
        assert [name for name, _ in fake.calls] == [
            "reconcile_node",
            "publish_node",
            "publish_node",  # Joining
            "probe_agent",
            "publish_node",
            "notify_workloads",
        ]
        await handle.terminate()


async def test_a_reconcile_request_reconciles_a_ready_node_now(
    temporal_env: WorkflowEnvironment,
) -> None:
    """A workload gave up stopping replicas here: a Ready node reconciles at once (and is
    Offline if its agent cannot be reached); a node that is not Ready waits for its way
    back, which reconciles anyway."""
    client, queue, fake = temporal_env.client, fresh_queue("node"), StandIns()
    node_id = unique("n")
    request = ReconcileRequest(node_id=node_id, reason="default/web gave up stopping 1")
    async with worker(client, queue, [NodeWorkflow], fake):
        handle = await enrolled(client, queue, fake, node_id)
        fake.calls.clear()

        await nd.RECONCILE.send(handle, request)
        await eventually(lambda: fake.named("reconcile_node"))
        assert fake.named("reconcile_node") == [
            ReconcileNodeInput(node_id=node_id, address="127.0.0.1:7443", cluster="test")
        ]
        fake.calls.clear()

        await nd.LIVENESS.send(handle, liveness(NodeHealth.SUSPECT, "heartbeat stream broke"))
        await state_is(client, handle.id, NodeState.SUSPECT)
        await nd.RECONCILE.send(handle, request)
        await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "heartbeat stream opened"))
        await state_is(client, handle.id, NodeState.READY)
        await eventually(lambda: published(fake) == [NodeState.SUSPECT, NodeState.READY])
        # Once, on the way back: the request while Suspect did not reconcile by itself.
        assert [name for name, _ in fake.calls] == [
            "publish_node",
            "reconcile_node",
            "publish_node",
        ]
        fake.calls.clear()

        fake.unreachable.add(node_id)
        await nd.RECONCILE.send(handle, request)
        status = await state_is(client, handle.id, NodeState.OFFLINE)
        assert status.transitions[-1].reason.startswith("could not reconcile replicas")
        await eventually(lambda: fake.named("notify_workloads"))
        await handle.terminate()


async def test_renewal_signs_with_a_local_activity(temporal_env: WorkflowEnvironment) -> None:
    """The renewal's certificate is signed in the worker that runs the Update (a marker in
    history), not dispatched through Temporal as an activity task: one workflow task per
    renewal, not two (``bench/cert_rotation.py``). The result is recorded all the same."""
    client, queue, fake = temporal_env.client, fresh_queue("node"), StandIns()
    node_id = unique("n")
    async with worker(client, queue, [NodeWorkflow], fake):
        handle = await enrolled(client, queue, fake, node_id)
        renewal = RenewCertificateInput(
            csr_pem="stand-in CSR", key_id="key of stand-in CSR", presented_serial="01"
        )
        signed = await nd.RENEW_CERTIFICATE.execute(handle, renewal)
        assert [s.node_id for s in fake.named("sign_node_certificate")] == [node_id]
        status = await nd.DESCRIBE.query(handle)
        assert status is not None and status.record.certificate_serial == signed.serial
        events = (await handle.fetch_history()).events
        scheduled = [
            e.activity_task_scheduled_event_attributes.activity_type.name
            for e in events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        ]
        assert "sign_node_certificate" not in scheduled, scheduled
        markers = [e for e in events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED]
        assert any(m.marker_recorded_event_attributes.marker_name == "core_local_activity"
                   for m in markers), markers  # fmt: skip
        await handle.terminate()
