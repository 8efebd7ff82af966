"""Cluster certificate authority and certificate helpers.

Every Cloudless process authenticates with mTLS certificates issued by one per-cluster CA
(DESIGN.md section 4). Identity lives in a single URI SAN, ``cloudless://<cluster>/<role>/<name>``,
so authorization never depends on parsing free-form subject names.

Keys are EC P-256 and signatures SHA-256: small, fast, and accepted by every TLS stack we use
(gRPC/BoringSSL, aioquic). Private material is written atomically with mode 0600 from the
moment the file exists, so a crash or a concurrent reader never sees a partial or readable key.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeAlias, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloudless.errors import PKIError

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CertificateAuthority",
    "Identity",
    "Role",
    "cert_fingerprint",
    "cert_not_after",
    "generate_private_key_pem",
    "identity_from_cert",
    "is_dns_label",
    "load_certificate",
    "make_csr",
    "read_private_file",
    "verify_issued_by",
    "write_private_file",
    "write_public_file",
]

Role: TypeAlias = Literal["node", "coordinator", "admin"]
_ROLES: frozenset[str] = frozenset(get_args(Role))

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"

#: Upper bound on a CSR we are willing to parse; real ones are < 2 KiB. Bounds parser work
#: on input that arrives from not-yet-trusted agents.
MAX_CSR_BYTES = 16 * 1024
#: Upper bound on key/cert files we read from disk.
_MAX_FILE_BYTES = 1024 * 1024
#: Backdate not_before so peers with slightly slow clocks accept a fresh certificate.
CLOCK_SKEW = timedelta(minutes=5)

_MIN_RSA_BITS = 2048
_MAX_RSA_BITS = 8192
_ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_IDENTITY_URI = re.compile(r"cloudless://([^/]*)/([^/]*)/([^/]*)")
_CA_ORG = "Cloudless"

_SignKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def is_dns_label(value: object) -> bool:
    """True if ``value`` is a DNS-1123 label (lowercase alnum and '-', 1-63 chars)."""
    return isinstance(value, str) and _DNS_LABEL.fullmatch(value) is not None


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class Identity:
    """Who a certificate speaks for; encoded as the certificate's single Cloudless URI SAN."""

    cluster: str
    role: Role
    name: str

    def __post_init__(self) -> None:
        if not is_dns_label(self.cluster):
            raise PKIError(
                f"cluster name {self.cluster!r} is not a DNS-1123 label "
                "(lowercase letters, digits and '-', at most 63 characters)"
            )
        if self.role not in _ROLES:
            raise PKIError(f"role {self.role!r} is not one of {', '.join(sorted(_ROLES))}")
        if not is_dns_label(self.name):
            raise PKIError(
                f"{self.role} name {self.name!r} is not a DNS-1123 label "
                "(lowercase letters, digits and '-', at most 63 characters)"
            )

    def uri(self) -> str:
        """The URI SAN value, ``cloudless://<cluster>/<role>/<name>``."""
        return f"cloudless://{self.cluster}/{self.role}/{self.name}"

    @classmethod
    def from_uri(cls, uri: str) -> Identity:
        """Parse a URI SAN; strict, so lookalike URIs cannot smuggle in another identity."""
        match = _IDENTITY_URI.fullmatch(uri) if isinstance(uri, str) else None
        if match is None:
            raise PKIError(
                f"malformed identity URI {uri!r}; expected cloudless://<cluster>/<role>/<name>"
            )
        cluster, role, name = match.groups()
        if role not in _ROLES:
            raise PKIError(f"identity URI {uri!r} has unknown role {role!r}")
        return cls(cluster=cluster, role=role, name=name)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- files


