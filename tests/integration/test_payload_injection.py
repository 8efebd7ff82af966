"""A client that reaches Temporal but has no transit access cannot command the cluster.

The attack from the field: an unprivileged local user ran the plain ``temporal`` CLI
against the embedded frontend, started a workload workflow that ran a process, and
forged a ``liveness`` signal that marked a healthy node Offline. The coordinator's
codec refuses every payload this cluster's key did not seal, so here, against the real
Temporal dev server and a real cluster: a plaintext start fails at once (nothing runs,
nothing is reserved), a forged signal is dropped (the node stays Ready), and plaintext
update and query arguments are refused, each refusal audited as ``payload.rejected``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.exceptions import ApplicationError

from cloudless.client import CloudlessClient
from cloudless.codec import REJECTED_ERROR_TYPE, NoTransitCodec, PayloadCodecError
from cloudless.contracts import ledger as ledger_contract
from cloudless.contracts import node as node_contract
from cloudless.contracts import workload as workload_contract
from cloudless.model import ApplyInput, LivenessSignal, WorkloadWorkflowInput
from cloudless.testing.cluster import LocalCluster, temporal_binary
from cloudless.testing.workloads import sleeper
from cloudless.vocabulary import NodeHealth
from tests.conftest import unique

pytestmark = [pytest.mark.docker, pytest.mark.temporal]


@pytest.fixture
async def intruder(dev_cluster: LocalCluster) -> AsyncIterator[Client]:
    """A client on the same Temporal, with no transit: it writes plaintext payloads."""
    target = dev_cluster.client.service_client.config.target_host
    client = await Client.connect(target, data_converter=NoTransitCodec.data_converter())
    yield client


async def last_event_id(handle: WorkflowHandle[object, object]) -> int:
    return max([e.event_id async for e in handle.fetch_history_events()], default=0)


async def signal_handled(handle: WorkflowHandle[object, object], name: str, after: int) -> None:
    """Return once a workflow task completed after signal ``name`` (an event after
    ``after``) reached the history: the workflow has seen it."""
    seen = False
    async for e in handle.fetch_history_events(wait_new_event=True):
        if e.event_id <= after:
            continue
        attributes = e.workflow_execution_signaled_event_attributes
        signaled = e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        seen = seen or (signaled and attributes.signal_name == name)
        if seen and e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            return


def refusal(err: BaseException) -> ApplicationError:
    """The ``PayloadRejected`` error at the root of ``err``."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = cause.__cause__
    assert isinstance(cause, ApplicationError), repr(err)
    assert cause.type == REJECTED_ERROR_TYPE and cause.non_retryable, repr(cause)
    return cause


async def test_a_plaintext_start_fails_and_runs_nothing(
    dev_cluster: LocalCluster, intruder: Client
) -> None:
    name = unique("injected")
    manifest = sleeper(
        name, 1, container={"command": ["sh"], "args": ["-c", "id > /tmp/pwned; sleep 3600"]}
    )
    key = workload_contract.workflow_id("default", name)
    with capture_logs() as logs:
        handle = await workload_contract.WORKFLOW.start(
            intruder,
            WorkloadWorkflowInput(cluster=dev_cluster.cluster, manifest=manifest),
            id=key,
            cluster=dev_cluster.cluster,
        )
        # Its failure is sealed too: only a client with transit access reads why.
        with pytest.raises(WorkflowFailureError) as failed:
            await workload_contract.WORKFLOW.handle(dev_cluster.client, handle.id).result()
    assert "payload refused: it is not encrypted" in str(refusal(failed.value))
    assert any(e["event"] == "payload.rejected" and e["workflow_id"] == key for e in logs)
    # Nothing was placed: no reservation names it.
    owners = await ledger_contract.WORKLOAD_OWNERS.query(
        ledger_contract.WORKFLOW.handle(
            dev_cluster.client, ledger_contract.workflow_id(dev_cluster.cluster)
        )
    )
    assert f"default/{name}" not in owners


async def test_a_forged_liveness_signal_is_dropped(
    dev_cluster: LocalCluster, intruder: Client
) -> None:
    node_id = next(iter(dev_cluster.agents))
    honest = CloudlessClient(dev_cluster.client, dev_cluster.cluster)
    before = await honest.node(node_id).describe()
    assert before is not None and before.health == NodeHealth.READY
    forged = node_contract.WORKFLOW.handle(intruder, node_contract.workflow_id(node_id))
    seen_until = await last_event_id(forged)
    with capture_logs() as logs:
        await node_contract.LIVENESS.send(
            forged,
            LivenessSignal(
                health=NodeHealth.OFFLINE, reason="forged", at=datetime.now(UTC), gateway="x"
            ),
        )
        await signal_handled(forged, node_contract.LIVENESS.name, seen_until)
    status = await honest.node(node_id).describe()
    assert status is not None and status.health == NodeHealth.READY
    assert all(t.reason != "forged" for t in status.transitions)
    assert any(e["event"] == "payload.rejected" for e in logs), logs


async def test_plaintext_update_and_query_arguments_are_refused(
    dev_cluster: LocalCluster, intruder: Client
) -> None:
    honest = CloudlessClient(dev_cluster.client, dev_cluster.cluster)
    name = unique("honest")
    outcome = await honest.apply(sleeper(name, 1), wait=True)
    forged = workload_contract.WORKFLOW.handle(
        intruder, workload_contract.workflow_id("default", name)
    )
    key = workload_contract.workflow_id("default", name)
    # Refused; and the refusal's reason is sealed like every failure, so a client without
    # transit access cannot even read why.
    refused = pytest.raises(PayloadCodecError, match="no transit access")
    with capture_logs() as logs, refused:
        await workload_contract.APPLY.execute(forged, ApplyInput(manifest=sleeper(name, 5)))
    assert any(e["event"] == "payload.rejected" and e["workflow_id"] == key for e in logs)
    status = await honest.workload_status("default", name)
    assert status.generation == outcome.generation and status.desired == 1

    ledger = ledger_contract.WORKFLOW.handle(
        intruder, ledger_contract.workflow_id(dev_cluster.cluster)
    )
    failed = pytest.raises((WorkflowQueryFailedError, PayloadCodecError))
    with capture_logs() as logs, failed:
        await ledger_contract.NODE_WORKLOADS.query(ledger, next(iter(dev_cluster.agents)))
    assert any(e["event"] == "payload.rejected" for e in logs)
    await honest.delete("default", name)


async def test_the_plain_temporal_cli_cannot_start_a_workload(dev_cluster: LocalCluster) -> None:
    """The field report's own tool: ``temporal workflow start`` with JSON input."""
    name = unique("cli-injected")
    manifest = sleeper(name, 1).model_dump(mode="json", by_alias=True)
    key = workload_contract.workflow_id("default", name)
    started = await asyncio.to_thread(
        subprocess.run,
        [
            temporal_binary(),
            "workflow",
            "start",
            "--address",
            dev_cluster.client.service_client.config.target_host,
            "--type",
            workload_contract.WORKFLOW.name,
            "--task-queue",
            workload_contract.WORKFLOW.task_queue(dev_cluster.cluster),
            "--workflow-id",
            key,
            "--input",
            json.dumps({"cluster": dev_cluster.cluster, "manifest": manifest}),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr  # Temporal itself let it in
    handle = workload_contract.WORKFLOW.handle(dev_cluster.client, key)
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    refusal(failed.value)
