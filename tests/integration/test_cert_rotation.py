"""The ``cert-rotation`` Schedule renews the coordinators' and the local admin's
certificates (issue #11, item 5), against the real Temporal dev server.

Two coordinator instances (one state directory, as replicas on one host share it) issue
themselves 12-second certificates, so the Schedule looks every second and renews at
eight. Every renewal must come from the Schedule's runs, none from a process's own
fallback; every instance answers each run; a heartbeating agent stays Ready throughout;
a forced run renews everything once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from temporalio import activity
from temporalio.client import Client, ScheduleActionStartWorkflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from cloudless.client import CloudlessClient
from cloudless.contracts import certs
from cloudless.contracts.names import task_queue
from cloudless.model import (
    CertificateState,
    CertRotationInput,
    CertRotationReport,
    InstanceRenewal,
    NodeState,
    RenewCertificatesInput,
)
from cloudless.model.certs import CoordinatorInstances
from cloudless.pki import cert_serial
from cloudless.testing.cluster import LocalCluster, exec_cluster
from tests.conftest import unique
from workers.certs import ensure_cert_rotation_schedule
from workers.coordinator import Coordinator
from workflows.certs import CertRotationWorkflow

pytestmark = pytest.mark.temporal

VALIDITY = timedelta(seconds=12)
RENEWALS = 3


@pytest.fixture
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    async with exec_cluster(
        temporal_env.client,
        "crot",
        agents=1,
        coordinator_options={"coordinator_cert_validity": VALIDITY},
    ) as c:
        yield c


async def _reports(client: Client, cluster: str) -> list[CertRotationReport]:
    """The results of the cluster's finished rotation runs."""
    query = certs.WORKFLOW.visibility_query(
        f"WorkflowId STARTS_WITH '{certs.workflow_id(cluster)}'",
        "ExecutionStatus = 'Completed'",
    )
    found = []
    async for execution in client.list_workflows(query):
        handle = client.get_workflow_handle(
            execution.id, run_id=execution.run_id, result_type=CertRotationReport
        )
        found.append(await handle.result())
    return found


async def test_the_schedule_renews_every_instances_certificates(cluster: LocalCluster) -> None:
    first = cast(Coordinator, cluster.coordinator)
    second = cast(Coordinator, await cluster.add_coordinator())
    assert first.certificates is not None and second.certificates is not None
    names = {first.certificates.instance, second.certificates.instance}
    assert len(names) == 2

    schedule = await cluster.client.get_schedule_handle(
        certs.schedule_id(cluster.cluster)
    ).describe()
    action = schedule.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert action.workflow == certs.WORKFLOW.name
    assert [i.every for i in schedule.schedule.spec.intervals] == [timedelta(seconds=1)]

    node = cluster.agent_names[0]
    c = CloudlessClient(cluster.client, cluster.cluster)
    first_cert = first.certificates.material.cert_pem
    serials = {cert_serial(first_cert)}
    for _ in range(RENEWALS):
        await asyncio.wait_for(
            first.certificates.wait_renewals(first.certificates.renewals + 1), timeout=30
        )
        serials.add(cert_serial(first.certificates.material.cert_pem))
        status = (await c.describe_node(node)).status
        assert status is not None and status.state == NodeState.READY, status
    assert len(serials) == RENEWALS + 1
    # The second instance shares the files: it renewed them or adopted the first's.
    assert second.certificates.material == first.certificates.material
    assert first.certificates.fallback_renewals == 0
    assert second.certificates.fallback_renewals == 0
    assert first.certificates.admin_renewals >= RENEWALS - 1

    # The runs say so: each certificate the instances were given is one a run renewed.
    initial = cert_serial(first_cert)
    wanted = serials - {initial}
    reports: list[CertRotationReport] = []
    for _ in range(100):  # the last run completes just after its renewal was pushed
        reports = await _reports(cluster.client, cluster.cluster)
        if wanted <= _renewed_serials(reports, "coordinator"):
            break
        await asyncio.sleep(0.1)
    assert wanted <= _renewed_serials(reports, "coordinator"), [r.model_dump() for r in reports]
    assert {i.instance for r in reports for i in r.instances} == names
    assert all(set(r.unreachable) <= names for r in reports)

    # A forced run renews what was issued before it; certificates carry whole seconds,
    # so one issued in the same second as the run is taken as current (not renewed twice).
    await asyncio.sleep(2)
    forced = await certs.run_now(
        cluster.client, CertRotationInput(cluster=cluster.cluster, force=True)
    )
    assert {i.instance for i in forced.instances} == names and not forced.unreachable
    kinds = sorted((c.kind, c.renewed) for i in forced.instances for c in i.certificates)
    # Shared files: one instance renewed each certificate, the other found it renewed.
    assert kinds == [
        ("admin", False),
        ("admin", True),
        ("coordinator", False),
        ("coordinator", True),
    ]
    status = (await c.describe_node(node)).status
    assert status is not None and status.state == NodeState.READY


