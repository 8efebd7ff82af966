"""Cluster CA and certificate helpers, exercised with real keys and certificates."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import shutil
import ssl
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudless.errors import PKIError
from cloudless.pki import (
    CertificateAuthority,
    Identity,
    cert_fingerprint,
    cert_not_after,
    generate_private_key_pem,
    identity_from_cert,
    load_certificate,
    make_csr,
    verify_issued_by,
    write_private_file,
    write_public_file,
)

NODE = Identity(cluster="prod", role="node", name="edge-1")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.bootstrap(tmp_path / "ca", "prod")


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Run with umask 0, so only explicit modes protect files."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _csr_with_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, *, cn: str = "x") -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _pem(der: bytes, label: str) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        b"\n".join([f"-----BEGIN {label}-----".encode(), *lines, f"-----END {label}-----".encode()])
        + b"\n"
    )


# --------------------------------------------------------------------------- identity


def test_identity_uri_round_trip() -> None:
    assert NODE.uri() == "cloudless://prod/node/edge-1"
    assert Identity.from_uri(NODE.uri()) == NODE
    admin = Identity("prod", "admin", "alice")
    assert Identity.from_uri(admin.uri()) == admin


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "cloudless://prod/node",
        "cloudless://prod/node/edge-1/extra",
        "https://prod/node/edge-1",
        "cloudless://prod/root/edge-1",
        "cloudless://Prod/node/edge-1",
        "cloudless://prod/node/edge_1",
        "cloudless://prod/node/-edge",
        "cloudless:///node/edge-1",
        "cloudless://prod/node/edge-1\n",
    ],
)
def test_identity_from_malformed_uri_is_refused(uri: str) -> None:
    with pytest.raises(PKIError):
        Identity.from_uri(uri)


def test_identity_validates_fields() -> None:
    with pytest.raises(PKIError, match="DNS-1123"):
        Identity("prod", "node", "a" * 64)
    with pytest.raises(PKIError, match="role"):
        Identity("prod", "root", "x")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- files


def test_private_and_public_files_get_exact_modes(tmp_path: Path, permissive_umask: None) -> None:
    secret = tmp_path / "new" / "dir" / "k.pem"
    write_private_file(secret, b"secret")
    assert secret.read_bytes() == b"secret"
    assert _mode(secret) == 0o600
    assert _mode(secret.parent) == 0o700
    assert _mode(secret.parent.parent) == 0o700  # ancestors too, despite umask 0
    public = tmp_path / "pub" / "c.pem"
    write_public_file(public, b"cert")
    assert _mode(public) == 0o644
    write_private_file(secret, b"rotated")  # overwrite is atomic replace
    assert secret.read_bytes() == b"rotated"
    assert _mode(secret) == 0o600
    assert sorted(p.name for p in secret.parent.iterdir()) == ["k.pem"]  # no temp left


def test_exclusive_write_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    write_private_file(path, b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        write_private_file(path, b"second", overwrite=False)
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]


# --------------------------------------------------------------------------- bootstrap / load


def test_bootstrap_creates_files_with_modes_and_is_idempotent(
    tmp_path: Path, permissive_umask: None
) -> None:
    directory = tmp_path / "pki"
    first = CertificateAuthority.bootstrap(directory, "prod")
    assert _mode(directory / "ca.key") == 0o600
    assert _mode(directory / "ca.crt") == 0o644
    assert _mode(directory) == 0o700
    key_before = (directory / "ca.key").read_bytes()

    second = CertificateAuthority.bootstrap(directory, "prod")
    assert second.cert_pem == first.cert_pem
    assert (directory / "ca.key").read_bytes() == key_before
    assert CertificateAuthority.load(directory).cert_pem == first.cert_pem
    assert first.cluster == "prod"
    assert "BEGIN" not in repr(first)  # never leaks key material


def test_ca_certificate_is_a_constrained_ca(ca: CertificateAuthority) -> None:
    cert = load_certificate(ca.cert_pem)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"


def test_bootstrap_refuses_other_cluster(ca: CertificateAuthority, tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="'prod', not 'staging'"):
        CertificateAuthority.bootstrap(tmp_path / "ca", "staging")


def test_too_open_key_is_refused_with_fix(ca: CertificateAuthority, tmp_path: Path) -> None:
    key = tmp_path / "ca" / "ca.key"
    key.chmod(0o640)
    with pytest.raises(PKIError, match=r"chmod 600") as err:
        CertificateAuthority.load(tmp_path / "ca")
    assert "0o640" in str(err.value)
    with pytest.raises(PKIError, match=r"chmod 600"):
        CertificateAuthority.bootstrap(tmp_path / "ca", "prod")


def test_cert_key_mismatch_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    CertificateAuthority.bootstrap(tmp_path / "other", "prod")
    shutil.copy(tmp_path / "other" / "ca.crt", tmp_path / "ca" / "ca.crt")
    with pytest.raises(PKIError, match="do not match"):
        CertificateAuthority.load(tmp_path / "ca")


def test_certificate_without_key_is_not_replaced(ca: CertificateAuthority, tmp_path: Path) -> None:
    (tmp_path / "ca" / "ca.key").unlink()
    with pytest.raises(PKIError, match="restore the key"):
        CertificateAuthority.bootstrap(tmp_path / "ca", "prod")
    assert (tmp_path / "ca" / "ca.crt").read_bytes() == ca.cert_pem


def test_key_without_certificate_is_completed(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    key_pem = generate_private_key_pem()
    write_private_file(directory / "ca.key", key_pem)
    ca = CertificateAuthority.bootstrap(directory, "prod")
    assert (directory / "ca.key").read_bytes() == key_pem
    key = serialization.load_pem_private_key(key_pem, None)
    assert load_certificate(ca.cert_pem).public_key() == key.public_key()


def test_load_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="does not exist"):
        CertificateAuthority.load(tmp_path / "nope")


# --------------------------------------------------------------------------- signing


def test_signed_csr_has_requested_names_and_usages(ca: CertificateAuthority) -> None:
    key_pem = generate_private_key_pem()
    cert_pem = ca.sign_csr(
        make_csr(key_pem, "whatever"),
        NODE,
        dns_names=["edge-1.prod.internal", "EDGE-1"],
        ip_addresses=["10.0.0.7", "fd00::7"],
        validity=timedelta(days=7),
    )
    verify_issued_by(cert_pem, ca.cert_pem)
    assert identity_from_cert(cert_pem) == NODE
    cert = load_certificate(cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-1"
    assert cert.issuer == load_certificate(ca.cert_pem).subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [NODE.uri()]
    assert san.get_values_for_type(x509.DNSName) == ["edge-1", "edge-1.prod.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("fd00::7"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_agreement and not usage.key_cert_sign
    ca_ski = load_certificate(ca.cert_pem).extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    )
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.value.digest
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    # The certificate is for the CSR's key.
    key = serialization.load_pem_private_key(key_pem, None)
    assert cert.public_key() == key.public_key()
    # Backdated for clock skew, valid for the requested period.
    now = datetime.now(UTC)
    assert now - timedelta(minutes=6) < cert.not_valid_before_utc < now - timedelta(minutes=4)
    assert abs(cert_not_after(cert_pem) - (now + timedelta(days=7))) < timedelta(minutes=1)
    assert cert_not_after(cert_pem).tzinfo is not None


def test_usage_flags_select_ekus(ca: CertificateAuthority) -> None:
    csr = make_csr(generate_private_key_pem(), "x")
    client_only = load_certificate(ca.sign_csr(csr, NODE, server=False))
    eku = client_only.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    server_only = load_certificate(ca.sign_csr(csr, NODE, client=False))
    eku = server_only.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(PKIError, match="server and/or client"):
        ca.sign_csr(csr, NODE, server=False, client=False)


def test_sans_requested_in_csr_are_ignored(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coordinator")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("coordinator.prod"),
                    x509.UniformResourceIdentifier("cloudless://prod/coordinator/main"),
                    x509.IPAddress(ipaddress.ip_address("10.9.9.9")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    cert_pem = ca.sign_csr(csr, NODE)
    cert = load_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(NODE.uri()), x509.DNSName("edge-1")]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-1"
    assert identity_from_cert(cert_pem) == NODE


def test_tampered_csr_signature_is_refused(ca: CertificateAuthority) -> None:
    csr_pem = make_csr(generate_private_key_pem(), "edge-1")
    der = x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)
    assert der.count(b"edge-1") == 1
    tampered = _pem(der.replace(b"edge-1", b"edge-2"), "CERTIFICATE REQUEST")
    x509.load_pem_x509_csr(tampered)  # still parses: only the signature is wrong
    with pytest.raises(PKIError, match="CSR signature does not verify"):
        ca.sign_csr(tampered, NODE)


def test_weak_rsa_key_is_refused(ca: CertificateAuthority) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(
        PKIError, match="RSA key of 1024 bits is too weak; use EC P-256 or RSA >= 2048"
    ):
        ca.sign_csr(_csr_with_key(weak), NODE)


def test_rsa_2048_is_accepted_with_key_encipherment(ca: CertificateAuthority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = load_certificate(ca.sign_csr(_csr_with_key(key), NODE))
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_agreement


def test_p384_is_accepted_and_other_curves_are_not(ca: CertificateAuthority) -> None:
    ca.sign_csr(_csr_with_key(ec.generate_private_key(ec.SECP384R1())), NODE)
    with pytest.raises(PKIError, match="secp256k1 is not accepted"):
        ca.sign_csr(_csr_with_key(ec.generate_private_key(ec.SECP256K1())), NODE)


def test_ed25519_csr_is_refused(ca: CertificateAuthority) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, None)
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(PKIError, match="Ed25519 keys are not accepted"):
        ca.sign_csr(csr, NODE)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"not a csr",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_garbage_csr_is_refused(ca: CertificateAuthority, garbage: bytes) -> None:
    with pytest.raises(PKIError, match="not a parseable PEM certificate signing request"):
        ca.sign_csr(garbage, NODE)


def test_oversized_csr_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(PKIError, match="limit"):
        ca.sign_csr(b"A" * (16 * 1024 + 1), NODE)


def test_identity_must_belong_to_the_ca_cluster(ca: CertificateAuthority) -> None:
    csr = make_csr(generate_private_key_pem(), "x")
    with pytest.raises(PKIError, match="cluster 'staging'"):
        ca.sign_csr(csr, Identity("staging", "node", "edge-1"))


@pytest.mark.parametrize(
    ("dns", "ips", "reason"),
    [
        (["bad_name"], [], "DNS name"),
        (["a..b"], [], "DNS name"),
        ([], ["10.0.0.256"], "IP address"),
        ([], ["example.com"], "IP address"),
    ],
)
def test_invalid_sans_are_refused(
    ca: CertificateAuthority, dns: list[str], ips: list[str], reason: str
) -> None:
    csr = make_csr(generate_private_key_pem(), "x")
    with pytest.raises(PKIError, match=reason):
        ca.sign_csr(csr, NODE, dns_names=dns, ip_addresses=ips)


def test_leaf_validity_is_capped_at_ca_expiry(tmp_path: Path) -> None:
    short = CertificateAuthority.bootstrap(tmp_path / "ca", "prod", validity=timedelta(days=2))
    _, cert_pem = short.issue(NODE, validity=timedelta(days=30))
    assert cert_not_after(cert_pem) == load_certificate(short.cert_pem).not_valid_after_utc


def test_issue_returns_matching_key_and_cert(ca: CertificateAuthority) -> None:
    coordinator = Identity("prod", "coordinator", "main")
    key_pem, cert_pem = ca.issue(coordinator, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert load_certificate(cert_pem).public_key() == key.public_key()
    assert identity_from_cert(cert_pem) == coordinator
    verify_issued_by(cert_pem, ca.cert_pem)


# --------------------------------------------------------------------------- inspection


def test_verify_issued_by_rejects_other_ca_and_expiry(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    other = CertificateAuthority.bootstrap(tmp_path / "other", "prod")
    _, cert_pem = ca.issue(NODE, validity=timedelta(days=1))
    with pytest.raises(PKIError):
        verify_issued_by(cert_pem, other.cert_pem)  # same subject, different key
    with pytest.raises(PKIError, match="expired"):
        verify_issued_by(cert_pem, ca.cert_pem, now=datetime.now(UTC) + timedelta(days=2))
    with pytest.raises(PKIError, match="not valid until"):
        verify_issued_by(cert_pem, ca.cert_pem, now=datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(PKIError, match="not a CA"):
        verify_issued_by(cert_pem, cert_pem)


def test_identity_from_cert_accepts_der_and_needs_a_uri(ca: CertificateAuthority) -> None:
    _, cert_pem = ca.issue(NODE)
    der = load_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    assert identity_from_cert(der) == NODE
    with pytest.raises(PKIError, match="no subjectAltName"):
        identity_from_cert(ca.cert_pem)
    with pytest.raises(PKIError):
        identity_from_cert(b"\x30\x03garbage")


def test_fingerprint_and_garbage_certificates(ca: CertificateAuthority) -> None:
    der = load_certificate(ca.cert_pem).public_bytes(serialization.Encoding.DER)
    assert cert_fingerprint(ca.cert_pem) == hashlib.sha256(der).hexdigest()
    with pytest.raises(PKIError, match="not a parseable PEM certificate"):
        load_certificate(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(PKIError):
        cert_fingerprint(b"garbage")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2048))
def test_random_csr_bytes_only_raise_pki_error(ca: CertificateAuthority, data: bytes) -> None:
    framed = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(data)
    framed += b"-----END CERTIFICATE REQUEST-----\n"
    for candidate in (data, framed):
        with pytest.raises(PKIError):
            ca.sign_csr(candidate, NODE)


def test_concurrent_bootstraps_share_one_ca(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        cas = list(
            pool.map(lambda _: CertificateAuthority.bootstrap(tmp_path / "ca", "prod"), range(8))
        )
    assert len({ca.cert_pem for ca in cas}) == 1
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca.crt", "ca.key"]


def test_issued_certificates_complete_a_mutual_tls_handshake(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """OpenSSL accepts what we issue: server name, client auth, both directions verified."""
    server_key, server_cert = ca.issue(NODE, dns_names=["edge-1.prod"])
    client_key, client_cert = ca.issue(Identity("prod", "coordinator", "main"), server=False)
    files = {
        "ca.pem": ca.cert_pem,
        "s.key": server_key,
        "s.crt": server_cert,
        "c.key": client_key,
        "c.crt": client_cert,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")
    server_ctx.load_verify_locations(tmp_path / "ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_cert_chain(tmp_path / "c.crt", tmp_path / "c.key")
    client_ctx.load_verify_locations(tmp_path / "ca.pem")

    to_server, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    to_client, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(to_server, from_server, server_side=True)
    client = client_ctx.wrap_bio(to_client, from_client, server_hostname="edge-1.prod")
    done: set[str] = set()
    for _ in range(10):
        for side, conn in (("client", client), ("server", server)):
            if side not in done:
                try:
                    conn.do_handshake()
                    done.add(side)
                except ssl.SSLWantReadError:
                    pass
        to_server.write(from_client.read())
        to_client.write(from_server.read())
    assert done == {"client", "server"}
    peer = server.getpeercert(binary_form=True)
    assert peer is not None
    assert identity_from_cert(peer) == Identity("prod", "coordinator", "main")
