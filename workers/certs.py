"""The coordinator's own certificates: issued at start, renewed in place while it runs.

The coordinator holds two certificates of the cluster CA: its own
(``<state>/coordinator/tls.crt``), which every listener serves and its channels to agents
present, and the local admin's (``<state>/admin/``), which ``cloudlessctl`` on this machine
uses. :class:`CoordinatorCertificates` renews both at two thirds of their lifetime
(:func:`policies.renewal.renewal_wait`), with the local CA, under the same identity and
names, and hands the new coordinator material to every user of it, each of which serves
or dials with it from its next handshake on while established connections go on:

- the enrollment and agent listeners (:class:`cloudless.tls.RotatingServerCredentials`);
- the front's Temporal API listeners and its UI (``Front.update``);
- the pool of channels to agents (``AgentClientPool.update``).

The coordinator's own Temporal client needs none of it: it reaches Temporal through the
front's local door with an API key (``docs/design/front.md``).

Files are written crash-safely (:func:`cloudless.tls.save_material`) under an exclusive
lock on the directory, so coordinators that share a state directory never interleave a
key of one with the certificate of another; one that finds the files renewed by another
adopts them instead of issuing its own. A new admin certificate is recorded in the ledger
(``register_user``) before it is written, so no admin certificate is in use that the
ledger cannot revoke.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from cloudless.errors import CloudlessError, ConfigError, PKIError
from cloudless.pki import (
    CertificateAuthority,
    Identity,
    cert_not_after,
    cert_serial,
    identity_from_cert,
    read_private_file,
)
from cloudless.tls import (
    CERT_FILE,
    GATEWAY_SERVER_NAME,
    KEY_FILE,
    TLSMaterial,
    certificate_lifetime,
    finish_interrupted_renewal,
    key_matches,
    save_material,
)
from policies.renewal import renewal_wait, retry_delay

log = structlog.get_logger("cloudless.coordinator.certs")

#: The lifetime of the certificates the coordinator issues itself (``--coordinator-cert-validity``).
COORDINATOR_CERT_VALIDITY = timedelta(days=90)
#: The longest the renewer waits before looking at the files again (another coordinator
#: sharing the state directory may have renewed them).
CHECK_INTERVAL = timedelta(minutes=1)
LOCK_FILE = ".renew.lock"
#: Shorter lifetimes would have the coordinator renewing more than it serves (tests use
#: tens of seconds).
MIN_VALIDITY = timedelta(seconds=10)

Clock = Callable[[], datetime]
#: A user of the coordinator's material: called with each renewed one, in order.
Push = Callable[[TLSMaterial], Awaitable[None] | None]
#: Records a new admin certificate in the ledger; raises if it could not.
Register = Callable[[bytes], Awaitable[None]]


class AdminRevoked(CloudlessError):
    """The ledger lists the local admin as revoked: its certificate is not renewed (a
    renewal would register a new certificate and so undo the revocation)."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CertificateSpec:
    """Whose key and certificate live in ``directory``, and under which extra names."""

    directory: Path
    identity: Identity
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()


def coordinator_spec(directory: Path, cluster: str, name: str = "coordinator") -> CertificateSpec:
    """The coordinator's certificate: agents verify it as ``cloudless-gateway``, local
    clients as ``localhost`` or ``127.0.0.1``."""
    return CertificateSpec(
        directory,
        Identity(cluster=cluster, role="coordinator", name=name),
        (GATEWAY_SERVER_NAME, "localhost"),
        ("127.0.0.1",),
    )


def admin_spec(directory: Path, cluster: str) -> CertificateSpec:
    return CertificateSpec(directory, Identity(cluster=cluster, role="admin", name="admin"))


def check_validity(validity: timedelta) -> timedelta:
    """``validity`` if it is a usable lifetime for the coordinator's certificates."""
    if validity < MIN_VALIDITY:
        raise ConfigError(
            f"--coordinator-cert-validity {validity.total_seconds():g}s is too short: the "
            f"certificates would renew more often than every few seconds; give at least "
            f"{MIN_VALIDITY.total_seconds():g}s (production: 90d)"
        )
    return validity


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Exclusive among the processes renewing the files of ``directory``."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _on_disk(spec: CertificateSpec) -> tuple[bytes, bytes] | None:
    """The key and certificate in ``spec.directory``, if they are a usable pair of
    ``spec.identity`` (a crash-interrupted renewal completed first)."""
    if spec.directory.exists():
        finish_interrupted_renewal(spec.directory)
    key_path, cert_path = spec.directory / KEY_FILE, spec.directory / CERT_FILE
    if not key_path.exists() or not cert_path.exists():
        return None
    key_pem, cert_pem = read_private_file(key_path), cert_path.read_bytes()
    try:
        if identity_from_cert(cert_pem) != spec.identity or not key_matches(key_pem, cert_pem):
            return None
    except PKIError:
        return None
    return key_pem, cert_pem


