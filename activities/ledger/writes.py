"""Ledger writes the workflows ask for: release (or commit) a plan, publish a node's state,
claim a workload for a workflow's first run, remove a node for good."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.ledger.base import LedgerBase, PlanRejected
from cloudless.model import (
    ClaimWorkloadInput,
    ClaimWorkloadResult,
    CommitPlanInput,
    CommitPlanResult,
    LedgerOp,
    RemoveNodeInput,
    RemoveNodeResult,
    UpsertNodeInput,
)


class LedgerWriteActivities(LedgerBase):
    @activity.defn(name="commit_plan")
    async def commit_plan(self, plan: CommitPlanInput) -> CommitPlanResult:
        try:
            result = await self.commit(plan)
        except PlanRejected as err:
            raise ApplicationError(str(err), type="PlanRejected", non_retryable=True) from err
        self.scheduler.plan_committed(plan, result)
        if result.woken:
            await self._wake(result.woken, "replicas were released")
        return result

    @activity.defn(name="publish_node")
    async def publish_node(self, inp: UpsertNodeInput) -> None:
        done = await self.writer.submit(LedgerOp(upsert=inp))
        if done.upsert is None:
            raise ApplicationError(done.error or "node upsert failed", type=done.error_type)
        result = done.upsert
        self.scheduler.node_changed(result)
        if result.woken:
            await self._wake(result.woken, f"node {inp.record.node_id} is {inp.state.value}")

    @activity.defn(name="claim_workload")
    async def claim_workload(self, inp: ClaimWorkloadInput) -> ClaimWorkloadResult:
        """A workload workflow's first run claims its workload: what earlier runs of it
        left in the ledger is released, and the run gets its owner token. A retry claims
        again, which is harmless: the run has placed nothing yet."""
        done = await self.writer.submit(LedgerOp(claim=inp))
        if done.claimed is None:
            raise ApplicationError(done.error or "claim failed", type=done.error_type)
        result = done.claimed
        self.scheduler.wrote(result.owner, changed_nodes=bool(result.released))
        if result.released:
            activity.logger.info(
                "released %d replica(s) of %s left by earlier runs",
                sum(result.released.values()),
                inp.workload,
            )
        if result.woken:
            await self._wake(result.woken, f"earlier runs of {inp.workload} released room")
        return result

    @activity.defn(name="remove_node")
    async def remove_node(self, inp: RemoveNodeInput) -> RemoveNodeResult:
        """Forget a removed node in the ledger: what it still held is freed and its
        certificate is revoked (refused by this coordinator at once, by the others within
        their refresh interval), and so is every other unexpired certificate renewals issued
        it. A retry finds the node gone and revokes again: harmless."""
        done = await self.writer.submit(LedgerOp(remove_node=inp))
        if done.removed is None:
            raise ApplicationError(done.error or "node removal failed", type=done.error_type)
        if done.removed.revoked and self.revocations is not None:
            for serial in (inp.certificate_serial, *inp.more_certificates):
                self.revocations.add(serial, inp.node_id)
        self.scheduler.mark_stale()  # the node left the ledger: the index reloads
        activity.logger.info(
            "removed node %s (released %d replica(s), certificate %s)",
            inp.node_id,
            sum(done.removed.released.values()),
            "revoked" if done.removed.revoked else "not revoked: serial unknown or expired",
        )
        return done.removed
