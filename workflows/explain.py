"""``explain/<id>``: a dry-run placement, for ``cloudlessctl explain -f manifest.yaml``.

The decision needs the coordinator's node index, which only an activity can reach; this
short workflow is how the CLI (which talks to Temporal only) runs that activity. Nothing
is committed: the ledger is not touched.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.ledger import LedgerActivities
    from cloudless.contracts import explain
    from cloudless.model import ExplainInput, ExplainResult


@workflow.defn(name=explain.WORKFLOW.name)
class ExplainPlacementWorkflow:
    @workflow.run
    async def run(self, inp: ExplainInput) -> ExplainResult:
        return await workflow.execute_activity_method(
            LedgerActivities.explain_placement,
            inp,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(
                maximum_attempts=3, non_retryable_error_types=["ManifestError"]
            ),
        )