def _due(cert_pem: bytes, now: datetime) -> bool:
    return renewal_wait(certificate_lifetime(cert_pem), now, CHECK_INTERVAL) == timedelta(0)


def _issue(
    spec: CertificateSpec, ca: CertificateAuthority, validity: timedelta
) -> tuple[bytes, bytes]:
    return ca.issue(
        spec.identity,
        validity=validity,
        dns_names=spec.dns_names,
        ip_addresses=spec.ip_addresses,
    )


def _install(spec: CertificateSpec, key_pem: bytes, cert_pem: bytes) -> None:
    save_material(spec.directory, key_pem, cert_pem)
    log.info(
        "pki.cert_issued",
        identity=spec.identity.uri(),
        serial=cert_serial(cert_pem),
        not_after=cert_not_after(cert_pem).isoformat(),
    )


def ensure_pair(
    spec: CertificateSpec,
    ca: CertificateAuthority,
    *,
    validity: timedelta = COORDINATOR_CERT_VALIDITY,
    now: datetime | None = None,
) -> tuple[bytes, bytes]:
    """The key and certificate in ``spec.directory``: those there, unless they are
    missing, not a pair of this identity, or past two thirds of their lifetime; then a
    new pair, issued and installed. Exclusive among processes sharing the directory."""
    with _locked(spec.directory):
        pair = _on_disk(spec)
        if pair is not None and not _due(pair[1], now or _now()):
            return pair
        key_pem, cert_pem = _issue(spec, ca, validity)
        _install(spec, key_pem, cert_pem)
        return key_pem, cert_pem