def _fsync_dir(directory: Path) -> None:
    """Persist a rename; without it a power loss can forget the new directory entry."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _ensure_dir(directory: Path, mode: int) -> None:
    """Create ``directory`` and missing ancestors with exactly ``mode``; existing ones are kept.

    ``Path.mkdir(parents=True)`` would create ancestors with umask-derived modes, possibly
    world-writable; a private key's directory chain should not be.
    """
    missing: list[Path] = []
    current = directory
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=mode)
        except FileExistsError:
            continue  # created concurrently; not ours to re-permission
        os.chmod(path, mode)  # mkdir's mode is filtered by the umask


def _atomic_write(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # The mode is applied at creation (O_EXCL, never an existing file), so there is no window
    # in which the content is readable more widely than ``mode``.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; make it exact
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic create-if-absent: FileExistsError if someone won
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_private_file(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Atomically write secret material with mode 0600; the parent is created 0700.

    With ``overwrite=False`` an existing file is kept and :class:`FileExistsError` raised, which
    makes concurrent bootstraps race-free. Other I/O failures become :class:`PKIError`.
    """
    path = Path(path)
    try:
        _ensure_dir(path.parent, 0o700)
        _atomic_write(path, data, 0o600, overwrite=overwrite)
    except FileExistsError:
        if overwrite:
            raise PKIError(f"cannot write {path}: a temporary file collided; retry") from None
        raise
    except OSError as exc:
        raise PKIError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_public_file(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Atomically write non-secret material (certificates, public keys) with mode 0644."""
    path = Path(path)
    try:
        _ensure_dir(path.parent, 0o755)
        _atomic_write(path, data, 0o644, overwrite=overwrite)
    except FileExistsError:
        if overwrite:
            raise PKIError(f"cannot write {path}: a temporary file collided; retry") from None
        raise
    except OSError as exc:
        raise PKIError(f"cannot write {path}: {exc.strerror or exc}") from exc


def read_private_file(path: Path) -> bytes:
    """Read a private key, refusing one that group or other can access.

    A key readable by other local users is already compromised in spirit; failing loudly is
    better than serving certificates signed by it. The mode is checked on the opened file
    descriptor, so a swap between check and read is not possible.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise PKIError(f"private key {path} does not exist") from None
    except OSError as exc:
        raise PKIError(f"cannot read private key {path}: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if mode & 0o077:
            raise PKIError(
                f"private key {path} has mode {mode:#o}, which lets group/other access it; "
                f"run `chmod 600 {path}` (and check it has not leaked)"
            )
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            total += len(chunk)
            if total > _MAX_FILE_BYTES:
                raise PKIError(f"private key {path} is larger than {_MAX_FILE_BYTES} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_public_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise PKIError(f"{path} does not exist") from None
    except OSError as exc:
        raise PKIError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_FILE_BYTES:
        raise PKIError(f"{path} is larger than {_MAX_FILE_BYTES} bytes")
    return data


# --------------------------------------------------------------------------- keys and CSRs


def generate_private_key_pem() -> bytes:
    """A fresh EC P-256 key as unencrypted PKCS8 PEM (protected by file mode, not a password)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_signing_key(key_pem: bytes, what: str) -> _SignKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"{what} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PKIError(f"{what} is a {type(key).__name__}; expected an EC or RSA key")
    return key


def make_csr(key_pem: bytes, common_name: str) -> bytes:
    """A PEM CSR for ``key_pem``; only the key matters, the CA decides names and usages."""
    key = _load_signing_key(key_pem, "CSR key")
    try:
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .sign(key, hashes.SHA256())
        )
    except ValueError as exc:
        raise PKIError(f"cannot build a CSR for common name {common_name!r}: {exc}") from None
    return csr.public_bytes(serialization.Encoding.PEM)


def _describe_key(key: object) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__.removeprefix("_")


def _check_leaf_key(key: object) -> None:
    """Refuse keys that are weak or that parts of our TLS stack cannot use."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise PKIError(
                f"RSA key of {key.key_size} bits is too weak; use EC P-256 or RSA >= 2048"
            )
        if key.key_size > _MAX_RSA_BITS:
            raise PKIError(f"RSA key of {key.key_size} bits is too large; use EC P-256")
        if key.public_numbers().e < 65537:
            raise PKIError("RSA public exponent below 65537 is not accepted; use EC P-256")
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, _ACCEPTED_CURVES):
            return
        raise PKIError(f"EC curve {key.curve.name} is not accepted; use EC P-256 or P-384")
    raise PKIError(f"{_describe_key(key)} keys are not accepted; use EC P-256 or RSA >= 2048")


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    if not isinstance(csr_pem, bytes | bytearray):
        raise PKIError(f"CSR must be PEM bytes, not {type(csr_pem).__name__}")
    if len(csr_pem) > MAX_CSR_BYTES:
        raise PKIError(f"CSR is {len(csr_pem)} bytes; the limit is {MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(bytes(csr_pem))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"CSR is not a parseable PEM certificate signing request: {exc}") from None
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"CSR public key is unsupported or malformed: {exc}") from None
    _check_leaf_key(key)
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"CSR signature cannot be checked: {exc}") from None
    if not valid:
        raise PKIError("CSR signature does not verify (corrupted, or not signed by its own key)")
    return csr


