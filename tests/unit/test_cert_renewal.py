"""Node certificate renewal, the parts that need no coordinator: the CSR checks, the
crash-safe switch of key and certificate files, the expiry message, the server
credentials that change certificate between handshakes, and the gateway's refusals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.renewal import (
    RENEW_CERT_FILE,
    RENEW_KEY_FILE,
    RPC_TIMEOUT,
    CertificateExpired,
    CertificateRenewer,
    RenewalRefused,
    check_not_expired,
    finish_interrupted_renewal,
    save_material,
)
from agent.secrets import CoordinatorSecrets
from cloudless.api import (
    agent_pb2,
    agent_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    secrets_pb2,
    secrets_pb2_grpc,
)
from cloudless.errors import PKIError
from cloudless.model import RenewCertificateInput, RevokedCertificate, SignCertificateResult
from cloudless.pki import (
    CertificateAuthority,
    Identity,
    cert_key_id,
    cert_not_after,
    cert_serial,
    check_renewal_csr,
    generate_private_key_pem,
    identity_from_cert,
    make_csr,
    public_key_id,
    verify_issued_by,
)
from cloudless.pki.csr import MAX_CSR_BYTES
from cloudless.revocation import RevocationList
from cloudless.testing.cluster import free_port
from cloudless.tls import (
    CA_FILE,
    CERT_FILE,
    GATEWAY_SERVER_NAME,
    KEY_FILE,
    RotatingServerCredentials,
    TLSMaterial,
    peer_certificate_pem,
    secure_channel,
    server_credentials,
)
from workers import gateway as gateway_module
from workers.gateway import RENEW_TIMEOUT, GatewayServicer

NODE = Identity(cluster="dev", role="node", name="pi-1")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.bootstrap(tmp_path / "ca", "dev")


def issue(ca: CertificateAuthority, key_pem: bytes, identity: Identity = NODE) -> bytes:
    return ca.sign_csr(make_csr(key_pem, identity.name), identity, validity=timedelta(hours=1))


# ------------------------------------------------------------------ the CSR


def test_a_renewal_csr_must_be_for_a_new_key(ca: CertificateAuthority) -> None:
    old_key = generate_private_key_pem()
    cert = issue(ca, old_key)
    with pytest.raises(PKIError, match="needs a new key"):
        check_renewal_csr(make_csr(old_key, "pi-1"), cert)
    new_key = generate_private_key_pem()
    key_id = check_renewal_csr(make_csr(new_key, "pi-1"), cert)
    assert key_id == cert_key_id(issue(ca, new_key)) != cert_key_id(cert)


def test_a_renewal_csr_is_checked_like_an_enrollment_one(ca: CertificateAuthority) -> None:
    cert = issue(ca, generate_private_key_pem())
    with pytest.raises(PKIError, match="limit"):
        check_renewal_csr(b"x" * (MAX_CSR_BYTES + 1), cert)
    with pytest.raises(PKIError, match="parseable"):
        check_renewal_csr(b"not a csr", cert)
    weak = ec.generate_private_key(ec.SECP256K1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pi-1")]))
        .sign(weak, hashes.SHA256())
    )
    with pytest.raises(PKIError, match="curve"):
        check_renewal_csr(csr.public_bytes(serialization.Encoding.PEM), cert)


# ------------------------------------------------------------------ files


def pair(ca: CertificateAuthority) -> tuple[bytes, bytes]:
    key = generate_private_key_pem()
    return key, issue(ca, key)


def install(state: Path, key: bytes, cert: bytes) -> None:
    state.mkdir(mode=0o700, exist_ok=True)
    (state / KEY_FILE).write_bytes(key)
    os.chmod(state / KEY_FILE, 0o600)
    (state / CERT_FILE).write_bytes(cert)


def test_saving_replaces_both_files_and_keeps_the_key_private(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    state = tmp_path / "agent"
    install(state, *pair(ca))
    key, cert = pair(ca)
    save_material(state, key, cert)
    assert (state / KEY_FILE).read_bytes() == key and (state / CERT_FILE).read_bytes() == cert
    assert os.stat(state / KEY_FILE).st_mode & 0o777 == 0o600
    assert not (state / RENEW_KEY_FILE).exists() and not (state / RENEW_CERT_FILE).exists()
    assert finish_interrupted_renewal(state) is None


@pytest.mark.parametrize("crash", ["before renames", "between renames", "before cert written"])
def test_a_renewal_interrupted_by_a_crash_is_completed_or_discarded(
    ca: CertificateAuthority, tmp_path: Path, crash: str
) -> None:
    state = tmp_path / "agent"
    old_key, old_cert = pair(ca)
    install(state, old_key, old_cert)
    key, cert = pair(ca)
    (state / RENEW_KEY_FILE).write_bytes(key)
    os.chmod(state / RENEW_KEY_FILE, 0o600)
    if crash != "before cert written":
        (state / RENEW_CERT_FILE).write_bytes(cert)
    if crash == "between renames":
        os.replace(state / RENEW_KEY_FILE, state / KEY_FILE)
    outcome = finish_interrupted_renewal(state)
    assert outcome is not None
    got_key, got_cert = (state / KEY_FILE).read_bytes(), (state / CERT_FILE).read_bytes()
    if crash == "before cert written":
        assert (got_key, got_cert) == (old_key, old_cert), outcome
    else:
        assert (got_key, got_cert) == (key, cert), outcome
    assert not (state / RENEW_KEY_FILE).exists() and not (state / RENEW_CERT_FILE).exists()


def test_an_expired_certificate_names_the_reenrollment_command(ca: CertificateAuthority) -> None:
    key, cert = pair(ca)
    material = TLSMaterial(key_pem=key, cert_pem=cert, ca_pem=ca.cert_pem)
    check_not_expired(material)
    with pytest.raises(CertificateExpired) as err:
        check_not_expired(material, now=cert_not_after(cert) + timedelta(seconds=1))
    assert "cloudlessctl token create --node pi-1" in str(err.value)
    assert "--token-file" in str(err.value)


# ------------------------------------------------------------------ server credentials


class _Agent(agent_pb2_grpc.AgentServiceServicer):
    async def NodeInfo(
        self, request: agent_pb2.NodeInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.NodeInfoResponse:
        return agent_pb2.NodeInfoResponse(node_id="pi-1")


def _served_certificate(port: int, client: TLSMaterial, tmp: Path) -> bytes:
    """The certificate the server presents to a new TLS handshake (as PEM)."""
    context = ssl.create_default_context(cadata=client.ca_pem.decode())
    context.check_hostname = False
    (tmp / "c.key").write_bytes(client.key_pem)
    (tmp / "c.crt").write_bytes(client.cert_pem)
    context.load_cert_chain(tmp / "c.crt", tmp / "c.key")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="pi-1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


async def test_new_handshakes_get_the_renewed_certificate_established_calls_go_on(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    first = TLSMaterial(*pair(ca), ca_pem=ca.cert_pem)
    second = TLSMaterial(*pair(ca), ca_pem=ca.cert_pem)
    coordinator = TLSMaterial(
        *ca.issue(Identity(cluster="dev", role="coordinator", name="coordinator")),
        ca_pem=ca.cert_pem,
    )
    credentials = RotatingServerCredentials(first, require_client_auth=True)
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(_Agent(), server)
    port = server.add_secure_port(f"127.0.0.1:{free_port()}", credentials.credentials)
    await server.start()
    try:
        async with secure_channel(f"127.0.0.1:{port}", "pi-1", ca.cert_pem, coordinator) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            await stub.NodeInfo(agent_pb2.NodeInfoRequest(), timeout=5)
            served = await asyncio.to_thread(_served_certificate, port, coordinator, tmp_path)
            assert cert_serial(served) == cert_serial(first.cert_pem)
            credentials.update(second)
            served = await asyncio.to_thread(_served_certificate, port, coordinator, tmp_path)
            assert cert_serial(served) == cert_serial(second.cert_pem)
            # The channel opened before the switch keeps working.
            await stub.NodeInfo(agent_pb2.NodeInfoRequest(), timeout=5)
    finally:
        await server.stop(None)


# ------------------------------------------------------------------ the gateway's refusals


class Aborted(Exception):
    pass


class Context:
    """A servicer context with the peer's certificate and an abort that raises."""

    def __init__(self, cert: bytes | None) -> None:
        self._auth = {} if cert is None else {"x509_pem_cert": [cert]}
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def auth_context(self) -> dict[str, Any]:
        return self._auth

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)


