"""Reading certificates: parse, verify against the CA, the Cloudless identity a (peer)
certificate carries, its fingerprint and expiry.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cloudless.errors import PKIError
from cloudless.pki.identity import Identity


def _now() -> datetime:
    return datetime.now(UTC)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


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


def cert_not_before(cert_pem: bytes) -> datetime:
    """Start of validity (cluster certificates are backdated by ``CLOCK_SKEW``)."""
    return load_certificate(cert_pem).not_valid_before_utc


def public_key_id(key: object) -> str:
    """SHA-256 hex of a public key's SubjectPublicKeyInfo: names a key, whatever carries it."""
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise PKIError(f"{type(key).__name__} keys are not accepted; use EC P-256")
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def cert_key_id(cert_pem: bytes) -> str:
    """:func:`public_key_id` of the certificate's key."""
    return public_key_id(load_certificate(cert_pem).public_key())


def cert_serial(cert_pem: bytes) -> str:
    """The serial number in lowercase hex: what a revocation names a certificate by."""
    return format(load_certificate(cert_pem).serial_number, "x")
