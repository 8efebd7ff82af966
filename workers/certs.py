"""The coordinator's own certificates: issued at start, renewed in place while it runs.

The coordinator holds two certificates of the cluster CA: its own
(``<state>/coordinator/tls.crt``), which every listener and its front serve and its
channels to agents present, and the local admin's (``<state>/admin/``), which
``cloudlessctl`` on this machine uses. They are renewed at two thirds of their lifetime
(:func:`policies.renewal.renewal_wait`) by the Temporal Schedule ``cert-rotation/<cluster>``
(:mod:`workflows.certs`), which asks each live coordinator instance on its own task queue
(:meth:`CoordinatorCertificates.renew`), so every renewal is a workflow run the Temporal
UI shows. Each process also looks itself (:meth:`CoordinatorCertificates.run`), but
renews only past ``policies.renewal.FALLBACK_AT`` of the lifetime: the Schedule did not
reach it (Temporal away), and its certificates must not expire meanwhile.

A renewal issues a new certificate with the local CA, under the same identity and names,
and hands the new coordinator material to every user of it, each of which serves or dials
with it from its next handshake on while established connections go on:

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
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from temporalio.client import Client

from cloudless.contracts import certs as certs_contract
from cloudless.errors import CloudlessError, ConfigError, PKIError
from cloudless.model import CertificateState, CertRotationInput, InstanceRenewal
from cloudless.model.certs import INSTANCE_MAX
from cloudless.pki import (
    CertificateAuthority,
    Identity,
    cert_not_after,
    cert_serial,
    identity_from_cert,
    read_private_file,
    verify_issued_by,
)
from cloudless.pki.files import write_public_file
from cloudless.tls import (
    CA_FILE,
    CERT_FILE,
    GATEWAY_SERVER_NAME,
    KEY_FILE,
    TLSMaterial,
    certificate_lifetime,
    finish_interrupted_renewal,
    key_matches,
    save_material,
)
from policies.renewal import (
    FALLBACK_AT,
    RENEW_AT,
    renewal_wait,
    retry_delay,
    rotation_interval,
    rotation_reach,
)
from workers.schedules import ensure_interval_schedule

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


_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class Due:
    """When a certificate is due: from ``at`` of its lifetime on, and (a forced
    renewal) whenever it was issued before ``issued_before``."""

    at: float = RENEW_AT
    issued_before: datetime | None = None

    def __call__(self, cert_pem: bytes, now: datetime) -> bool:
        lifetime = certificate_lifetime(cert_pem)
        # Certificates carry whole seconds: one issued in the same second as the request
        # may read as issued up to a second before it, and is not renewed twice.
        if self.issued_before is not None and lifetime.issued < self.issued_before - _SECOND:
            return True
        return renewal_wait(lifetime, now, CHECK_INTERVAL, self.at) == timedelta(0)


#: Due the Schedule's way: from two thirds of the lifetime on.
DUE = Due()


def _issued_by(cert_pem: bytes, ca: CertificateAuthority) -> bool:
    """Whether the issuer signed ``cert_pem`` (after the cluster CA switched, every
    certificate of the previous one is reissued, due or not)."""
    try:
        verify_issued_by(cert_pem, ca.cert_pem)
    except PKIError:
        return False
    return True


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
    due: Due = DUE,
) -> tuple[bytes, bytes]:
    """The key and certificate in ``spec.directory``: those there, unless they are
    missing, not a pair of this identity, or ``due`` (by default: past two thirds of
    their lifetime); then a new pair, issued and installed. Exclusive among processes
    sharing the directory."""
    key_pem, cert_pem, _ = _ensure(spec, ca, validity, now or _now(), due)
    return key_pem, cert_pem


def _ensure(
    spec: CertificateSpec, ca: CertificateAuthority, validity: timedelta, now: datetime, due: Due
) -> tuple[bytes, bytes, bool]:
    """:func:`ensure_pair`, and whether it issued the pair."""
    with _locked(spec.directory):
        pair = _on_disk(spec)
        if pair is not None and not due(pair[1], now) and _issued_by(pair[1], ca):
            return pair[0], pair[1], False
        key_pem, cert_pem = _issue(spec, ca, validity)
        _install(spec, key_pem, cert_pem)
        return key_pem, cert_pem, True


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
        instance: This coordinator instance's name, for the reports.
        trust: The trust bundle (default: the CA's certificate alone).
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
        instance: str = "coordinator",
        trust: bytes | None = None,
    ) -> None:
        self.ca = ca
        #: What every party must trust: the CA, or while it rotates the old and the new.
        self.trust = trust if trust is not None else ca.cert_pem
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
        #: Of those, how many this process renewed itself (past ``FALLBACK_AT``: the
        #: Schedule did not reach it).
        self.fallback_renewals = 0
        self.changed = asyncio.Condition()
        self._failures = 0
        self._looking = asyncio.Lock()
        #: Why the admin certificate is no longer renewed (it was revoked), if it is not.
        self._admin_note = ""
        #: This coordinator instance's name (reports of the ``cert-rotation`` runs).
        self.instance = instance

    def push_to(self, name: str, user: Push) -> None:
        """Hand every renewed coordinator material to ``user`` (``name``: for the logs)."""
        self._users.append((name, user))

    async def run(self, stop: asyncio.Event) -> None:
        """Look, and renew what is past ``FALLBACK_AT`` (the Schedule did not renew it),
        until ``stop``; a failed look is retried with backoff, within the lifetime.

        The first look renews what is due at all, as the bootstrap did: a start slow
        enough to pass the renewal point is no sign of the Schedule failing."""
        first = True
        while not stop.is_set():
            try:
                if first:
                    wait = await self.check(DUE)
                    first = False
                else:
                    wait = await self.check(Due(at=FALLBACK_AT), fallback=True)
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

    async def renew(self, issued_before: datetime | None = None) -> InstanceRenewal:
        """What the ``cert-rotation`` run asks: renew what is due, and everything issued
        before ``issued_before`` (a forced run); say what each certificate is now."""
        due = DUE if issued_before is None else Due(issued_before=issued_before)
        states = await self._look(due, fallback=False)
        return InstanceRenewal(instance=self.instance, certificates=states)

    async def check(self, due: Due = DUE, *, fallback: bool = False) -> timedelta:
        """One look: renew (or adopt from disk) what is ``due``, push it; returns how long
        to wait before the next look (to ``due.at`` of the lifetime, or the interval)."""
        await self._look(due, fallback=fallback)
        waits = [self._wait(self.material.cert_pem, due.at)]
        if self.admin_cert is not None and self.register_admin is not None:
            waits.append(self._wait(self.admin_cert, due.at))
        return min(waits)

    async def _look(self, due: Due, *, fallback: bool) -> list[CertificateState]:
        async with self._looking:  # the Schedule's look and this process's own, one at a time
            fresh, issued = await asyncio.to_thread(self._coordinator_pair, due)
            if issued and fallback:
                self.fallback_renewals += 1
                log.warning(
                    "pki.renewed_without_schedule",
                    detail="the cert-rotation Schedule did not renew the coordinator's "
                    "certificate by its renewal point; is Temporal reachable?",
                )
            if fresh.cert_pem != self.material.cert_pem:
                self.material = fresh
                await self._push(fresh)
                async with self.changed:
                    self.renewals += 1
                    self.changed.notify_all()
            states = [self._state("coordinator", self.coordinator, fresh.cert_pem, issued)]
            if self.admin is not None:
                states.append(await self._look_admin(self.admin, due, fallback=fallback))
            return states

    async def retrust(self, ca: CertificateAuthority, trust: bytes) -> InstanceRenewal:
        """The cluster CA rotated a stage (:mod:`cloudless.pki.rotation`): issue with
        ``ca`` and trust ``trust`` from now on. Every user gets the material with the new
        bundle at once, the local admin's ``ca.crt`` becomes the bundle, and what ``ca``
        did not issue is reissued now."""
        async with self._looking:
            self.ca, self.trust = ca, trust
            material = TLSMaterial(self.material.key_pem, self.material.cert_pem, trust)
            if material != self.material:
                self.material = material
                await self._push(material)
            if self.admin is not None:
                await asyncio.to_thread(write_trust, self.admin.directory, trust)
        return await self.renew()

    def _state(
        self, kind: str, spec: CertificateSpec, cert_pem: bytes, renewed: bool, note: str = ""
    ) -> CertificateState:
        lifetime = certificate_lifetime(cert_pem)
        return CertificateState(
            kind=kind,
            identity=spec.identity.uri(),
            serial=cert_serial(cert_pem),
            not_after=lifetime.not_after,
            renew_at=lifetime.issued + lifetime.length * RENEW_AT,
            renewed=renewed,
            note=note,
        )

    def _wait(self, cert_pem: bytes, at: float) -> timedelta:
        return renewal_wait(certificate_lifetime(cert_pem), self._clock(), self.interval, at)

    def _coordinator_pair(self, due: Due) -> tuple[TLSMaterial, bool]:
        key_pem, cert_pem, issued = _ensure(
            self.coordinator, self.ca, self.validity, self._clock(), due
        )
        return TLSMaterial(key_pem=key_pem, cert_pem=cert_pem, ca_pem=self.trust), issued

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

    async def _look_admin(
        self, spec: CertificateSpec, due: Due, *, fallback: bool
    ) -> CertificateState:
        """Renew the admin certificate if due: issue, record in the ledger, install (unless
        another coordinator installed one meanwhile). Raises if the ledger did not record
        it (nothing installed)."""
        pair = await asyncio.to_thread(self._locked_read, spec)
        if pair is not None:
            self.admin_cert = pair[1]
        register = self.register_admin
        if pair is not None and not due(pair[1], self._clock()) and _issued_by(pair[1], self.ca):
            return self._state("admin", spec, pair[1], False)
        if register is None:
            note = self._admin_note or "not registered in the ledger yet"
            if pair is None:
                raise PKIError(f"the local admin's certificate in {spec.directory} is missing")
            return self._state("admin", spec, pair[1], False, note)
        key_pem, cert_pem = await asyncio.to_thread(_issue, spec, self.ca, self.validity)
        try:
            await register(cert_pem)  # raises: not installed, tried again later
        except AdminRevoked as err:
            # For good, in this process: the revocation stands, the old certificate expires.
            self.register_admin = None
            self._admin_note = str(err)
            log.error("pki.admin_not_renewed", reason=str(err))
            if pair is None:
                raise
            return self._state("admin", spec, pair[1], False, str(err))
        installed = await asyncio.to_thread(
            self._install_unless_renewed, spec, pair, key_pem, cert_pem
        )
        self.admin_cert = installed
        if fallback:
            self.fallback_renewals += 1
            log.warning("pki.renewed_without_schedule", certificate="admin")
        async with self.changed:
            self.admin_renewals += 1
            self.changed.notify_all()
        return self._state("admin", spec, installed, installed == cert_pem)

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


def write_trust(directory: Path, trust: bytes) -> None:
    """``directory``'s ``ca.crt`` becomes the trust bundle (written only if it differs)."""
    path = directory / CA_FILE
    if not path.exists() or path.read_bytes() != trust:
        write_public_file(path, trust)


