"""``cert-rotation/<cluster>``: renew the control plane's own certificates.

Started by the Temporal Schedule ``cert-rotation/<cluster>`` (every coordinator keeps its
interval at a tenth of the lifetime of the certificates it issues, at most an hour) or on
demand (``cloudlessctl certs rotate``). One run:

1. ``coordinator_instances`` (any coordinator): the instances Temporal sees polling;
2. ``renew_coordinator_certificates`` on each instance's own task queue, at once: it
   renews what is due of the certificates it holds (its own, which its listeners, its
   front and its channels to agents present; the local admin's) and says what it has.

An instance that does not take and finish its task within ``inp.reach_seconds`` (a tenth
of the lifetime, 2 to 30 s: ``policies.renewal.rotation_reach``) is reported unreachable,
not retried: the next run asks again, and an instance cut off from Temporal renews its
own certificates past ``policies.renewal.FALLBACK_AT`` of their lifetime. The report is
the result and, summarized, the memo and the ``CloudlessPhase`` search attribute, so the
Temporal UI shows what each run renewed.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, TimeoutError, TimeoutType

with workflow.unsafe.imports_passed_through():
    from activities.certs import CertRotationActivities
    from cloudless.contracts import certs
    from cloudless.contracts.names import SA_PHASE
    from cloudless.model import (
        CertRotationInput,
        CertRotationReport,
        InstanceRenewal,
        RenewCertificatesInput,
    )

_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=3,
)


@workflow.defn(name=certs.WORKFLOW.name)
class CertRotationWorkflow:
    @workflow.run
    async def run(self, inp: CertRotationInput) -> CertRotationReport:
        report = CertRotationReport(cluster=inp.cluster, force=inp.force, started_at=workflow.now())
        found = await workflow.execute_activity_method(
            CertRotationActivities.coordinator_instances,
            inp,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )
        answers = await asyncio.gather(
            *(self._renew(inp, instance) for instance in found.instances),
            return_exceptions=True,
        )
        for instance, answer in zip(found.instances, answers, strict=True):
            if isinstance(answer, InstanceRenewal):
                report.instances.append(answer)
            elif isinstance(answer, ActivityError):
                report.unreachable[instance] = _why(answer, inp.reach_seconds)
            else:
                raise answer  # a bug here: fail the task, not the run
        report.finished_at = workflow.now()
        renewed = report.renewed
        phase = "Unreachable" if report.unreachable else ("Renewed" if renewed else "Current")
        workflow.upsert_search_attributes([SA_PHASE.value_set(phase)])
        workflow.upsert_memo(
            {
                "renewed": renewed,
                "instances": [i.instance for i in report.instances],
                "unreachable": sorted(report.unreachable),
            }
        )
        return report

    @staticmethod
    async def _renew(inp: CertRotationInput, instance: str) -> InstanceRenewal:
        return await workflow.execute_activity_method(
            CertRotationActivities.renew_coordinator_certificates,
            RenewCertificatesInput(issued_before=workflow.now() if inp.force else None),
            task_queue=certs.coordinator_task_queue(inp.cluster, instance),
            schedule_to_start_timeout=timedelta(seconds=inp.reach_seconds),
            # A file or two and one ledger Update; an instance that died holding it must
            # not hold up the next runs (which never overlap) for long.
            start_to_close_timeout=timedelta(seconds=inp.reach_seconds),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


def _why(err: ActivityError, reach_seconds: float) -> str:
    """Why an instance gave no answer, in words an operator acts on."""
    cause = err.cause
    if isinstance(cause, TimeoutError) and cause.type == TimeoutType.SCHEDULE_TO_START:
        return (
            f"did not take its renewal within {reach_seconds:g}s: stopped, or cut off "
            "from Temporal (it renews its own certificates near their expiry)"
        )
    return f"its renewal failed: {cause or err}"[:500]