class CoordinatorCertificates:
    """Renews the coordinator's certificate (and the local admin's) while it runs, and
    pushes each new coordinator material to its users (:meth:`push_to`).

    Args:
        ca: The cluster CA (it does not change here).
        coordinator: The coordinator's certificate; its files must exist (bootstrap).
        admin: The local admin's certificate, or None.
        validity: The lifetime of the certificates issued.
        interval: The longest wait between two looks at the files.
        clock: Wall-clock time (certificates carry wall-clock times).
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        coordinator: CertificateSpec,
        *,
        admin: CertificateSpec | None = None,
        validity: timedelta = COORDINATOR_CERT_VALIDITY,
        interval: timedelta = CHECK_INTERVAL,
        clock: Clock = _now,
    ) -> None:
        self.ca = ca
        self.coordinator = coordinator
        self.admin = admin
        self.validity = validity
        self.interval = interval
        self._clock = clock
        self.material = TLSMaterial.load(coordinator.directory)
        self.admin_cert: bytes | None = None
        if admin is not None and (admin.directory / CERT_FILE).exists():
            self.admin_cert = (admin.directory / CERT_FILE).read_bytes()
        #: Records a new admin certificate in the ledger before it is installed; None:
        #: the admin certificate is not renewed.
        self.register_admin: Register | None = None
        self._users: list[tuple[str, Push]] = []
        #: Coordinator materials pushed, admin certificates installed, by this process.
        self.renewals = 0
        self.admin_renewals = 0
        self.changed = asyncio.Condition()
        self._failures = 0

    def push_to(self, name: str, user: Push) -> None:
        """Hand every renewed coordinator material to ``user`` (``name``: for the logs)."""
        self._users.append((name, user))

    async def run(self, stop: asyncio.Event) -> None:
        """Check, renew and push until ``stop``; a failed check is retried with backoff,
        within the certificate's lifetime."""
        while not stop.is_set():
            try:
                wait = await self.check()
                self._failures = 0
            except Exception as err:  # a full disk, a ledger away: try again soon
                self._failures += 1
                lifetime = certificate_lifetime(self.material.cert_pem)
                wait = min(
                    self.interval,
                    retry_delay(lifetime, self._failures, self._clock(), 1.0),
                )
                log.warning(
                    "pki.renewal_failed",
                    error=str(err),
                    attempt=self._failures,
                    retry_in=wait.total_seconds(),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(wait.total_seconds(), 0.01))

    async def check(self) -> timedelta:
        """One look: renew (or adopt from disk) what is due, push it; returns how long
        to wait before the next look."""
        fresh = await asyncio.to_thread(self._coordinator_pair)
        if fresh.cert_pem != self.material.cert_pem:
            self.material = fresh
            await self._push(fresh)
            async with self.changed:
                self.renewals += 1
                self.changed.notify_all()
        waits = [self._wait(self.material.cert_pem)]
        if self.admin is not None and self.register_admin is not None:
            await self._check_admin(self.admin, self.register_admin)
            if self.admin_cert is not None and self.register_admin is not None:
                waits.append(self._wait(self.admin_cert))
        return min(waits)

    def _wait(self, cert_pem: bytes) -> timedelta:
        return renewal_wait(certificate_lifetime(cert_pem), self._clock(), self.interval)

    def _coordinator_pair(self) -> TLSMaterial:
        key_pem, cert_pem = ensure_pair(
            self.coordinator, self.ca, validity=self.validity, now=self._clock()
        )
        return TLSMaterial(key_pem=key_pem, cert_pem=cert_pem, ca_pem=self.ca.cert_pem)

    async def _push(self, material: TLSMaterial) -> None:
        log.info(
            "pki.coordinator_cert_renewed",
            serial=cert_serial(material.cert_pem),
            not_after=cert_not_after(material.cert_pem).isoformat(),
            users=[name for name, _ in self._users],
        )
        for name, user in self._users:
            try:
                result = user(material)
                if inspect.isawaitable(result):
                    await result
            except Exception as err:  # the others must still get it (no traceback: its
                # frames hold the key)
                log.error("pki.push_failed", user=name, error=repr(err))

    async def _check_admin(self, spec: CertificateSpec, register: Register) -> None:
        """Renew the admin certificate if due: issue, record in the ledger, install (unless
        another coordinator installed one meanwhile)."""
        pair = await asyncio.to_thread(self._locked_read, spec)
        if pair is not None and not _due(pair[1], self._clock()):
            self.admin_cert = pair[1]
            return
        key_pem, cert_pem = await asyncio.to_thread(_issue, spec, self.ca, self.validity)
        try:
            await register(cert_pem)  # raises: not installed, tried again later
        except AdminRevoked as err:
            # For good, in this process: the revocation stands, the old certificate expires.
            self.register_admin = None
            log.error("pki.admin_not_renewed", reason=str(err))
            return
        installed = await asyncio.to_thread(
            self._install_unless_renewed, spec, pair, key_pem, cert_pem
        )
        self.admin_cert = installed
        async with self.changed:
            self.admin_renewals += 1
            self.changed.notify_all()

    @staticmethod
    def _locked_read(spec: CertificateSpec) -> tuple[bytes, bytes] | None:
        with _locked(spec.directory):
            return _on_disk(spec)

    @staticmethod
    def _install_unless_renewed(
        spec: CertificateSpec,
        seen: tuple[bytes, bytes] | None,
        key_pem: bytes,
        cert_pem: bytes,
    ) -> bytes:
        with _locked(spec.directory):
            now_on_disk = _on_disk(spec)
            if now_on_disk is not None and now_on_disk != seen:
                return now_on_disk[1]  # another coordinator renewed it first: keep theirs
            _install(spec, key_pem, cert_pem)
            return cert_pem

    async def wait_renewals(self, count: int) -> None:
        """Return once this process has pushed ``count`` renewed coordinator materials."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.renewals >= count)


def ensure_certificate(
    directory: Path,
    ca: CertificateAuthority,
    identity: Identity,
    *,
    validity: timedelta = COORDINATOR_CERT_VALIDITY,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> None:
    """Issue ``identity`` a key and certificate in ``directory`` unless a valid one is
    there that is not yet due for renewal (:func:`ensure_pair`)."""
    ensure_pair(
        CertificateSpec(directory, identity, tuple(dns_names), tuple(ip_addresses)),
        ca,
        validity=validity,
    )


__all__ = [
    "CHECK_INTERVAL",
    "COORDINATOR_CERT_VALIDITY",
    "AdminRevoked",
    "CertificateSpec",
    "CoordinatorCertificates",
    "admin_spec",
    "check_validity",
    "coordinator_spec",
    "ensure_certificate",
    "ensure_pair",
]