class NoTemporal:
    """Every refusal happens before Temporal is asked: any use of it fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the gateway reached Temporal ({name}) for a refused renewal")


@pytest.fixture
def revocations() -> Iterator[RevocationList]:
    revoked: list[RevokedCertificate] = []

    async def fetch() -> list[RevokedCertificate]:
        return list(revoked)

    yield RevocationList(fetch)


async def renew(
    gateway: GatewayServicer, cert: bytes | None, csr: bytes
) -> tuple[grpc.StatusCode, str]:
    context = Context(cert)
    with pytest.raises(Aborted):
        await gateway.RenewCertificate(
            gateway_pb2.RenewCertificateRequest(csr_pem=csr),
            context,  # type: ignore[arg-type]
        )
    assert context.aborted is not None
    return context.aborted


async def test_the_gateway_refuses_bad_renewals_before_reaching_temporal(
    ca: CertificateAuthority, revocations: RevocationList
) -> None:
    gateway = GatewayServicer(
        NoTemporal(),  # type: ignore[arg-type]
        "dev",
        verifier=None,  # type: ignore[arg-type]
        revocations=revocations,
    )
    key, cert = pair(ca)
    fresh = make_csr(generate_private_key_pem(), "pi-1")

    code, why = await renew(gateway, None, fresh)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "without a certificate" in why
    coordinator = ca.issue(Identity(cluster="dev", role="coordinator", name="coordinator"))[1]
    code, why = await renew(gateway, coordinator, fresh)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "/coordinator/" in why
    code, why = await renew(gateway, cert, make_csr(key, "pi-1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "new key" in why
    code, why = await renew(gateway, cert, b"")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "csr_pem" in why
    code, why = await renew(gateway, cert, b"-----BEGIN CERTIFICATE REQUEST-----junk")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "csr_pem" in why
    # A removed node's certificate is refused, whatever the CSR.
    revocations.add(cert_serial(cert), "pi-1")
    code, why = await renew(gateway, cert, fresh)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "revoked" in why
    assert "cloudlessctl token create" in why


async def test_the_gateway_takes_a_bounded_number_of_renewals_to_temporal(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``max_renewals`` in flight, a renewal waits for a slot, and past the queue
    wait it is answered UNAVAILABLE ("busy") without reaching Temporal, so a fleet
    renewing faster than the coordinator signs cannot flood it (bench/cert_rotation.py)."""
    release, two_in = asyncio.Event(), asyncio.Event()
    entered: list[str] = []

    class HeldUpdate:
        """``node/<id>``'s renew_certificate Update, held until ``release``."""

        def __init__(self, client: object, node_id: str) -> None:
            self.node_id = node_id

        async def renew_certificate(
            self, inp: RenewCertificateInput, *, rpc_timeout: timedelta | None = None
        ) -> SignCertificateResult:
            entered.append(self.node_id)
            if len(entered) == 2:
                two_in.set()
            await release.wait()
            now = datetime.now(UTC)
            return SignCertificateResult(
                certificate_pem=f"for {self.node_id}", ca_pem="ca", not_after=now,
                serial="01", issued_at=now, key_id=inp.key_id,
            )  # fmt: skip

    monkeypatch.setattr(gateway_module, "NodeHandle", HeldUpdate)
    gateway = GatewayServicer(
        NoTemporal(),  # type: ignore[arg-type]
        "dev",
        verifier=None,  # type: ignore[arg-type]
        max_renewals=2,
        renewal_queue_wait=1.0,
    )
    certs = [ca.issue(Identity(cluster="dev", role="node", name=f"pi-{i}"))[1] for i in range(4)]

    def csr(i: int) -> bytes:
        return make_csr(generate_private_key_pem(), f"pi-{i}")

    async def renewed(i: int) -> str:
        answer = await gateway.RenewCertificate(
            gateway_pb2.RenewCertificateRequest(csr_pem=csr(i)),
            Context(certs[i]),  # type: ignore[arg-type]
        )
        return answer.certificate_pem.decode()

    held = [asyncio.create_task(renewed(i)) for i in range(2)]
    await two_in.wait()
    code, why = await renew(gateway, certs[2], csr(2))  # no slot within the wait
    assert code == grpc.StatusCode.UNAVAILABLE and why.startswith("busy"), why
    assert entered == ["pi-0", "pi-1"]
    waiting = asyncio.create_task(renewed(3))  # gets the first slot freed
    release.set()
    assert await asyncio.gather(*held, waiting) == ["for pi-0", "for pi-1", "for pi-3"]
    assert entered == ["pi-0", "pi-1", "pi-3"]


