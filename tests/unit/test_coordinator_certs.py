"""The coordinator's own certificates renew in place (:mod:`workers.certs`): when, what
is written, who is told, and what each user of the certificate does with it (the agent
channel pool, the UI's TLS context)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from activities.agent_client import AgentClientPool
from cloudless.api import agent_pb2, agent_pb2_grpc
from cloudless.contracts.certs import instance_identity, instance_of
from cloudless.errors import ConfigError
from cloudless.http import load_chain, tls_context
from cloudless.pki import CertificateAuthority, Identity, cert_serial, identity_from_cert
from cloudless.tls import CERT_FILE, KEY_FILE, TLSMaterial, key_matches, server_credentials
from workers.certs import (
    AdminRevoked,
    CoordinatorCertificates,
    Due,
    admin_spec,
    check_validity,
    coordinator_spec,
    ensure_pair,
    instance_name,
)

CLUSTER = "certs"
VALIDITY = timedelta(minutes=1)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.bootstrap(tmp_path / "coordinator", CLUSTER)


class Clock:
    """Wall-clock time moved by hand (the CA stamps certificates with the real one)."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


def _serial_on_disk(directory: Path) -> str:
    return cert_serial((directory / CERT_FILE).read_bytes())


# ------------------------------------------------------------------ the files


def test_a_pair_is_kept_until_two_thirds_of_its_lifetime_then_reissued(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    spec = coordinator_spec(tmp_path / "coordinator", CLUSTER)
    key, cert = ensure_pair(spec, ca, validity=VALIDITY)
    assert identity_from_cert(cert) == spec.identity and key_matches(key, cert)
    assert (spec.directory / KEY_FILE).stat().st_mode & 0o777 == 0o600
    later = datetime.now(UTC) + VALIDITY / 2
    assert ensure_pair(spec, ca, validity=VALIDITY, now=later) == (key, cert)
    due = datetime.now(UTC) + VALIDITY * 0.7
    key2, cert2 = ensure_pair(spec, ca, validity=VALIDITY, now=due)
    assert cert_serial(cert2) != cert_serial(cert) and key2 != key
    assert _serial_on_disk(spec.directory) == cert_serial(cert2)
    # Same identity and names as the bootstrap's.
    sans = x509.load_pem_x509_certificate(cert2).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert {"cloudless-gateway", "localhost"} <= set(sans.value.get_values_for_type(x509.DNSName))


def test_a_pair_of_another_identity_is_replaced(ca: CertificateAuthority, tmp_path: Path) -> None:
    directory = tmp_path / "admin"
    ensure_pair(coordinator_spec(directory, CLUSTER), ca, validity=VALIDITY)
    _, cert = ensure_pair(admin_spec(directory, CLUSTER), ca, validity=VALIDITY)
    assert identity_from_cert(cert) == Identity(CLUSTER, "admin", "admin")


def test_a_lifetime_of_a_few_seconds_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="at least 10s"):
        check_validity(timedelta(seconds=3))
    assert check_validity(timedelta(seconds=20)) == timedelta(seconds=20)


# ------------------------------------------------------------------ the renewer


@pytest.fixture
def coordinator_dir(ca: CertificateAuthority, tmp_path: Path) -> Path:
    directory = tmp_path / "coordinator"
    ensure_pair(coordinator_spec(directory, CLUSTER), ca, validity=VALIDITY)
    return directory


async def test_nothing_happens_before_the_renewal_point(
    ca: CertificateAuthority, coordinator_dir: Path
) -> None:
    clock = Clock()
    certs = CoordinatorCertificates(
        ca, coordinator_spec(coordinator_dir, CLUSTER), validity=VALIDITY, clock=clock
    )
    pushed: list[TLSMaterial] = []
    certs.push_to("recorder", pushed.append)
    before = _serial_on_disk(coordinator_dir)
    wait = await certs.check()
    assert pushed == [] and certs.renewals == 0 and _serial_on_disk(coordinator_dir) == before
    # It looks again no later than the interval, nor past the renewal point (40 s in).
    assert timedelta(0) < wait <= certs.interval
    clock.ahead = timedelta(seconds=30)
    assert await certs.check() <= timedelta(seconds=10)


