"""``ca-rotation/<cluster>``: rotate the cluster CA through an overlap.

Started on demand (``cloudlessctl certs rotate-ca --overlap D``); one at a time. Each
stage runs on every live coordinator instance, on its own task queue, and is idempotent
(:mod:`cloudless.pki.rotation`), so a restart of the workflow's worker, or of an
instance, repeats nothing harmful:

1. ``prepare``: a next CA is made and every coordinator trusts both CAs at once (its
   listeners, its channels, its front, the local admin's ``ca.crt``); the bundle is what
   the coordinators answer every node's next renewal with.
2. wait ``overlap``: every node renews once and so learns the bundle;
3. ``switch``: the new CA issues; each coordinator reissues its own and the admin's
   certificate with it at once; nodes get new-CA certificates at their next renewal;
4. wait ``overlap``: every node renews again, now with the new CA;
5. ``retire``: only the new CA is trusted.

Where it is shows in the ``CloudlessPhase`` search attribute, the memo and the result,
so the Temporal UI shows the rotation as it goes.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.certs import CertRotationActivities
    from cloudless.contracts import certs
    from cloudless.contracts.names import SA_PHASE
    from cloudless.model import (
        CARotationInput,
        CARotationReport,
        CAStageInput,
        CAStageResult,
        CertRotationInput,
    )

_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
)
#: Stages, and the phase shown while each runs and once it is done.
STAGES = (
    ("prepare", "Preparing", "Overlap: trusting both CAs, the old one issues"),
    ("switch", "Switching", "Overlap: trusting both CAs, the new one issues"),
    ("retire", "Retiring", "Done"),
)


@workflow.defn(name=certs.CA_WORKFLOW.name)
class CARotationWorkflow:
    def __init__(self) -> None:
        self._report: CARotationReport | None = None

    @workflow.run
    async def run(self, inp: CARotationInput) -> CARotationReport:
        report = self._report = CARotationReport(cluster=inp.cluster, started_at=workflow.now())
        overlap = timedelta(seconds=inp.overlap_seconds)
        for i, (stage, running, done) in enumerate(STAGES):
            self._phase(running)
            await self._everywhere(inp, stage)
            self._phase(done)
            if i < len(STAGES) - 1:
                await workflow.sleep(overlap)
        report.finished_at = workflow.now()
        return report

    def _phase(self, phase: str) -> None:
        assert self._report is not None
        self._report.phase = phase
        workflow.upsert_search_attributes([SA_PHASE.value_set(phase.split(":")[0])])
        workflow.upsert_memo({"phase": phase, "unreachable": sorted(self._report.unreachable)})

    async def _everywhere(self, inp: CARotationInput, stage: str) -> None:
        """Run ``stage`` on every live instance until each has done it (an instance that
        does not answer is asked again: a stage must reach every coordinator)."""
        assert self._report is not None
        pending: set[str] | None = None
        while pending is None or pending:
            found = await workflow.execute_activity_method(
                CertRotationActivities.coordinator_instances,
                CertRotationInput(cluster=inp.cluster),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_RETRY,
            )
            if pending is None:
                pending = set(found.instances)
            pending &= set(found.instances)  # gone instances answer nothing
            for instance in sorted(pending):
                try:
                    result: CAStageResult = await workflow.execute_activity_method(
                        CertRotationActivities.rotate_ca_stage,
                        CAStageInput(stage=stage),
                        task_queue=certs.coordinator_task_queue(inp.cluster, instance),
                        schedule_to_start_timeout=timedelta(seconds=inp.reach_seconds),
                        start_to_close_timeout=timedelta(seconds=inp.reach_seconds),
                        retry_policy=RetryPolicy(maximum_attempts=1),
                    )
                except ActivityError as err:
                    self._report.unreachable[instance] = f"{stage}: {err.cause or err}"[:500]
                    continue
                self._report.unreachable.pop(instance, None)
                self._report.stages.append(result)
                pending.discard(instance)
            if pending:
                await workflow.sleep(timedelta(seconds=inp.reach_seconds))