def _renewed_serials(reports: list[CertRotationReport], kind: str) -> set[str]:
    return {
        c.serial
        for r in reports
        for i in r.instances
        for c in i.certificates
        if c.renewed and c.kind == kind
    }


# ------------------------------------------------- the workflow, with stand-in activities


async def test_an_instance_that_does_not_answer_is_reported_not_waited_for(
    temporal_env: WorkflowEnvironment,
) -> None:
    """Two instances are listed; only one serves its queue. The run reports the other
    unreachable after ``reach_seconds`` and still returns the first's renewals."""
    cluster = unique("crot")
    client = temporal_env.client
    issued = datetime.now(UTC)

    @activity.defn(name="coordinator_instances")
    async def instances(inp: CertRotationInput) -> CoordinatorInstances:
        return CoordinatorInstances(instances=["alive-1", "gone-2"])

    @activity.defn(name="renew_coordinator_certificates")
    async def renew(inp: RenewCertificatesInput) -> InstanceRenewal:
        return InstanceRenewal(
            instance="alive-1",
            certificates=[
                CertificateState(
                    kind="coordinator",
                    identity=f"cloudless://{cluster}/coordinator/coordinator",
                    serial="ab12",
                    not_after=issued + timedelta(days=90),
                    renew_at=issued + timedelta(days=60),
                    renewed=inp.issued_before is not None,
                )
            ],
        )

    shared = Worker(
        client,
        task_queue=task_queue(cluster),
        workflows=[CertRotationWorkflow],
        activities=[instances],
    )
    own = Worker(
        client,
        task_queue=certs.coordinator_task_queue(cluster, "alive-1"),
        activities=[renew],
    )
    async with shared, own:
        report = await certs.run_now(
            client, CertRotationInput(cluster=cluster, force=True, reach_seconds=1)
        )
        handle = client.get_workflow_handle(report_id := await _last_run_id(client, cluster))
        memo = await (await handle.describe()).memo()
    assert [i.instance for i in report.instances] == ["alive-1"]
    assert list(report.unreachable) == ["gone-2"]
    assert report.unreachable["gone-2"].startswith("did not take its renewal within 1s")
    assert report.renewed == ["alive-1/coordinator"]
    assert memo == {
        "renewed": ["alive-1/coordinator"],
        "instances": ["alive-1"],
        "unreachable": ["gone-2"],
    }, report_id


async def _last_run_id(client: Client, cluster: str) -> str:
    async for execution in client.list_workflows(
        f"WorkflowId STARTS_WITH '{certs.workflow_id(cluster)}/now-'"
    ):
        return execution.id
    raise AssertionError("no on-demand run listed")


# ------------------------------------------------------------- keeping the Schedule


async def test_the_schedule_follows_the_lifetime_a_coordinator_starts_with(
    temporal_env: WorkflowEnvironment,
) -> None:
    """Created once; left alone by a coordinator with the same settings; retimed, with
    its input, by one with another lifetime (the last coordinator started wins)."""
    client, cluster = temporal_env.client, unique("crot")
    handle = client.get_schedule_handle(certs.schedule_id(cluster))
    try:
        await ensure_cert_rotation_schedule(client, cluster, timedelta(days=90))
        created = await handle.describe()
        assert [i.every for i in created.schedule.spec.intervals] == [timedelta(hours=1)]
        await ensure_cert_rotation_schedule(client, cluster, timedelta(days=90))
        assert (await handle.describe()).info.last_updated_at == created.info.last_updated_at
        await ensure_cert_rotation_schedule(client, cluster, timedelta(seconds=100))
        retimed = await handle.describe()
        assert [i.every for i in retimed.schedule.spec.intervals] == [timedelta(seconds=10)]
        action = retimed.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        (raw,) = action.args
        (inp,) = await client.data_converter.decode([raw], [CertRotationInput])
        assert inp == CertRotationInput(cluster=cluster, reach_seconds=10.0)
    finally:
        await handle.delete()
