"""GatewayService: where agents enroll, heartbeat and renew their certificates. Served by
the coordinator over TLS.

The gateway checks everything that can be checked without durable state (input shape,
token signature, the CSR, the caller's certificate) so junk never reaches Temporal, then
runs the enrollment workflow, which enforces expiry, binding and single use durably, or,
for a renewal, the ``renew_certificate`` Update of ``node/<id>``, which refuses a removed
node and bounds how often a node is issued a certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import structlog
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from cloudless import nodefacts
from cloudless.api import gateway_pb2, gateway_pb2_grpc
from cloudless.contracts import NodeHandle, enrollment
from cloudless.errors import EnrollmentError, PKIError
from cloudless.model import (
    EnrollmentInput,
    NodeRecord,
    RenewCertificateInput,
    Resources,
    SignCertificateResult,
)
from cloudless.pki import cert_serial, check_csr, check_renewal_csr, is_dns_label
from cloudless.revocation import RevocationList
from cloudless.revocation import reason as revocation_reason
from cloudless.spec import label_problems
from cloudless.tls import peer_certificate_pem, peer_identity
from cloudless.tokens import TokenVerifier
from workers.liveness import LivenessMonitor

log = structlog.get_logger("cloudless.gateway")

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
KNOWN_RUNTIMES = frozenset({"docker", "exec"})
MAX_TOKEN_BYTES = 8 * 1024
MAX_CSR_BYTES = 16 * 1024
MAX_LABELS = 64
#: Heartbeats acknowledged on the stream (1st, then every n-th).
ACK_EVERY = 10

#: Token problems are authentication failures; binding problems are authorization ones.
_STATUS_BY_TYPE = {
    "TokenExpired": grpc.StatusCode.UNAUTHENTICATED,
    "TokenReused": grpc.StatusCode.UNAUTHENTICATED,
    "TokenBindingMismatch": grpc.StatusCode.PERMISSION_DENIED,
    "NodeAlreadyEnrolled": grpc.StatusCode.ALREADY_EXISTS,
    "InvalidCSR": grpc.StatusCode.INVALID_ARGUMENT,
}
#: Why ``node/<id>`` refused a renewal, as the code the agent sees.
_RENEWAL_STATUS = {
    "NodeRemoved": grpc.StatusCode.PERMISSION_DENIED,
    "NodeNotEnrolled": grpc.StatusCode.FAILED_PRECONDITION,
    "RenewalInProgress": grpc.StatusCode.ABORTED,
    "RenewalTooSoon": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "InvalidCSR": grpc.StatusCode.INVALID_ARGUMENT,
}
#: How long a renewal may take end to end (the Update signs with the CA and records it).
RENEW_TIMEOUT = timedelta(seconds=20)
#: Renewals this gateway takes to Temporal at once; more wait for a slot up to
#: ``RENEWAL_QUEUE_WAIT`` seconds and are then answered UNAVAILABLE ("busy", the agent
#: retries with backoff, or asks another coordinator). Without a bound, a fleet renewing
#: faster than the coordinator can sign (``bench/cert_rotation.py``: 2,000 nodes within
#: 20 s on 2 cores, ~100/s against ~40/s) took every request to Temporal at once: workflow
#: tasks queued for seconds, attempts timed out and were retried into a storm, and
#: heartbeats on the same listener went unread for minutes.
MAX_RENEWALS_IN_FLIGHT = 16
RENEWAL_QUEUE_WAIT = 5.0
#: Nodes remembered as refused RESOURCE_EXHAUSTED (until when), answered without Temporal.
MAX_REFUSED_NODES = 4096


def validate_enroll_request(req: gateway_pb2.EnrollRequest) -> list[str]:
    """Every problem with an enrollment request, each saying what is wrong and the fix."""
    problems = []
    if not is_dns_label(req.node_name):
        problems.append(
            f"node_name {req.node_name!r} must be a DNS-1123 label "
            "(lowercase letters, digits and '-', at most 63 characters)"
        )
    problems += validate_facts(req)
    if not req.csr_pem or len(req.csr_pem) > MAX_CSR_BYTES:
        problems.append(f"csr_pem must be a PEM CSR of at most {MAX_CSR_BYTES} bytes")
    if not req.token or len(req.token) > MAX_TOKEN_BYTES:
        problems.append("token is missing or too large; mint one with `cloudlessctl token create`")
    return problems


def validate_facts(req: gateway_pb2.EnrollRequest | gateway_pb2.NodeFacts) -> list[str]:
    """Problems with what a node says it offers (at enrollment and on every new stream)."""
    problems = []
    if req.zone and not is_dns_label(req.zone):
        problems.append(f"zone {req.zone!r} must be a DNS-1123 label, e.g. zone-a")
    if len(req.labels) > MAX_LABELS:
        problems.append(f"at most {MAX_LABELS} labels are allowed, got {len(req.labels)}")
    problems += label_problems(req.labels)
    problems += nodefacts.problems(req.labels)
    cap = req.capacity
    if not 1 <= cap.cpu_millis <= 1024 * 1000:
        problems.append(f"capacity.cpu_millis {cap.cpu_millis} must be within 1..1024000")
    if not 16 * 2**20 <= cap.memory_bytes <= 16 * 2**40:
        problems.append(f"capacity.memory_bytes {cap.memory_bytes} must be within 16Mi..16Ti")
    if not 0 <= cap.storage_bytes <= 2**60:
        problems.append(f"capacity.storage_bytes {cap.storage_bytes} must be within 0..1Ei")
    m = _ADDRESS.match(req.address)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        problems.append(f"address {req.address!r} must be host:port where the agent listens")
    unknown = set(req.runtimes) - KNOWN_RUNTIMES
    if unknown or not req.runtimes:
        problems.append(
            f"runtimes {sorted(req.runtimes)} must be a non-empty subset of "
            f"{sorted(KNOWN_RUNTIMES)}"
        )
    return problems


def record_from_facts(
    node_id: str, facts: gateway_pb2.EnrollRequest | gateway_pb2.NodeFacts
) -> NodeRecord:
    return NodeRecord(
        node_id=node_id,
        zone=facts.zone or "default",
        labels=dict(facts.labels),
        capacity=Resources(
            cpu_millis=facts.capacity.cpu_millis,
            memory_bytes=facts.capacity.memory_bytes,
            storage_bytes=facts.capacity.storage_bytes,
        ),
        address=facts.address,
        runtimes=sorted(facts.runtimes),
        agent_version=facts.agent_version,
    )


class InvalidationFeed:
    """Secrets changed on this coordinator, told to every agent on its next heartbeat.

    A bounded log with sequence numbers: each stream remembers how far it has read, so a
    change reaches every connected agent once, within one heartbeat interval.
    """

    def __init__(self, keep: int = 1024) -> None:
        self._seq = 0
        self._items: deque[tuple[int, str]] = deque(maxlen=keep)

    def publish(self, key: str) -> None:
        self._seq += 1
        self._items.append((self._seq, key))

    @property
    def head(self) -> int:
        return self._seq

    def since(self, seq: int) -> tuple[int, list[str]]:
        if seq >= self._seq:
            return seq, []
        return self._seq, sorted({key for s, key in self._items if s > seq})


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self,
        client: Client,
        cluster: str,
        verifier: TokenVerifier,
        liveness: LivenessMonitor | None = None,
        *,
        agent_port: int = 0,
        invalidations: InvalidationFeed | None = None,
        revocations: RevocationList | None = None,
        max_renewals: int = MAX_RENEWALS_IN_FLIGHT,
        renewal_queue_wait: float = RENEWAL_QUEUE_WAIT,
    ) -> None:
        if max_renewals < 1 or renewal_queue_wait < 0:
            raise ValueError(
                f"max_renewals ({max_renewals}) must be at least 1 and renewal_queue_wait "
                f"({renewal_queue_wait}) not negative"
            )
        self._client = client
        self._cluster = cluster
        self._verifier = verifier
        self._liveness = liveness
        self._agent_port = agent_port
        self.invalidations = invalidations or InvalidationFeed()
        self._revocations = revocations
        #: Nodes with a renewal in flight through this gateway: one at a time per node.
        self._renewing: set[str] = set()
        #: node -> (monotonic deadline, message): told "too soon" by ``node/<id>``; the
        #: same answer is given here until then, without asking Temporal again.
        self._refused: dict[str, tuple[float, str]] = {}
        #: Slots for renewals taken to Temporal (``MAX_RENEWALS_IN_FLIGHT``).
        self._renewal_slots = asyncio.Semaphore(max_renewals)
        self._max_renewals = max_renewals
        self._renewal_queue_wait = renewal_queue_wait

    def _revoked(self, pem: bytes | None) -> str | None:
        """Why the peer's certificate is refused, if it was revoked (its node removed or
        its user revoked). With nothing revoked it costs one truth test."""
        if not self._revocations or pem is None:
            return None
        whose = self._revocations.revoked(pem)
        return None if whose is None else self._refusal(whose)

    @staticmethod
    def _refusal(whose: str) -> str:
        """The refusal's text for a revoked certificate (``whose``: see ``revoked``)."""
        return (
            f"{revocation_reason(whose)}; enroll the device again with a new token "
            "(`cloudlessctl token create`)"
        )

    async def Heartbeat(
        self,
        request_iterator: AsyncIterator[gateway_pb2.HeartbeatRequest],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[gateway_pb2.HeartbeatResponse]:
        """One stream per agent; the node id is the verified certificate's identity."""
        ident = peer_identity(context)
        if ident is None or ident.role != "node" or ident.cluster != self._cluster:
            who = ident.uri() if ident else "a client without a certificate"
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{who} may not send heartbeats; a node certificate of cluster "
                f"{self._cluster!r} is required",
            )
            return
        pem = peer_certificate_pem(context)
        if (refused := self._revoked(pem)) is not None:
            log.warning("heartbeat.refused", node=ident.name, reason="certificate revoked")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
            return
        # The stream keeps its certificate: its serial is taken once, here, and each beat
        # looks it up in the list as last refreshed (a dictionary lookup; through the
        # bounded certificate cache, a fleet larger than the cache parsed every beat).
        revocations = self._revocations
        serial = revocations.serial(pem) if revocations is not None and pem else None
        if self._liveness is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "liveness is not enabled")
            return
        monitor, node_id = self._liveness, ident.name
        token = 0
        cursor = self.invalidations.head
        try:
            async for beat in request_iterator:
                if revocations is not None and (whose := revocations.whose(serial)) is not None:
                    # Revoked while its stream was open: cut it off.
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, self._refusal(whose))
                if not token:
                    # Facts first, so a changed address is known before the node is
                    # probed or reconciled on its way back to Ready.
                    if beat.HasField("facts"):
                        problems = validate_facts(beat.facts)
                        if problems:
                            await context.abort(
                                grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems)
                            )
                        monitor.facts(record_from_facts(node_id, beat.facts))
                    token = monitor.connected(node_id, beat.stream_epoch, beat.moved)
                monitor.beat(node_id, beat)
                cursor, changed = self.invalidations.since(cursor)
                # Acknowledge the first beat and then every ACK_EVERY-th: the responses
                # only carry settings, and skipping most halves the per-beat cost. Secret
                # invalidations go out on the next beat, whatever its number.
                if changed or beat.seq % ACK_EVERY == 1 or beat.closing:
                    yield gateway_pb2.HeartbeatResponse(
                        seq=beat.seq,
                        interval_seconds=monitor.interval,
                        invalidated_secrets=changed,
                    )
        finally:
            if token:
                monitor.disconnected(node_id, token)

    async def RenewCertificate(
        self,
        request: gateway_pb2.RenewCertificateRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> gateway_pb2.RenewCertificateResponse:
        """A certificate for a new key, for the node the caller's certificate names.

        Only on the agent listener (mutual TLS): the identity comes from the verified peer
        certificate, never from the CSR, whose names the CA ignores anyway.
        """
        ident = peer_identity(context)
        pem = peer_certificate_pem(context)
        if ident is None or pem is None or ident.role != "node" or ident.cluster != self._cluster:
            who = ident.uri() if ident else "a client without a certificate"
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{who} may not renew a node certificate; present the node certificate "
                f"being renewed (cluster {self._cluster!r}) on the agent listener",
            )
            raise AssertionError("unreachable")
        node_id = ident.name
        if (refused := self._revoked(pem)) is not None:
            log.warning("renew.refused", node=node_id, reason="certificate revoked")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        if not request.csr_pem or len(request.csr_pem) > MAX_CSR_BYTES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"csr_pem must be a PEM CSR of at most {MAX_CSR_BYTES} bytes",
            )
        try:
            key_id = check_renewal_csr(request.csr_pem, pem)
        except PKIError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"csr_pem: {err}")
            raise
        now = time.monotonic()
        held = self._refused.get(node_id)
        if held is not None:
            if held[0] > now:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, held[1])
            del self._refused[node_id]
        if node_id in self._renewing:
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"a certificate renewal for node {node_id} is already in progress; retry",
            )
        self._renewing.add(node_id)
        try:
            async with self._renewal_slot(node_id, context):
                signed = await self._renew(node_id, request, key_id, pem, context, now)
        finally:
            self._renewing.discard(node_id)
        log.info("renew.issued", node=node_id, serial=signed.serial, not_after=signed.not_after)
        return gateway_pb2.RenewCertificateResponse(
            certificate_pem=signed.certificate_pem.encode(), ca_pem=signed.ca_pem.encode()
        )

    @contextlib.asynccontextmanager
    async def _renewal_slot(
        self, node_id: str, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[None]:
        """One of the ``max_renewals`` slots for taking a renewal to Temporal, waited for
        up to ``renewal_queue_wait`` seconds; past that the node is told to come back."""
        try:
            await asyncio.wait_for(self._renewal_slots.acquire(), self._renewal_queue_wait)
        except TimeoutError:
            log.info("renew.busy", node=node_id)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"busy: this coordinator is renewing {self._max_renewals} certificates and "
                f"others are waiting; retry later (node {node_id})",
            )
            raise  # abort raised already
        try:
            yield
        finally:
            self._renewal_slots.release()

    async def _renew(
        self,
        node_id: str,
        request: gateway_pb2.RenewCertificateRequest,
        key_id: str,
        pem: bytes,
        context: grpc.aio.ServicerContext[object, object],
        now: float,
    ) -> SignCertificateResult:
        """The ``renew_certificate`` Update of ``node/<id>``; its refusals as the codes the
        agent sees."""
        try:
            return await NodeHandle(self._client, node_id).renew_certificate(
                RenewCertificateInput(
                    csr_pem=request.csr_pem.decode("ascii", errors="replace"),
                    key_id=key_id,
                    presented_serial=cert_serial(pem),
                ),
                rpc_timeout=RENEW_TIMEOUT,
            )
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            kind = cause.type if isinstance(cause, ApplicationError) else None
            message = cause.message if isinstance(cause, ApplicationError) else str(err)
            code = _RENEWAL_STATUS.get(kind or "", grpc.StatusCode.INTERNAL)
            log.warning("renew.refused", node=node_id, reason=message)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self._hold(node_id, message, now)
            await context.abort(code, message)
            raise
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:  # no node/<id> running: removed
                message = (
                    f"node {node_id!r} is not enrolled (removed, or never finished "
                    "enrolling); enroll the device again with a new token "
                    "(`cloudlessctl token create`)"
                )
                log.warning("renew.refused", node=node_id, reason=message)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"renewal not recorded: {err}")
            raise
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            # It may still complete: a retry for the same key gets that certificate.
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the renewal did not finish within {RENEW_TIMEOUT.total_seconds():g}s; "
                "retry for the same key",
            )
            raise

    def _hold(self, node_id: str, message: str, now: float) -> None:
        """Answer the node's renewals "too soon" here for the next second, so a node
        retrying in a loop costs Temporal at most one Update a second."""
        if len(self._refused) >= MAX_REFUSED_NODES:
            del self._refused[next(iter(self._refused))]
        self._refused[node_id] = (now + 1.0, message)

    async def Enroll(
        self,
        request: gateway_pb2.EnrollRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> gateway_pb2.EnrollResponse:
        problems = validate_enroll_request(request)
        if problems:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        try:
            check_csr(request.csr_pem)
        except PKIError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"csr_pem: {err}")
        try:
            claims = self._verifier.verify(request.token)
        except EnrollmentError as err:
            log.warning("enroll.refused", node=request.node_name, reason=str(err))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(err))
            raise
        record = record_from_facts(request.node_name, request)
        inp = EnrollmentInput(
            cluster=self._cluster,
            jti=claims.jti,
            token_expires_at=claims.expires_at,
            token_issued_at=claims.issued_at,
            bound_node_name=claims.node_name,
            bound_labels=dict(claims.labels),
            csr_pem=request.csr_pem.decode("ascii", errors="replace"),
            record=record,
        )
        try:
            result = await enrollment.enroll(
                self._client, inp, execution_timeout=timedelta(minutes=2)
            )
        except WorkflowAlreadyStartedError:
            reason = (
                "enrollment token was already used; tokens are single-use, mint a new one "
                "with `cloudlessctl token create`"
            )
            log.warning("enroll.refused", node=request.node_name, reason=reason)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
            raise
        except WorkflowFailureError as err:
            cause: BaseException | None = err.cause
            while cause is not None and not isinstance(cause, ApplicationError):
                cause = cause.__cause__
            if isinstance(cause, ApplicationError):
                code = _STATUS_BY_TYPE.get(cause.type or "", grpc.StatusCode.INTERNAL)
                log.warning("enroll.refused", node=request.node_name, reason=cause.message)
                await context.abort(code, cause.message)
            await context.abort(grpc.StatusCode.INTERNAL, f"enrollment failed: {err}")
            raise
        log.info("enroll.accepted", node=result.node_id)
        return gateway_pb2.EnrollResponse(
            node_id=result.node_id,
            certificate_pem=result.certificate_pem.encode(),
            ca_pem=result.ca_pem.encode(),
            cluster=result.cluster,
            agent_port=self._agent_port,
        )
