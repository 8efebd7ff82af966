"""Who is calling, and refusing them properly: every refusal is audited (durably, before
the RPC answers), logged and turned into the right gRPC status."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
import structlog
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from cloudless import tls
from cloudless.contracts import gone
from cloudless.errors import SecretError
from cloudless.pki import Identity
from cloudless.revocation import RevocationList
from cloudless.revocation import reason as revocation_reason
from cloudless.secrets.audit import AuditLog
from workers.secrets.validation import ref_problems

log = structlog.get_logger("cloudless.secrets")

Context = grpc.aio.ServicerContext[Any, Any]
_T = TypeVar("_T")

#: The audit actor of a caller whose certificate names no Cloudless identity.
ANONYMOUS = "anonymous"

#: gRPC status of each refusal type the secret workflow's validators raise.
CODE_BY_TYPE = {
    "NotFound": grpc.StatusCode.NOT_FOUND,
    "AlreadyExists": grpc.StatusCode.ALREADY_EXISTS,
    "FailedPrecondition": grpc.StatusCode.FAILED_PRECONDITION,
    "Aborted": grpc.StatusCode.ABORTED,
    "PermissionDenied": grpc.StatusCode.PERMISSION_DENIED,
    "InvalidArgument": grpc.StatusCode.INVALID_ARGUMENT,
    "ResourceExhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class Refusals:
    """The caller checks and refusals of one cluster's SecretsService."""

    def __init__(
        self, cluster: str, audit: AuditLog, revocations: RevocationList | None = None
    ) -> None:
        self._cluster = cluster
        self._audit = audit
        self._revocations = revocations

    async def caller(self, context: Context, op: str, **fields: Any) -> Identity:
        """The caller's certificate identity, or an audited UNAUTHENTICATED refusal.

        The TLS handshake already proved the certificate chains to the cluster CA; what is
        left is that it names an identity of *this* cluster (one CA may sign for several).
        A refusal is audited like any other: the actor is what the certificate claimed,
        or ``anonymous`` when it claimed no Cloudless identity.
        """
        identity = tls.peer_identity(context)
        revoked = None
        if self._revocations:  # something is revoked: look at this certificate
            pem = tls.peer_certificate_pem(context)
            revoked = self._revocations.revoked(pem) if pem else None
        if identity is not None and revoked is not None:
            reason = revocation_reason(revoked)
            await self.deny(
                context, op, identity, grpc.StatusCode.UNAUTHENTICATED, reason, **fields
            )
        if identity is not None and identity.cluster == self._cluster:
            return identity
        required = f"a client certificate of cluster {self._cluster} is required"
        if identity is None:
            actor = ANONYMOUS
            reason = f"{required}; the caller's certificate names no Cloudless identity"
        else:
            actor = identity.uri()
            reason = f"{required}, not one of cluster {identity.cluster}"
        await self.deny(context, op, actor, grpc.StatusCode.UNAUTHENTICATED, reason, **fields)
        raise AssertionError("unreachable")

    async def deny(
        self,
        context: Context,
        op: str,
        caller: Identity | str,
        code: grpc.StatusCode,
        reason: str,
        **fields: Any,
    ) -> None:
        """Audit the refusal (durably, before answering), log it, abort the RPC.

        ``caller`` is the verified identity, or the actor string of an unauthenticated one.
        ``reason`` and ``fields`` never hold a value or a token (token ids only).
        """
        outcome = (
            "FAILED"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
            else "DENIED"
        )
        actor = caller.uri() if isinstance(caller, Identity) else caller
        await self._audit.commit(op, outcome, actor, source=context.peer(), reason=reason, **fields)
        log.info(
            "secrets.refused", operation=op, code=code.name, actor=actor, reason=reason, **fields
        )
        await context.abort(code, reason)

    async def guard(
        self,
        context: Context,
        op: str,
        caller: Identity,
        work: Awaitable[_T],
        **fields: Any,
    ) -> _T:
        """Run ``work``; turn refusals into an audited gRPC status."""
        try:
            return await work
        except SecretError as err:
            code = grpc.StatusCode[err.code]
            await self.deny(context, op, caller, code, str(err), **fields)
        except WorkflowUpdateFailedError as err:
            cause: BaseException | None = err.cause
            while cause is not None and not isinstance(cause, ApplicationError):
                cause = cause.__cause__
            if isinstance(cause, ApplicationError):
                code = CODE_BY_TYPE.get(cause.type or "", grpc.StatusCode.INTERNAL)
                await self.deny(context, op, caller, code, cause.message, **fields)
            await self.deny(context, op, caller, grpc.StatusCode.INTERNAL, str(err), **fields)
        except RPCError as err:
            if gone(err):
                what = f"{fields.get('namespace', '')}/{fields.get('name', '')}"
                await self.deny(
                    context,
                    op,
                    caller,
                    grpc.StatusCode.NOT_FOUND,
                    f"secret {what} does not exist",
                    **fields,
                )
            await self.deny(
                context,
                op,
                caller,
                grpc.StatusCode.UNAVAILABLE,
                f"Temporal unavailable: {err.message}",
                **fields,
            )
        raise AssertionError("unreachable")

    async def require_admin(self, context: Context, op: str, caller: Identity, **f: Any) -> None:
        if caller.role != "admin":
            await self.deny(
                context,
                op,
                caller,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{op} needs an admin certificate; {caller.role} {caller.name} has none",
                **f,
            )

    async def check_ref(
        self, context: Context, op: str, caller: Identity, namespace: str, name: str
    ) -> None:
        problems = ref_problems(namespace, name)
        await self.invalid(context, op, caller, problems, namespace=namespace, name=name)

    async def invalid(
        self, context: Context, op: str, caller: Identity, problems: list[str], **fields: Any
    ) -> None:
        """Refuse (INVALID_ARGUMENT, audited) with every problem found, if there are any."""
        if problems:
            await self.deny(
                context, op, caller, grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems), **fields
            )