def check_csr(csr_pem: bytes) -> None:
    """Validate a CSR (size, parse, key policy, self-signature) without signing it.

    The gateway calls this before any durable step, so a bad CSR never consumes a token.
    """
    _load_csr(csr_pem)


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


# --------------------------------------------------------------------------- CA


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


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


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
        cls, directory: Path, cluster: str, *, validity: timedelta = timedelta(days=3650)
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
        key_path, cert_path = directory / CA_KEY_FILE, directory / CA_CERT_FILE
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
        ca = cls.load(directory)
        if ca.cluster != cluster:
            raise PKIError(
                f"{directory} holds the CA of cluster {ca.cluster!r}, not {cluster!r}; "
                "use another directory or the matching cluster name"
            )
        return ca

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """Load ``ca.key`` and ``ca.crt``; refuses a loosely permissioned key or a mismatch."""
        directory = Path(directory)
        key_path, cert_path = directory / CA_KEY_FILE, directory / CA_CERT_FILE
        key = _load_signing_key(read_private_file(key_path), str(key_path))
        try:
            cert = load_certificate(_read_public_file(cert_path))
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


# --------------------------------------------------------------------------- inspection


def load_certificate(pem: bytes) -> x509.Certificate:
    """Parse one PEM certificate; :class:`PKIError` on anything else."""
    if not isinstance(pem, bytes | bytearray):
        raise PKIError(f"certificate must be PEM bytes, not {type(pem).__name__}")
    try:
        return x509.load_pem_x509_certificate(bytes(pem))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"not a parseable PEM certificate: {exc}") from None


def _load_pem_or_der(data: bytes) -> x509.Certificate:
    if not isinstance(data, bytes | bytearray):
        raise PKIError(f"certificate must be bytes, not {type(data).__name__}")
    if bytes(data).lstrip().startswith(b"-----BEGIN"):
        return load_certificate(data)
    try:
        return x509.load_der_x509_certificate(bytes(data))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"not a parseable PEM or DER certificate: {exc}") from None


def identity_from_cert(cert_pem_or_der: bytes) -> Identity:
    """The Cloudless identity of a (peer) certificate, taken from its one cloudless:// URI SAN.

    Other URI schemes are ignored; more than one Cloudless URI is refused as ambiguous.
    Callers must still verify the chain (:func:`verify_issued_by` or the TLS handshake).
    """
    cert = _load_pem_or_der(cert_pem_or_der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PKIError("certificate has no subjectAltName, so it carries no identity") from None
    except ValueError as exc:
        raise PKIError(f"certificate extensions are malformed: {exc}") from None
    uris = [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith("cloudless://")
    ]
    if not uris:
        raise PKIError("certificate has no cloudless:// URI SAN, so it carries no identity")
    if len(uris) > 1:
        raise PKIError(f"certificate has {len(uris)} cloudless:// URI SANs; expected exactly one")
    return Identity.from_uri(uris[0])


def verify_issued_by(cert_pem: bytes, ca_cert_pem: bytes, *, now: datetime | None = None) -> None:
    """Check that ``cert_pem`` was signed by the CA and both are within their validity window."""
    cert = load_certificate(cert_pem)
    ca = load_certificate(ca_cert_pem)
    if not _is_ca(ca):
        raise PKIError("issuer certificate is not a CA (BasicConstraints CA=true missing)")
    try:
        cert.verify_directly_issued_by(ca)
    except InvalidSignature:
        raise PKIError("certificate signature does not verify against this CA") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"certificate was not issued by this CA: {exc}") from None
    moment = now or _now()
    for label, checked in (("certificate", cert), ("CA certificate", ca)):
        if moment < checked.not_valid_before_utc:
            raise PKIError(
                f"{label} is not valid until {checked.not_valid_before_utc.isoformat()}; "
                "check this machine's clock"
            )
        if moment > checked.not_valid_after_utc:
            raise PKIError(f"{label} expired at {checked.not_valid_after_utc.isoformat()}")


def cert_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 hex of the DER encoding (the form `openssl x509 -fingerprint -sha256` shows)."""
    der = load_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def cert_not_after(cert_pem: bytes) -> datetime:
    """Expiry as a timezone-aware UTC datetime; drives rotation scheduling."""
    return load_certificate(cert_pem).not_valid_after_utc