async def test_a_due_certificate_is_reissued_written_and_pushed_to_every_user(
    ca: CertificateAuthority, coordinator_dir: Path
) -> None:
    clock = Clock()
    certs = CoordinatorCertificates(
        ca, coordinator_spec(coordinator_dir, CLUSTER), validity=VALIDITY, clock=clock
    )
    old = certs.material
    got: dict[str, TLSMaterial] = {}

    async def async_user(material: TLSMaterial) -> None:
        got["async"] = material

    def broken_user(material: TLSMaterial) -> None:
        raise RuntimeError("this user failed")

    certs.push_to("sync", lambda material: got.__setitem__("sync", material))
    certs.push_to("broken", broken_user)  # must not keep the others from theirs
    certs.push_to("async", async_user)
    clock.ahead = timedelta(seconds=41)  # past 2/3 of a minute
    await certs.check()
    new = certs.material
    assert cert_serial(new.cert_pem) != cert_serial(old.cert_pem)
    assert got == {"sync": new, "async": new}
    assert certs.renewals == 1
    assert TLSMaterial.load(coordinator_dir) == new  # what is on disk is what is served
    assert new.identity == old.identity and new.ca_pem == old.ca_pem
    # The new certificate is not due yet: another look changes nothing.
    clock.ahead = timedelta(0)
    got.clear()
    await certs.check()
    assert got == {} and certs.renewals == 1


async def test_coordinators_sharing_a_directory_adopt_each_others_renewal(
    ca: CertificateAuthority, coordinator_dir: Path
) -> None:
    clock = Clock()
    spec = coordinator_spec(coordinator_dir, CLUSTER)
    first = CoordinatorCertificates(ca, spec, validity=VALIDITY, clock=clock)
    second = CoordinatorCertificates(ca, spec, validity=VALIDITY, clock=clock)
    pushed: list[TLSMaterial] = []
    second.push_to("recorder", pushed.append)
    clock.ahead = timedelta(seconds=41)
    await first.check()
    clock.ahead = timedelta(0)  # the new certificate is not due
    await second.check()  # finds the files renewed by the first: takes them, issues none
    assert second.material == first.material == TLSMaterial.load(coordinator_dir)
    assert pushed == [first.material]


async def test_the_admin_certificate_is_recorded_before_it_is_installed(
    ca: CertificateAuthority, coordinator_dir: Path, tmp_path: Path
) -> None:
    clock = Clock()
    certs, _ = _admin_certs(ca, coordinator_dir, tmp_path, clock)
    certs.register_admin = None
    assert certs.admin is not None
    admin = certs.admin
    recorded: list[str] = []

    async def ledger_away(cert_pem: bytes) -> None:
        raise RuntimeError("the ledger did not answer")

    async def ledger(cert_pem: bytes) -> None:
        # Recorded first: the files still hold the old certificate.
        assert _serial_on_disk(admin.directory) != cert_serial(cert_pem)
        recorded.append(cert_serial(cert_pem))

    before = _serial_on_disk(admin.directory)
    clock.ahead = timedelta(seconds=41)
    certs.register_admin = ledger_away
    with pytest.raises(RuntimeError, match="did not answer"):
        await certs.check()
    assert _serial_on_disk(admin.directory) == before  # not installed: nobody can revoke it
    assert certs.admin_renewals == 0
    certs.register_admin = ledger
    await certs.check()
    assert recorded == [_serial_on_disk(admin.directory)] and recorded[0] != before
    assert certs.admin_renewals == 1
    assert identity_from_cert((admin.directory / CERT_FILE).read_bytes()).role == "admin"