# ------------------------------------------------------------------ the secrets channels


class _Secrets(secrets_pb2_grpc.SecretsServiceServicer):
    """Answers with the serial of the client certificate the call came with; a call for
    the secret "slow" waits for ``release`` first (a call in flight during a switch)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()

    async def GetSecret(
        self, request: secrets_pb2.GetSecretRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> secrets_pb2.GetSecretResponse:
        pem = peer_certificate_pem(context)
        assert pem is not None
        if request.name == "slow":
            self.waiting.set()
            await self.release.wait()
        return secrets_pb2.GetSecretResponse(data={"serial": cert_serial(pem).encode()})


async def test_secrets_calls_use_the_renewed_certificate_and_calls_in_flight_finish(
    ca: CertificateAuthority,
) -> None:
    server_material = TLSMaterial(
        *ca.issue(
            Identity(cluster="dev", role="coordinator", name="coordinator"),
            dns_names=[GATEWAY_SERVER_NAME],
        ),
        ca_pem=ca.cert_pem,
    )
    first = TLSMaterial(*pair(ca), ca_pem=ca.cert_pem)
    second = TLSMaterial(*pair(ca), ca_pem=ca.cert_pem)
    servicer = _Secrets()
    server = grpc.aio.server()
    secrets_pb2_grpc.add_SecretsServiceServicer_to_server(servicer, server)
    port = server.add_secure_port(
        f"127.0.0.1:{free_port()}", server_credentials(server_material, require_client_auth=True)
    )
    await server.start()
    client = CoordinatorSecrets.connect(f"127.0.0.1:{port}", first)
    try:

        async def serial(name: str) -> str:
            got = await client.GetSecret(secrets_pb2.GetSecretRequest(name=name), timeout=10)
            return got.data["serial"].decode()

        assert await serial("a") == cert_serial(first.cert_pem)
        in_flight = asyncio.create_task(serial("slow"))
        await servicer.waiting.wait()
        client.reconnect(second)
        assert await serial("a") == cert_serial(second.cert_pem)
        servicer.release.set()
        assert await in_flight == cert_serial(first.cert_pem)  # finished on the old channel
    finally:
        await client.close()
        await server.stop(None)


# ------------------------------------------------------------------ the agent's renewer


class _Gateway(gateway_pb2_grpc.GatewayServiceServicer):
    """Fails the first renewals with the codes given, then signs for the caller."""

    def __init__(self, ca: CertificateAuthority, failures: list[grpc.StatusCode]) -> None:
        self.ca, self.failures = ca, failures
        self.csrs: list[bytes] = []
        #: Who signs and what trust bundle is answered (a CA rotation); default: ``ca``.
        self.signer = ca
        self.bundle = ca.cert_pem
        #: Set once two renewals were asked for.
        self.asked_twice = asyncio.Event()

    async def RenewCertificate(
        self,
        request: gateway_pb2.RenewCertificateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> gateway_pb2.RenewCertificateResponse:
        self.csrs.append(request.csr_pem)
        if len(self.csrs) >= 2:
            self.asked_twice.set()
        if self.failures:
            await context.abort(self.failures.pop(0), "not now")
        pem = peer_certificate_pem(context)
        assert pem is not None
        cert = self.signer.sign_csr(
            request.csr_pem, identity_from_cert(pem), validity=timedelta(seconds=60)
        )
        return gateway_pb2.RenewCertificateResponse(certificate_pem=cert, ca_pem=self.bundle)


@contextlib.asynccontextmanager
async def _gateway(
    ca: CertificateAuthority, failures: list[grpc.StatusCode]
) -> AsyncIterator[tuple[str, _Gateway]]:
    material = TLSMaterial(
        *ca.issue(
            Identity(cluster="dev", role="coordinator", name="coordinator"),
            dns_names=[GATEWAY_SERVER_NAME],
        ),
        ca_pem=ca.cert_pem,
    )
    servicer = _Gateway(ca, failures)
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    port = server.add_secure_port(
        f"127.0.0.1:{free_port()}", server_credentials(material, require_client_auth=True)
    )
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await server.stop(None)


def _enrolled(ca: CertificateAuthority, state: Path) -> TLSMaterial:
    key = generate_private_key_pem()
    cert = ca.sign_csr(make_csr(key, "pi-1"), NODE, validity=timedelta(seconds=60))
    install(state, key, cert)
    return TLSMaterial(key_pem=key, cert_pem=cert, ca_pem=ca.cert_pem)


async def _renew_once(renewer: CertificateRenewer) -> None:
    """Run the renewer until it renewed once (or failed for good), then stop it."""
    stop = asyncio.Event()
    running = asyncio.create_task(renewer.run(stop))
    try:
        await asyncio.wait_for(renewer.wait_renewals(1), timeout=30)
    finally:
        stop.set()
        await running


def _late(seconds: float) -> Callable[[], datetime]:
    """A clock ``seconds`` ahead: the certificate is that much older than it is."""
    return lambda: datetime.now(UTC) + timedelta(seconds=seconds)


async def test_the_renewer_retries_with_the_same_key_then_switches(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    state = tmp_path / "agent"
    material = _enrolled(ca, state)
    switched: list[TLSMaterial] = []

    async def switch(renewed: TLSMaterial) -> None:
        switched.append(renewed)

    failures = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED]
    async with _gateway(ca, failures) as (address, gateway):
        renewer = CertificateRenewer(state, material, address, on_renewed=[switch], clock=_late(45))
        await _renew_once(renewer)
    # One key through the retries (a retry whose answer was lost gets the same certificate).
    keys = {public_key_id(x509.load_pem_x509_csr(csr).public_key()) for csr in gateway.csrs[:3]}
    assert len(gateway.csrs) >= 3 and len(keys) == 1
    renewed = switched[0]
    assert renewed.identity == material.identity and renewed.key_pem != material.key_pem
    assert (state / CERT_FILE).read_bytes() in {m.cert_pem for m in switched}
    assert renewer.failure is None


async def test_the_renewer_stops_when_refused_or_expired(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    material = _enrolled(ca, tmp_path / "a")
    async with _gateway(ca, [grpc.StatusCode.PERMISSION_DENIED]) as (address, _):
        renewer = CertificateRenewer(tmp_path / "a", material, address, clock=_late(45))
        await renewer.run(asyncio.Event())
    with pytest.raises(RenewalRefused, match="not now"):
        await renewer.wait_renewals(1)

    material = _enrolled(ca, tmp_path / "b")
    renewer = CertificateRenewer(tmp_path / "b", material, "127.0.0.1:1", clock=_late(61))
    await renewer.run(asyncio.Event())
    with pytest.raises(CertificateExpired, match="cloudlessctl token create --node pi-1"):
        await renewer.wait_renewals(1)


async def test_a_renewal_brings_the_clusters_trust_bundle_while_the_ca_rotates(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """The coordinator signs with the new CA and answers the bundle of both: the agent
    trusts both from then on (its file first), so it keeps talking to coordinators of
    either CA. A bundle without any CA it trusts is refused, and nothing is installed."""
    new = CertificateAuthority.bootstrap(tmp_path / "new-ca", ca.cluster)
    state = tmp_path / "agent"
    material = _enrolled(ca, state)
    switched: list[TLSMaterial] = []

    async def switch(renewed: TLSMaterial) -> None:
        switched.append(renewed)

    async with _gateway(ca, []) as (address, gateway):
        gateway.signer, gateway.bundle = new, ca.cert_pem + new.cert_pem
        renewer = CertificateRenewer(state, material, address, on_renewed=[switch], clock=_late(45))
        await _renew_once(renewer)
    (renewed,) = switched
    assert renewed.ca_pem == ca.cert_pem + new.cert_pem == (state / CA_FILE).read_bytes()
    verify_issued_by(renewed.cert_pem, new.cert_pem)
    assert TLSMaterial.load(state) == renewed

    # Later, a coordinator that answers only a CA this node never trusted: refused.
    other = CertificateAuthority.bootstrap(tmp_path / "other-ca", ca.cluster)
    state_b = tmp_path / "b"
    material_b = _enrolled(ca, state_b)
    async with _gateway(ca, []) as (address, gateway):
        gateway.signer, gateway.bundle = other, other.cert_pem
        renewer = CertificateRenewer(state_b, material_b, address, clock=_late(45))
        stop = asyncio.Event()
        running = asyncio.create_task(renewer.run(stop))
        try:
            await asyncio.wait_for(gateway.asked_twice.wait(), timeout=30)  # refused, again
        finally:
            stop.set()
            await running
    assert (state_b / CERT_FILE).read_bytes() == material_b.cert_pem
    assert (state_b / KEY_FILE).read_bytes() == material_b.key_pem
    assert renewer.renewals == 0 and renewer.material == material_b


def test_the_agent_waits_for_the_gateways_own_answer() -> None:
    """The gateway lets a renewal take up to ``RENEW_TIMEOUT`` and then answers UNAVAILABLE
    ("retry for the same key"). An agent that gives up sooner abandons renewals the
    coordinator is still completing and asks again: in ``bench/cert_rotation.py`` (1,000
    nodes renewing within 20 s) a fifth of the attempts timed out that way, each retry a
    new handshake and Update when the coordinator was busiest."""
    assert RENEW_TIMEOUT.total_seconds() + 5 <= RPC_TIMEOUT  # a handshake's worth to spare
