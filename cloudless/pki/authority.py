"""The cluster certificate authority: created once per cluster (or loaded), it signs the
node, coordinator and admin certificates, choosing their names and usages itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloudless.errors import PKIError
from cloudless.pki.certificates import _is_ca, _now, cert_fingerprint, load_certificate
from cloudless.pki.csr import (
    _load_csr,
    _load_signing_key,
    _SignKey,
    generate_private_key_pem,
    make_csr,
)
from cloudless.pki.files import (
    read_private_file,
    read_public_file,
    write_private_file,
    write_public_file,
)
from cloudless.pki.identity import _DNS_LABEL, Identity, is_dns_label

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"
#: Backdate not_before so peers with slightly slow clocks accept a fresh certificate.
CLOCK_SKEW = timedelta(minutes=5)
_CA_ORG = "Cloudless"


# --------------------------------------------------------------------------- SANs


def _dns_name(value: str) -> str:
    name = value.lower().rstrip(".") if isinstance(value, str) else ""
    if (
        not name
        or len(name) > 253
        or not all(_DNS_LABEL.fullmatch(label) for label in name.split("."))
    ):
        raise PKIError(f"DNS name {value!r} is not a valid hostname")
    return name


def _ip_address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise PKIError(f"IP address {value!r} is not valid") from None


def _subject_alt_names(
    identity: Identity, dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> list[x509.GeneralName]:
    if isinstance(dns_names, str) or isinstance(ip_addresses, str):
        raise PKIError("dns_names and ip_addresses must be sequences of strings, not a string")
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri())]
    seen_dns: set[str] = set()
    for raw in (identity.name, *dns_names):
        dns = _dns_name(raw)
        if dns not in seen_dns:
            seen_dns.add(dns)
            names.append(x509.DNSName(dns))
    seen_ip: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for raw in ip_addresses:
        ip = _ip_address(raw)
        if ip not in seen_ip:
            seen_ip.add(ip)
            names.append(x509.IPAddress(ip))
    return names


def _public_der(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _ca_cluster(cert: x509.Certificate) -> str:
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if [a.value for a in orgs] != [_CA_ORG] or len(units) != 1 or not is_dns_label(units[0].value):
        raise PKIError("CA certificate does not carry a Cloudless cluster name (O=Cloudless, OU)")
    return str(units[0].value)


class CertificateAuthority:
    """The cluster CA: signs node, coordinator and admin certificates.

    Construct with :meth:`bootstrap` (first start) or :meth:`load`. The private key never
    leaves this object; only :attr:`cert_pem` is meant to be distributed.
    """

    cert_pem: bytes
    cluster: str

    def __init__(self, key: _SignKey, cert: x509.Certificate) -> None:
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            raise PKIError(
                "CA certificate and CA key do not match (ca.crt was not issued for ca.key); "
                "restore the matching pair from backup"
            )
        if not _is_ca(cert):
            raise PKIError("CA certificate lacks BasicConstraints CA=true")
        self._key = key
        self._cert = cert
        self.cluster = _ca_cluster(cert)
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)

    def __repr__(self) -> str:
        return f"CertificateAuthority(cluster={self.cluster!r}, fingerprint={self.fingerprint})"

    @property
    def certificate(self) -> x509.Certificate:
        """The parsed CA certificate."""
        return self._cert

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex of the CA certificate; what an agent pins on first contact."""
        return cert_fingerprint(self.cert_pem)

    # ---- construction

    @staticmethod
    def _self_sign(key: _SignKey, cluster: str, validity: timedelta) -> bytes:
        now = _now()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _CA_ORG),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, cluster),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Cloudless {cluster} CA"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + validity)
            # path_length=0: the CA signs leaves only, never intermediates.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def bootstrap(
        cls,
        directory: Path,
        cluster: str,
        *,
        validity: timedelta = timedelta(days=3650),
        key_file: str = CA_KEY_FILE,
        cert_file: str = CA_CERT_FILE,
    ) -> CertificateAuthority:
        """Create the CA in ``directory`` if absent, else load it; never overwrites.

        Files are published with create-if-absent semantics, so two coordinators
        bootstrapping at once end up sharing one CA instead of clobbering each other. A key
        without a certificate (crash between the two writes) is completed, not replaced.
        """
        if not is_dns_label(cluster):
            raise PKIError(f"cluster name {cluster!r} is not a DNS-1123 label")
        if validity <= timedelta(0):
            raise PKIError(f"CA validity must be positive, got {validity}")
        directory = Path(directory)
        key_path, cert_path = directory / key_file, directory / cert_file
        if cert_path.exists() and not key_path.exists():
            raise PKIError(
                f"{cert_path} exists but {key_path} is missing; restore the key from backup "
                "(refusing to create a new CA next to an existing certificate)"
            )
        if not key_path.exists():
            with contextlib.suppress(FileExistsError):
                write_private_file(key_path, generate_private_key_pem(), overwrite=False)
        if not cert_path.exists():
            key = _load_signing_key(read_private_file(key_path), str(key_path))
            with contextlib.suppress(FileExistsError):
                write_public_file(
                    cert_path, cls._self_sign(key, cluster, validity), overwrite=False
                )
        ca = cls.load(directory, key_file=key_file, cert_file=cert_file)
        if ca.cluster != cluster:
            raise PKIError(
                f"{directory} holds the CA of cluster {ca.cluster!r}, not {cluster!r}; "
                "use another directory or the matching cluster name"
            )
        return ca

    @classmethod
    def ephemeral(
        cls, cluster: str, validity: timedelta = timedelta(days=3650)
    ) -> CertificateAuthority:
        """A CA that lives in this process's memory only: for a listener whose one client
        is this same process, so it never depends on the cluster CA (which rotates)."""
        key = _load_signing_key(generate_private_key_pem(), "an ephemeral CA key")
        return cls(key, load_certificate(cls._self_sign(key, cluster, validity)))

    @classmethod
    def load(
        cls, directory: Path, *, key_file: str = CA_KEY_FILE, cert_file: str = CA_CERT_FILE
    ) -> CertificateAuthority:
        """Load ``ca.key`` and ``ca.crt`` (or the files named); refuses a loosely
        permissioned key or a mismatch."""
        directory = Path(directory)
        key_path, cert_path = directory / key_file, directory / cert_file
        key = _load_signing_key(read_private_file(key_path), str(key_path))
        try:
            cert = load_certificate(read_public_file(cert_path))
        except PKIError as exc:
            raise PKIError(f"{cert_path}: {exc}") from None
        return cls(key, cert)

    # ---- issuing

    def sign_csr(
        self,
        csr_pem: bytes,
        identity: Identity,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        validity: timedelta = timedelta(days=30),
        server: bool = True,
        client: bool = True,
    ) -> bytes:
        """Issue a leaf certificate for the CSR's key, naming ``identity``.

        Only the CSR's public key (and proof of possession) is used: subject, SANs and usages
        come from the arguments, which the caller has authorized. Honouring requested SANs
        would let an enrolling node claim to be the coordinator.
        """
        if identity.cluster != self.cluster:
            raise PKIError(
                f"identity {identity.uri()} is for cluster {identity.cluster!r}, "
                f"but this CA signs for {self.cluster!r}"
            )
        if not (server or client):
            raise PKIError("certificate needs server and/or client usage")
        if validity <= timedelta(0):
            raise PKIError(f"certificate validity must be positive, got {validity}")
        csr = _load_csr(csr_pem)
        sans = _subject_alt_names(identity, dns_names, ip_addresses)
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)

        now = _now()
        # A leaf outliving its CA is useless and hides the real expiry, so cap it.
        not_after = min(now + validity, self._cert.not_valid_after_utc)
        if not_after <= now:
            raise PKIError(
                f"CA certificate expired at {self._cert.not_valid_after_utc.isoformat()}; "
                "rotate the cluster CA"
            )
        is_ec = isinstance(public_key, ec.EllipticCurvePublicKey)
        usages = [
            oid
            for oid, wanted in (
                (ExtendedKeyUsageOID.SERVER_AUTH, server),
                (ExtendedKeyUsageOID.CLIENT_AUTH, client),
            )
            if wanted
        ]
        try:
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            )
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.name)]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    # RSA key transport (TLS 1.2 RSA kx) needs keyEncipherment; EC uses ECDH.
                    key_encipherment=not is_ec,
                    data_encipherment=False,
                    key_agreement=is_ec,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(aki, critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        identity: Identity,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        validity: timedelta = timedelta(days=30),
        server: bool = True,
        client: bool = True,
    ) -> tuple[bytes, bytes]:
        """Generate a key and certificate in-process (for the coordinator's own identities)."""
        key_pem = generate_private_key_pem()
        cert_pem = self.sign_csr(
            make_csr(key_pem, identity.name),
            identity,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            validity=validity,
            server=server,
            client=client,
        )
        return key_pem, cert_pem
