"""The certificates this process refuses: those of removed nodes and revoked users.

``cloudlessctl node remove`` records the node certificate's serial in the ledger
(``cluster/<name>``), which keeps it until the certificate expires. Every coordinator
holds the list in memory, loads it at start and refreshes it every few seconds; a
removal made through this coordinator applies at once. The agent gateway (heartbeats)
and SecretsService check each caller's certificate against it, so a removed node's
certificate is refused everywhere within one refresh interval, and never accepted again:
re-enrolling the name issues a new certificate with a new serial.

gRPC's TLS stack has no hook for a revocation list during the handshake, so the check
happens on every call and stream message, on a certificate already verified against the
cluster CA. A call's certificate serial comes from a bounded cache; a heartbeat stream
takes its serial once when it opens (:meth:`RevocationList.serial`) and looks that up on
each beat (:meth:`RevocationList.whose`), a dictionary lookup against the list as last
refreshed, so a revocation still cuts an open stream at its next beat.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from cloudless.errors import PKIError
from cloudless.model import RevokedCertificate
from cloudless.pki import cert_serial

log = structlog.get_logger("cloudless.revocation")

#: How often a coordinator reloads the list from the ledger.
REFRESH_SECONDS = 5.0
#: Certificates whose serial is remembered (the oldest is forgotten first).
SERIAL_CACHE_SIZE = 4096


#: How a revoked user's certificate is named where a node's id would be.
USER_SUBJECT = "user:"


def subject(revoked: RevokedCertificate) -> str:
    return f"{USER_SUBJECT}{revoked.user}" if revoked.user else revoked.node_id


def reason(subject: str) -> str:
    """Why a revoked certificate is refused, for its holder."""
    if subject.startswith(USER_SUBJECT):
        return (
            f"the certificate of user {subject.removeprefix(USER_SUBJECT)!r} was revoked "
            "(`cloudlessctl user revoke`); ask an admin for a new one"
        )
    return f"the certificate of node {subject!r} was revoked when the node was removed"


class RevocationList:
    """Serials refused by this process; ``fetch`` reads the ledger's list."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[list[RevokedCertificate]]],
        *,
        interval: float = REFRESH_SECONDS,
    ) -> None:
        self._fetch = fetch
        self.interval = interval
        self._serials: dict[str, str] = {}  # serial -> node id or user:<name>
        self._local: dict[str, str] = {}  # revoked through this process, not yet fetched
        self._seen: dict[bytes, str | None] = {}  # certificate PEM -> serial
        self._task: asyncio.Task[None] | None = None

    @property
    def serials(self) -> frozenset[str]:
        return frozenset(self._serials)

    def __bool__(self) -> bool:
        """Whether anything is revoked: callers skip the certificate lookup when not."""
        return bool(self._serials)

    def add(self, serial: str, node_id: str) -> None:
        """A removal made through this process: refused from now on."""
        if serial:
            self._serials[serial] = node_id
            self._local[serial] = node_id

    @property
    def users(self) -> frozenset[str]:
        """Names of users with a revoked certificate (their browser sessions end too)."""
        return frozenset(
            s.removeprefix(USER_SUBJECT)
            for s in self._serials.values()
            if s.startswith(USER_SUBJECT)
        )

    async def refresh(self) -> None:
        """Reload the ledger's list (it drops expired certificates by itself)."""
        fetched = {r.serial: subject(r) for r in await self._fetch()}
        # A local removal may not have reached the ledger's answer yet: keep it until then.
        self._local = {s: n for s, n in self._local.items() if s not in fetched}
        self._serials = {**fetched, **self._local}

    async def start(self) -> None:
        """Load the list (a failure is logged, the refresh loop retries) and keep it fresh."""
        try:
            await self.refresh()
        except Exception as err:
            log.warning("revocation.load_failed", error=str(err))
        self._task = asyncio.create_task(self._run(), name="revocation-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception as err:  # keep the last list; a busy ledger answers next time
                log.warning("revocation.refresh_failed", error=str(err))

    def revoked(self, cert_pem: bytes) -> str | None:
        """Whose certificate it was (a node id, or ``user:<name>``; see :func:`reason`),
        or None if it is not revoked."""
        if not self._serials:
            return None
        return self.whose(self.serial(cert_pem))

    def whose(self, serial: str | None) -> str | None:
        """:meth:`revoked` for a serial already taken from its certificate (``serial``):
        what a long-lived stream asks on each message, against the list as it is now."""
        return self._serials.get(serial) if serial else None

    def serial(self, cert_pem: bytes) -> str | None:
        """The certificate's serial (None if it does not parse), cached: parsing costs
        ~10 µs. The cache is bounded, so a caller that holds the certificate for long (a
        heartbeat stream) keeps the serial itself: with more such callers than entries,
        they would evict each other's and parse again every time."""
        try:
            return self._seen[cert_pem]
        except KeyError:
            pass
        try:
            serial: str | None = cert_serial(cert_pem)
        except PKIError:
            serial = None
        if len(self._seen) >= SERIAL_CACHE_SIZE:
            del self._seen[next(iter(self._seen))]
        self._seen[cert_pem] = serial
        return serial


__all__ = ["REFRESH_SECONDS", "USER_SUBJECT", "RevocationList", "reason", "subject"]
