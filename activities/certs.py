"""The ``cert-rotation`` run's side effects: find the live coordinator instances, and
renew one instance's certificates (on that instance's own task queue).

Live instances are the pollers Temporal itself sees on the cluster's task queue, by
their worker identity (:func:`cloudless.contracts.certs.instance_identity`): no registry
of our own to keep or to go stale. An instance that died since its last poll is still
listed for up to :data:`LIVE_WITHIN`; its renewal then finds nobody to run it, and the
run reports it unreachable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from cloudless.contracts.certs import instance_of
from cloudless.contracts.names import task_queue
from cloudless.model import (
    CAStageInput,
    CAStageResult,
    CertRotationInput,
    InstanceRenewal,
    RenewCertificatesInput,
)
from cloudless.model.certs import CoordinatorInstances

#: A poller seen less than this long ago is live (workers poll again at least every
#: minute, the long poll's length).
LIVE_WITHIN = timedelta(seconds=90)

#: Renews what is due of this instance's certificates, and all of them issued before the
#: time given (a forced run), if one is.
Renew = Callable[[datetime | None], Awaitable[InstanceRenewal]]
#: Takes this instance's CA through a rotation stage and re-trusts (``cloudless.pki.rotation``).
CAStage = Callable[[str], Awaitable[CAStageResult]]


async def live_instances(client: Client, cluster: str, now: datetime) -> list[str]:
    """The coordinator instances polling ``cluster``'s task queue (activities or
    workflows) within :data:`LIVE_WITHIN` of ``now``, sorted."""
    found: set[str] = set()
    for kind in (TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW):
        answer = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(
                    name=task_queue(cluster), kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL
                ),
                task_queue_type=kind,
            )
        )
        for poller in answer.pollers:
            seen = poller.last_access_time.ToDatetime(tzinfo=UTC)
            name = instance_of(poller.identity)
            if name is not None and now - seen <= LIVE_WITHIN:
                found.add(name)
    return sorted(found)


class CertRotationActivities:
    """``coordinator_instances`` runs on the cluster's queue (any coordinator answers);
    ``renew_coordinator_certificates`` on one instance's own queue, where ``renew`` is
    that instance's renewer (None: this worker only lists)."""

    def __init__(
        self, client: Client, renew: Renew | None = None, ca_stage: CAStage | None = None
    ) -> None:
        self._client = client
        self._renew = renew
        self._ca_stage = ca_stage

    @activity.defn(name="coordinator_instances")
    async def coordinator_instances(self, inp: CertRotationInput) -> CoordinatorInstances:
        found = await live_instances(self._client, inp.cluster, datetime.now(UTC))
        return CoordinatorInstances(instances=found)

    @activity.defn(name="rotate_ca_stage")
    async def rotate_ca_stage(self, inp: CAStageInput) -> CAStageResult:
        if self._ca_stage is None:
            raise RuntimeError("this worker holds no CA")
        return await self._ca_stage(inp.stage)

    @activity.defn(name="renew_coordinator_certificates")
    async def renew_coordinator_certificates(self, inp: RenewCertificatesInput) -> InstanceRenewal:
        if self._renew is None:
            raise RuntimeError("this worker holds no certificates to renew")
        return await self._renew(inp.issued_before)


__all__ = ["LIVE_WITHIN", "CAStage", "CertRotationActivities", "Renew", "live_instances"]