async def test_run_renews_again_and_again_and_stops_when_told(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """With real time and 10-second certificates, two renewals in about 13 s."""
    directory = tmp_path / "coordinator"
    ensure_pair(coordinator_spec(directory, CLUSTER), ca, validity=timedelta(seconds=10))
    certs = CoordinatorCertificates(
        ca, coordinator_spec(directory, CLUSTER), validity=timedelta(seconds=10)
    )
    serials = {cert_serial(certs.material.cert_pem)}
    certs.push_to("recorder", lambda material: serials.add(cert_serial(material.cert_pem)))
    stop = asyncio.Event()
    task = asyncio.create_task(certs.run(stop))
    try:
        await asyncio.wait_for(certs.wait_renewals(2), timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    assert len(serials) == 3


# ------------------------------------------------------- the cert-rotation Schedule's look


def _admin_certs(
    ca: CertificateAuthority, coordinator_dir: Path, tmp_path: Path, clock: Clock
) -> tuple[CoordinatorCertificates, list[str]]:
    admin = admin_spec(tmp_path / "admin", CLUSTER)
    ensure_pair(admin, ca, validity=VALIDITY)
    certs = CoordinatorCertificates(
        ca,
        coordinator_spec(coordinator_dir, CLUSTER),
        admin=admin,
        validity=VALIDITY,
        clock=clock,
        instance="host-1-9443",
    )
    recorded: list[str] = []

    async def ledger(cert_pem: bytes) -> None:
        recorded.append(cert_serial(cert_pem))

    certs.register_admin = ledger
    return certs, recorded


async def test_the_schedules_look_renews_at_two_thirds_and_reports_each_certificate(
    ca: CertificateAuthority, coordinator_dir: Path, tmp_path: Path
) -> None:
    clock = Clock()
    certs, recorded = _admin_certs(ca, coordinator_dir, tmp_path, clock)
    before = certs.material
    quiet = await certs.renew()
    assert quiet.instance == "host-1-9443"
    assert [(c.kind, c.renewed) for c in quiet.certificates] == [
        ("coordinator", False),
        ("admin", False),
    ]
    coordinator_state = quiet.certificates[0]
    assert coordinator_state.serial == cert_serial(before.cert_pem)
    assert coordinator_state.identity == "cloudless://certs/coordinator/coordinator"
    assert coordinator_state.renew_at < coordinator_state.not_after
    clock.ahead = timedelta(seconds=41)
    busy = await certs.renew()
    assert [(c.kind, c.renewed) for c in busy.certificates] == [
        ("coordinator", True),
        ("admin", True),
    ]
    assert busy.certificates[0].serial == cert_serial(certs.material.cert_pem)
    assert busy.certificates[0].serial != coordinator_state.serial
    assert recorded == [busy.certificates[1].serial]


async def test_the_processes_own_look_waits_for_the_fallback_point(
    ca: CertificateAuthority, coordinator_dir: Path, tmp_path: Path
) -> None:
    """At 70 % of the lifetime the Schedule would renew; the process's own look leaves
    the certificates to it, and takes over only past 85 %."""
    clock = Clock()
    certs, recorded = _admin_certs(ca, coordinator_dir, tmp_path, clock)
    serial = cert_serial(certs.material.cert_pem)
    clock.ahead = timedelta(seconds=42)
    wait = await certs.check(Due(at=0.85), fallback=True)
    assert cert_serial(certs.material.cert_pem) == serial and recorded == []
    # 85 % of 60 s is 51 s; 42 s are gone, less up to a second (whole-second certificates)
    assert timedelta(seconds=7) <= wait <= timedelta(seconds=9)
    clock.ahead = timedelta(seconds=52)
    await certs.check(Due(at=0.85), fallback=True)
    assert cert_serial(certs.material.cert_pem) != serial and len(recorded) == 1


async def test_a_forced_look_renews_everything_once_even_in_a_shared_directory(
    ca: CertificateAuthority, coordinator_dir: Path, tmp_path: Path
) -> None:
    clock = Clock()
    first, recorded = _admin_certs(ca, coordinator_dir, tmp_path, clock)
    second = CoordinatorCertificates(
        ca, coordinator_spec(coordinator_dir, CLUSTER), validity=VALIDITY, clock=clock
    )
    old = cert_serial(first.material.cert_pem)
    await asyncio.sleep(1.1)  # certificates carry whole seconds
    requested = datetime.now(UTC)
    await asyncio.sleep(1.1)
    forced = await first.renew(issued_before=requested)
    assert all(c.renewed for c in forced.certificates) and len(recorded) == 1
    again = await second.renew(issued_before=requested)  # same run, other instance
    assert not again.certificates[0].renewed
    assert again.certificates[0].serial == forced.certificates[0].serial != old
    assert second.material == first.material


def test_an_instance_is_named_by_its_host_and_agent_port() -> None:
    assert instance_name("edge.example.org", "0.0.0.0:9443") == "edge.example.org-9443"
    assert instance_name("host with/odd:chars", "[::]:9443") == "host-with-odd-chars-9443"
    assert len(instance_name("h" * 500, ":1")) <= 200


# ------------------------------------------------------------------ its users


class _Agent(agent_pb2_grpc.AgentServiceServicer):
    """Answers NodeInfo with the serial of the client certificate it was called with;
    ``hold`` keeps a call in flight until released."""

    def __init__(self) -> None:
        self.hold: asyncio.Event | None = None
        self.arrived = asyncio.Event()

    async def NodeInfo(
        self, request: agent_pb2.NodeInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.NodeInfoResponse:
        pem = next(iter(context.auth_context()["x509_pem_cert"]))
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        return agent_pb2.NodeInfoResponse(node_id=cert_serial(pem)[:60])


@pytest.fixture
async def agent(ca: CertificateAuthority) -> AsyncIterator[tuple[str, _Agent]]:
    key, cert = ca.issue(Identity(CLUSTER, "node", "pi-1"), dns_names=["pi-1"])
    servicer = _Agent()
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_secure_port(
        "127.0.0.1:0",
        server_credentials(TLSMaterial(key, cert, ca.cert_pem), require_client_auth=True),
    )
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(None)


def _coordinator(ca: CertificateAuthority) -> TLSMaterial:
    key, cert = ca.issue(Identity(CLUSTER, "coordinator", "coordinator"))
    return TLSMaterial(key, cert, ca.cert_pem)


async def test_the_pool_dials_with_the_renewed_certificate_and_lets_calls_finish(
    ca: CertificateAuthority, agent: tuple[str, _Agent]
) -> None:
    address, servicer = agent
    first, second = _coordinator(ca), _coordinator(ca)
    pool = AgentClientPool(first)
    try:
        stub = await pool.stub("pi-1", address)
        answer = await stub.NodeInfo(agent_pb2.NodeInfoRequest(), timeout=5)
        assert answer.node_id == cert_serial(first.cert_pem)[:60]
        # A call in flight on the old channel when the certificate is renewed ...
        servicer.hold = asyncio.Event()
        servicer.arrived.clear()
        call = stub.NodeInfo(agent_pb2.NodeInfoRequest(), timeout=10)
        in_flight = asyncio.ensure_future(call)
        await asyncio.wait_for(servicer.arrived.wait(), timeout=5)
        pool.update(second)
        renewed = await pool.stub("pi-1", address)
        assert renewed is not stub
        servicer.hold.set()
        servicer.hold = None
        # ... finishes on it, and new calls present the new certificate.
        assert (await in_flight).node_id == cert_serial(first.cert_pem)[:60]
        answer = await renewed.NodeInfo(agent_pb2.NodeInfoRequest(), timeout=5)
        assert answer.node_id == cert_serial(second.cert_pem)[:60]
        assert await pool.stub("pi-1", address) is renewed  # pooled again
    finally:
        await pool.close()


async def _served_serial(port: int, ca_pem: bytes) -> str:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.check_hostname = False
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return cert_serial(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM))


async def test_the_ui_context_serves_the_renewed_certificate_to_new_handshakes(
    ca: CertificateAuthority, coordinator_dir: Path, tmp_path: Path
) -> None:
    context = tls_context(coordinator_dir / CERT_FILE, coordinator_dir / KEY_FILE)

    async def ignore(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(ignore, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await _served_serial(port, ca.cert_pem) == _serial_on_disk(coordinator_dir)
        renewed = _coordinator(ca)
        scratch = tmp_path / "scratch"
        scratch.mkdir(mode=0o700)
        load_chain(context, renewed.cert_pem, renewed.key_pem, scratch)
        assert await _served_serial(port, ca.cert_pem) == cert_serial(renewed.cert_pem)
        assert list(scratch.iterdir()) == []  # the key's copy is gone
        with pytest.raises(ConfigError, match="cannot load"):
            load_chain(context, renewed.cert_pem, _coordinator(ca).key_pem, scratch)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_revoked_admin_is_not_renewed_again(
    ca: CertificateAuthority, coordinator_dir: Path, tmp_path: Path
) -> None:
    """Renewing would register a new serial, undoing `user revoke admin`: the renewer
    stops renewing the admin, and the coordinator's own certificate goes on."""
    clock = Clock()
    admin = admin_spec(tmp_path / "admin", CLUSTER)
    ensure_pair(admin, ca, validity=VALIDITY)
    certs = CoordinatorCertificates(
        ca, coordinator_spec(coordinator_dir, CLUSTER), admin=admin, validity=VALIDITY, clock=clock
    )
    asked: list[str] = []

    async def revoked(cert_pem: bytes) -> None:
        asked.append(cert_serial(cert_pem))
        raise AdminRevoked("the local admin's certificate was revoked")

    certs.register_admin = revoked
    before = _serial_on_disk(admin.directory)
    clock.ahead = timedelta(seconds=41)
    wait = await certs.check()
    assert len(asked) == 1 and _serial_on_disk(admin.directory) == before
    assert certs.register_admin is None and certs.admin_renewals == 0
    assert certs.renewals == 1  # the coordinator's own renewed all the same
    clock.ahead = timedelta(0)
    assert await certs.check() > timedelta(0)  # no busy loop on the admin's due certificate
    assert len(asked) == 1 and wait >= timedelta(0)


def test_a_worker_identity_keeps_temporals_pid_at_host_and_names_the_instance() -> None:
    identity = instance_identity("edge.example.org-9443", 4242, "edge.example.org")
    assert identity.split("@")[0] == "4242"  # what Temporal's own identities start with
    assert instance_of(identity) == "edge.example.org-9443"
    assert instance_of("4242@edge.example.org") is None  # any other poller
    assert instance_of("1@h cloudless-coordinator/") is None
