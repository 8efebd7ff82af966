"""The node certificate renews itself: a new key, a CSR, the gateway's ``RenewCertificate``.

The agent renews at about two thirds of its certificate's lifetime (jittered; see
:mod:`policies.renewal`), authenticated by the certificate it has, over the agent
listener of a coordinator it knows (the heartbeat stream's first). A failed attempt is
retried with backoff, with the same key (so a retry whose first answer was lost
gets the same certificate), until the certificate expires. The new key and certificate
are committed to the state directory crash-safely (:func:`save_material`), then every use
of the identity switches to them: the callbacks given swap the AgentService's server
certificate (for new handshakes), reopen the heartbeat stream and reconnect the secrets
channels, none of which drops work in flight.

A certificate that expired cannot be renewed (the gateway's handshake refuses it): the
node must enroll again, and the agent says so, naming the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc
import structlog

from agent.enroll import GATEWAY_SERVER_NAME, split_addresses
from cloudless.api import gateway_pb2, gateway_pb2_grpc
from cloudless.errors import CloudlessError, PKIError
from cloudless.pki import (
    accept_trust_update,
    cert_not_after,
    generate_private_key_pem,
    identity_from_cert,
    load_trust_bundle,
    make_csr,
    verify_issued_by,
)
from cloudless.pki.files import replace_file
from cloudless.tls import (
    CA_FILE,
    RENEW_CERT_FILE,
    RENEW_KEY_FILE,
    TLSMaterial,
    finish_interrupted_renewal,
    key_matches,
    save_material,
    secure_channel,
)
from cloudless.tls import certificate_lifetime as lifetime_of
from policies.renewal import Lifetime, renew_at, retry_delay

log = structlog.get_logger("cloudless.agent.renewal")

#: How long one attempt waits for its answer: longer than the gateway lets a renewal take
#: (``workers.gateway.RENEW_TIMEOUT``, 20 s; it then answers UNAVAILABLE itself), so the
#: agent gets the coordinator's answer instead of abandoning a renewal being completed
#: and asking again (a new handshake and Update each) when the coordinator is busiest.
RPC_TIMEOUT = 30.0
#: Codes that mean "that coordinator did not answer": the next one is asked at once.
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

Clock = Callable[[], datetime]
OnRenewed = Callable[[TLSMaterial], Awaitable[None]]


class CertificateExpired(CloudlessError):
    """The node certificate expired: only enrolling again gives the node an identity."""


class RenewalRefused(CloudlessError):
    """The coordinator will never renew this certificate (node removed, certificate revoked)."""


def reenroll_hint(node: str) -> str:
    """How an operator gives a node whose certificate expired (or was revoked) a new one."""
    return (
        f"enroll node {node} again: mint a token bound to it where the coordinator runs "
        f"(`cloudlessctl token create --node {node} > {node}.token`), then restart the "
        f"agent with `--token-file {node}.token`; it enrolls again and keeps its replicas"
    )


def expired_error(node: str, not_after: datetime) -> CertificateExpired:
    return CertificateExpired(
        f"the certificate of node {node} expired at {not_after.isoformat()} and can no "
        f"longer be renewed; {reenroll_hint(node)}"
    )


class CertificateRenewer:
    """Renews the node certificate in ``state_dir`` for as long as the agent runs.

    Args:
        gateways: The coordinators' agent listeners, in the node's order.
        preferred: The one to ask first (the heartbeat stream's), or None.
        on_renewed: Called in order with the new material once it is on disk.
        clock: Wall-clock time (certificates carry wall-clock times).
        rng: Jitter source (seedable in tests).
    """

    def __init__(
        self,
        state_dir: Path,
        material: TLSMaterial,
        gateways: str | Sequence[str],
        *,
        preferred: Callable[[], str | None] = lambda: None,
        on_renewed: Sequence[OnRenewed] = (),
        clock: Clock = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        rpc_timeout: float = RPC_TIMEOUT,
    ) -> None:
        self._state_dir = state_dir
        self.material = material
        self._gateways = split_addresses(gateways)
        if not self._gateways:
            raise ValueError("at least one gateway address is required")
        self._preferred = preferred
        self._on_renewed = list(on_renewed)
        self._clock = clock
        self._rng = rng or random.Random()
        self._rpc_timeout = rpc_timeout
        self.node = material.identity.name
        #: Certificates renewed by this process, and a condition to await the next one.
        self.renewals = 0
        self.changed = asyncio.Condition()
        #: Why renewal stopped for good (expired, refused), once it has.
        self.failure: CloudlessError | None = None

    async def wait_renewals(self, count: int) -> None:
        """Return once this process has renewed ``count`` certificates (raises the final
        failure if renewal stopped before that)."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.renewals >= count or self.failure)
        if self.renewals < count and self.failure is not None:
            raise self.failure

    async def run(self, stop: asyncio.Event) -> None:
        """Renew whenever due until ``stop``; returns early (logging why, in
        :attr:`failure`) once the certificate can no longer be renewed."""
        try:
            while not stop.is_set():
                lifetime = lifetime_of(self.material.cert_pem)
                due = renew_at(lifetime, self._rng.uniform(-1.0, 1.0))
                if await self._sleep_until(due, stop):
                    return
                await self._renew_with_retries(lifetime, stop)
        except (CertificateExpired, RenewalRefused) as err:
            await self._stopped(err)
        except Exception as err:  # a bug: say so loudly rather than die silently
            log.exception("renew.crashed", node=self.node)
            await self._stopped(CloudlessError(f"certificate renewal stopped: {err!r}"))

    async def _stopped(self, err: CloudlessError) -> None:
        log.error("renew.stopped", node=self.node, reason=str(err))
        async with self.changed:
            self.failure = err
            self.changed.notify_all()

    async def _sleep_until(self, when: datetime, stop: asyncio.Event) -> bool:
        """Wait until ``when``; True if stopped meanwhile."""
        delay = (when - self._clock()).total_seconds()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        return stop.is_set()

    async def _renew_with_retries(self, lifetime: Lifetime, stop: asyncio.Event) -> None:
        key_pem = generate_private_key_pem()
        attempt = 0
        while not stop.is_set():
            now = self._clock()
            if now >= lifetime.not_after:
                raise expired_error(self.node, lifetime.not_after)
            attempt += 1
            try:
                await self._renew(key_pem)
                return
            except grpc.aio.AioRpcError as err:
                code, details = err.code(), err.details() or err.code().name
                if code == grpc.StatusCode.PERMISSION_DENIED:
                    raise RenewalRefused(
                        f"the coordinator refuses to renew the certificate of node "
                        f"{self.node}: {details}"
                    ) from err
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    key_pem = generate_private_key_pem()  # whatever it was, not this key
                log.warning(
                    "renew.failed", node=self.node, attempt=attempt, code=code.name, error=details
                )
            except (PKIError, OSError) as err:  # an answer we could not use or store
                # Ask again, with a new key (that one may have been issued a certificate).
                key_pem = generate_private_key_pem()
                log.warning("renew.failed", node=self.node, attempt=attempt, error=str(err))
            delay = retry_delay(lifetime, attempt, self._clock(), self._rng.uniform(0.5, 1.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay.total_seconds())

    def _order(self) -> list[str]:
        preferred = self._preferred()
        if preferred in self._gateways:
            return [preferred, *(g for g in self._gateways if g != preferred)]
        return list(self._gateways)

    async def _renew(self, key_pem: bytes) -> None:
        """One renewal: ask the coordinators in turn (moving on only from one that does
        not answer), check the answer, commit it, switch to it."""
        current = self.material
        request = gateway_pb2.RenewCertificateRequest(csr_pem=make_csr(key_pem, self.node))
        response: gateway_pb2.RenewCertificateResponse | None = None
        order = self._order()
        for i, address in enumerate(order):
            async with secure_channel(
                address, GATEWAY_SERVER_NAME, current.ca_pem, current
            ) as channel:
                try:
                    response = await gateway_pb2_grpc.GatewayServiceStub(channel).RenewCertificate(
                        request, timeout=self._rpc_timeout
                    )
                    break
                except grpc.aio.AioRpcError as err:
                    if err.code() not in _UNREACHABLE or i == len(order) - 1:
                        raise
        assert response is not None
        cert_pem = bytes(response.certificate_pem)
        # The cluster's trust bundle, as the coordinator holds it (while the CA rotates:
        # the old and the new CA), taken only if it keeps a CA this node trusts.
        offered = bytes(response.ca_pem)
        trust = accept_trust_update(current.ca_pem, offered) if offered else current.ca_pem
        self._check(key_pem, cert_pem, trust)
        if trust != current.ca_pem:
            # First: until the new certificate is in place, the bundle still holds the CA
            # of the old one, so a crash in between leaves a node that starts.
            replace_file(self._state_dir / CA_FILE, trust, 0o644)
            log.info("renew.trust_updated", node=self.node, cas=len(load_trust_bundle(trust)))
        save_material(self._state_dir, key_pem, cert_pem)
        fresh = TLSMaterial(key_pem=key_pem, cert_pem=cert_pem, ca_pem=trust)
        self.material = fresh
        log.info(
            "renew.renewed",
            node=self.node,
            not_after=cert_not_after(cert_pem).isoformat(),
            gateway=address,
        )
        for callback in self._on_renewed:
            await callback(fresh)
        async with self.changed:
            self.renewals += 1
            self.changed.notify_all()

    def _check(self, key_pem: bytes, cert_pem: bytes, trust: bytes) -> None:
        """The answer certifies our new key, for our identity, from a CA of ``trust``,
        valid now."""
        verify_issued_by(cert_pem, trust, now=self._clock())
        if identity_from_cert(cert_pem) != self.material.identity:
            raise PKIError("the renewed certificate names another identity; not installed")
        if not key_matches(key_pem, cert_pem):
            raise PKIError("the renewed certificate is not for the key we sent; not installed")


def check_not_expired(material: TLSMaterial, now: datetime | None = None) -> None:
    """Raise :class:`CertificateExpired` (naming the re-enrollment command) if the node
    certificate has expired."""
    not_after = cert_not_after(material.cert_pem)
    if (now or datetime.now(UTC)) >= not_after:
        raise expired_error(material.identity.name, not_after)


__all__ = [
    "RENEW_CERT_FILE",
    "RENEW_KEY_FILE",
    "CertificateExpired",
    "CertificateRenewer",
    "RenewalRefused",
    "check_not_expired",
    "finish_interrupted_renewal",
    "reenroll_hint",
    "save_material",
]