def instance_name(host: str, agent_listen: str) -> str:
    """This coordinator instance's name: its host and agent port (``<host>-<port>``),
    in the characters a task queue name keeps readable; the same after a restart, so a
    renewal asked of it just before is answered by the new process."""
    port = agent_listen.rsplit(":", 1)[-1]
    raw = f"{host}-{port}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-")[:INSTANCE_MAX]
    return name or "coordinator"


async def ensure_cert_rotation_schedule(client: Client, cluster: str, shortest: timedelta) -> None:
    """Create the ``cert-rotation/<cluster>`` Schedule, or bring its interval up to date:
    a look every :func:`policies.renewal.rotation_interval` of the shortest lifetime of the
    certificates this coordinator issues."""
    await ensure_interval_schedule(
        client,
        certs_contract.schedule_id(cluster),
        certs_contract.schedule_action(
            CertRotationInput(
                cluster=cluster, reach_seconds=rotation_reach(shortest).total_seconds()
            )
        ),
        rotation_interval(shortest),
        note="renew the coordinators' and the local admins' certificates at 2/3 of "
        "their lifetime (node certificates renew themselves over mTLS)",
        event="pki.rotation_schedule",
    )


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
    "DUE",
    "AdminRevoked",
    "CertificateSpec",
    "CoordinatorCertificates",
    "Due",
    "admin_spec",
    "check_validity",
    "coordinator_spec",
    "ensure_cert_rotation_schedule",
    "ensure_certificate",
    "ensure_pair",
    "instance_name",
    "write_trust",
]
