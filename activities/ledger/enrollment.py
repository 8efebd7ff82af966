"""Enrollment's ledger side: a token's single use, then the node's entity workflow."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.ledger.base import LedgerBase
from cloudless.contracts import NodeHandle
from cloudless.model import ConsumeTokenInput, LedgerOp, NodeRecord


class EnrollmentActivities(LedgerBase):
    @activity.defn(name="consume_enrollment_token")
    async def consume_enrollment_token(self, inp: ConsumeTokenInput) -> None:
        """Record the token's single use through the batched writer (an enrollment burst
        would otherwise exceed the ledger's 10 in-flight Updates); a retry is a no-op."""
        done = await self.writer.submit(LedgerOp(consume_token=inp))
        if done.error_type in ("TokenReused", "NodeAlreadyEnrolled"):
            raise ApplicationError(done.error, type=done.error_type, non_retryable=True)
        if not done.consumed:
            raise ApplicationError(done.error or "token not recorded", type=done.error_type)

    @activity.defn(name="register_node")
    async def register_node(self, record: NodeRecord) -> None:
        """Start ``node/<id>`` or, for a node enrolling again, signal the running one."""
        await NodeHandle(self._client, record.node_id).enroll(self._cluster, record)
