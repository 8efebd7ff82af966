"""``reaper/<cluster>``: release reservations nobody owns, stop replicas nobody places.

Started by the Temporal Schedule ``reaper/<cluster>`` (every coordinator keeps it at its
``--reap-interval``) or on demand (``cloudlessctl reap``). One run is two bounded,
idempotent activities, the decisions in :mod:`policies.reaper`:

1. ``reap_workloads``: every workload the ledger holds reservations for whose workflow
   run is over (terminated, failed, timed out, completed, absent) or was superseded by a
   newer run has them released, so the ledger again equals what live replicas request;
2. ``reap_orphans``: every Ready node's agent is asked what it runs, and what no running
   workload places there (after a grace period) is stopped.

The run's report is its result and, summarized, its memo, so the Temporal UI shows what
each run reaped.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.reaper import ReaperActivities
    from cloudless.contracts import reaper
    from cloudless.model import (
        ReaperInput,
        ReapOrphansInput,
        ReapReport,
        ReapWorkloadsInput,
    )

_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
)


@workflow.defn(name=reaper.WORKFLOW.name)
class ReaperWorkflow:
    @workflow.run
    async def run(self, inp: ReaperInput) -> ReapReport:
        report = ReapReport(cluster=inp.cluster, started_at=workflow.now())
        report.workloads = await workflow.execute_activity_method(
            ReaperActivities.reap_workloads,
            ReapWorkloadsInput(
                cluster=inp.cluster, max_reaps=inp.max_reaps, max_checks=inp.max_checks
            ),
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=_RETRY,
        )
        # After the reservations: the replicas of a workload just reaped are orphans now.
        report.orphans = await workflow.execute_activity_method(
            ReaperActivities.reap_orphans,
            ReapOrphansInput(
                cluster=inp.cluster, grace_seconds=inp.grace_seconds, max_nodes=inp.max_nodes
            ),
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=_RETRY,
        )
        report.finished_at = workflow.now()
        workflow.upsert_memo(
            {
                "reaped_workloads": [r.workload for r in report.workloads.reaped],
                "stopped_replicas": [f"{s.node_id}/{s.replica_id}" for s in report.orphans.stopped],
                "unreachable_nodes": sorted(report.orphans.errors),
            }
        )
        return report
