"""The audit log end to end on the real Temporal dev server: the front's sink signals
records into ``audit/<cluster>`` (started by its first batch), the coordinator's real
workers run the workflow, ``cloudlessctl audit`` lists them filtered; the ring keeps the
newest records across continue-as-new."""

from __future__ import annotations

import contextlib
import json
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from cloudless.client import CloudlessClient
from cloudless.contracts import audit
from cloudless.model import AuditBatch, AuditFilter, AuditRecord, AuditWorkflowInput
from cloudless.testing.cli import ctl
from cloudless.testing.cluster import LocalCluster
from cloudless.testing.outage import eventually
from workers.front.audit import AuditSink

pytestmark = pytest.mark.temporal

ADMIN = "cloudless://{cluster}/admin/admin"


@pytest.fixture(scope="module")
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    """A coordinator (its real workers) and no agents: the log needs none."""
    with tempfile.TemporaryDirectory(prefix="cl-") as d:
        c = LocalCluster(temporal_env.client, Path(d), cluster=f"audit-{uuid.uuid4().hex[:6]}")
        await c.start()
        try:
            yield c
        finally:
            for wid in (audit.workflow_id(c.cluster), audit.workflow_id(c.cluster + "-ring")):
                with contextlib.suppress(RPCError):  # never started: nothing to clean up
                    await c.client.get_workflow_handle(wid).terminate("test over")
            await c.close()


def record(
    ago: float,
    *,
    actor: str,
    role: str = "admin",
    action: str = "UpdateWorkflowExecution",
    target: str = "workload/default/web",
    message: str = "apply",
    outcome: str = "allowed",
    reason: str = "",
) -> AuditRecord:
    return AuditRecord.model_validate(
        {
            "time": datetime.now(UTC) - timedelta(seconds=ago),
            "actor": actor,
            "role": role,
            "source": "ipv4:127.0.0.1:40001",
            "action": action,
            "target": target,
            "message": message,
            "outcome": outcome,
            "reason": reason,
        }
    )


async def test_the_sink_records_and_cloudlessctl_lists_them_filtered(
    cluster: LocalCluster,
) -> None:
    admin = ADMIN.format(cluster=cluster.cluster)
    sink = await AuditSink(flush_interval=0.05).start()
    # Before attach: the coordinator's client does not exist yet; nothing is lost.
    sink.record(record(50, actor=admin, message="apply"))
    sink.record(record(40, actor=admin, message="scale"))
    sink.record(record(30, actor=admin, target="workload/default/db", message="delete"))
    sink.record(
        record(
            20,
            actor=f"cloudless://{cluster.cluster}/node/n1",
            role="node",
            action="SignalWorkflowExecution",
            target="node/n1",
            message="liveness",
            outcome="denied",
            reason="role node may not call SignalWorkflowExecution",
        )
    )
    sink.record(
        record(
            10,
            actor="ui:alice",
            action="HTTP POST",
            target="/api/v1/namespaces/default/workflows/node%2Fn1/terminate",
            message="",
            outcome="failed",
            reason="HTTP 500",
        )
    )
    sink.record(record(7200, actor=admin, message="old"))  # two hours ago
    assert sink.buffered == 6
    sink.attach(cluster.client, cluster.cluster)
    await sink.stop()  # flushes
    assert sink.sent == 6 and sink.dropped == 0

    c = CloudlessClient(cluster.client, cluster.cluster)

    async def six() -> bool:
        return (await c.audit(AuditFilter(limit=100))).retained == 6

    await eventually(six, "the six records in audit/<cluster>", timeout=20)

    denied = await ctl(cluster, "audit", "--outcome", "denied")
    assert denied.exit_code == 0, denied.output
    assert "role node may not call SignalWorkflowExecution" in denied.output
    assert f"cloudless://{cluster.cluster}/node/n1" in denied.output
    assert admin not in denied.output
    header = denied.output.splitlines()[0].split()
    assert header == ["TIME", "ACTOR", "SOURCE", "ACTION", "TARGET", "MESSAGE", "OUTCOME", "REASON"]

    ui = await ctl(cluster, "audit", "--actor", "UI:", "-o", "json")
    assert ui.exit_code == 0, ui.output
    (only,) = json.loads(ui.output)["records"]
    assert only["action"] == "HTTP POST" and only["outcome"] == "failed"

    # Newest first; the default window (--since 1h) leaves out the two-hour-old record.
    workloads = await ctl(cluster, "audit", "--target", "workload/default/", "-o", "json")
    assert [r["message"] for r in json.loads(workloads.output)["records"]] == [
        "delete",
        "scale",
        "apply",
    ]
    every = await ctl(cluster, "audit", "--since", "3h", "--actor", admin, "-o", "json")
    assert [r["message"] for r in json.loads(every.output)["records"]][-1] == "old"

    cut = await ctl(cluster, "audit", "--limit", "1", "--action", "updateworkflowexecution")
    assert cut.exit_code == 0, cut.output
    assert "delete" in cut.output and "scale" not in cut.output
    assert "showing the newest 1; more match" in cut.output

    bad = await ctl(cluster, "audit", "--since", "yesterday")
    assert bad.exit_code == 1 and "--since" in bad.output
    too_many = await ctl(cluster, "audit", "--limit", "10001")
    assert too_many.exit_code == 2


async def test_a_cluster_without_a_log_lists_nothing(cluster: LocalCluster) -> None:
    empty = await CloudlessClient(cluster.client, f"nolog-{uuid.uuid4().hex[:6]}").audit(
        AuditFilter()
    )
    assert empty.records == [] and empty.retained == 0


async def test_the_ring_keeps_the_newest_across_continue_as_new(cluster: LocalCluster) -> None:
    wid = audit.workflow_id(cluster.cluster + "-ring")
    handle = await audit.WORKFLOW.start(
        cluster.client,
        AuditWorkflowInput(cluster=cluster.cluster, max_records=30, max_history_events=100),
        id=wid,
        cluster=cluster.cluster,
    )
    first_run = (await handle.describe()).run_id
    admin = ADMIN.format(cluster=cluster.cluster)
    for n in range(120):  # one signal each: well over 100 history events
        batch = AuditBatch(records=[record(0, actor=admin, message=f"m{n}")])
        await audit.RECORD.send(audit.WORKFLOW.handle(cluster.client, wid), batch)

    async def continued() -> bool:
        latest = await audit.WORKFLOW.handle(cluster.client, wid).describe()
        return latest.run_id != first_run

    await eventually(continued, "the audit workflow to continue as new", timeout=30)
    old = cluster.client.get_workflow_handle(wid, run_id=first_run)
    assert (await old.describe()).status == WorkflowExecutionStatus.CONTINUED_AS_NEW

    got = await audit.ENTRIES.query(
        audit.WORKFLOW.handle(cluster.client, wid), AuditFilter(limit=1000)
    )
    assert got.retained == 30 and not got.truncated
    assert sorted(int(r.message[1:]) for r in got.records) == list(range(90, 120))
