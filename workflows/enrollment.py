"""``enrollment/<jti>``: admit a node that presents a valid bootstrap token and a CSR.

The gateway has already checked the token's signature; the raw token never enters
history. This workflow enforces the rest durably: expiry against workflow time (with the
same capped clock-skew leeway as the gateway, ``cloudless.tokens.expiry_error``), the
optional name/label binding, single use of the token id (recorded in the ledger), then
signs the node certificate and starts the node's entity workflow.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.ledger import LedgerActivities
    from activities.pki import PKIActivities
    from cloudless.contracts import enrollment
    from cloudless.model import (
        ConsumeTokenInput,
        EnrollmentInput,
        EnrollmentResult,
        SignCertificateInput,
    )
    from cloudless.tokens import binding_error as token_binding_error
    from cloudless.tokens import expiry_error as token_expiry_error

_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=5), maximum_attempts=10)
#: Workflows started before this change checked expiry with a flat 30 s leeway; replaying
#: their histories must take the same decision (workflows/README.md, "Changing a workflow").
LEEWAY_CAPPED = "enrollment-leeway-capped"
_OLD_LEEWAY = timedelta(seconds=30)


def expiry_error(inp: EnrollmentInput, now: datetime) -> str | None:
    """Why the token has expired at workflow time ``now``, or None: the gateway's rule
    (small leeway, capped at the token's lifetime). Without the issue time, no leeway."""
    issued_at = inp.token_issued_at or inp.token_expires_at
    return token_expiry_error(inp.token_expires_at, now, issued_at=issued_at)


def binding_error(inp: EnrollmentInput) -> str | None:
    """The token's optional binding to a node name and labels, checked against the node."""
    return token_binding_error(
        inp.bound_node_name, inp.bound_labels, inp.record.node_id, inp.record.labels
    )


@workflow.defn(name=enrollment.WORKFLOW.name)
class EnrollmentWorkflow:
    @workflow.run
    async def run(self, inp: EnrollmentInput) -> EnrollmentResult:
        now = workflow.now()
        if workflow.patched(LEEWAY_CAPPED):
            expired = expiry_error(inp, now)
        elif inp.token_expires_at + _OLD_LEEWAY <= now:
            expired = (
                f"enrollment token expired at {inp.token_expires_at.isoformat()}; mint a new "
                "one with `cloudlessctl token create`"
            )
        else:
            expired = None
        if expired is not None:
            raise ApplicationError(expired, type="TokenExpired", non_retryable=True)
        if reason := binding_error(inp):
            raise ApplicationError(reason, type="TokenBindingMismatch", non_retryable=True)
        await workflow.execute_activity_method(
            LedgerActivities.consume_enrollment_token,
            ConsumeTokenInput(
                jti=inp.jti,
                expires_at=inp.token_expires_at,
                node_id=inp.record.node_id,
                bound_to_node=inp.bound_node_name == inp.record.node_id,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )
        signed = await workflow.execute_activity_method(
            PKIActivities.sign_node_certificate,
            SignCertificateInput(
                cluster=inp.cluster, node_id=inp.record.node_id, csr_pem=inp.csr_pem
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )
        record = inp.record.model_copy(
            update={
                "certificate_not_after": signed.not_after,
                "certificate_serial": signed.serial,
                "enrolled_at": now,
            }
        )
        await workflow.execute_activity_method(
            LedgerActivities.register_node,
            record,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )
        return EnrollmentResult(
            node_id=record.node_id,
            certificate_pem=signed.certificate_pem,
            ca_pem=signed.ca_pem,
            cluster=inp.cluster,
        )
