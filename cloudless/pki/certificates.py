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


#: At most this many CAs in a trust bundle: the current one and, while the CA rotates,
#: the next or the previous one (a margin for a rotation begun before one ended).
MAX_TRUSTED_CAS = 4
#: And at most this many bytes of PEM.
MAX_BUNDLE_BYTES = 64 * 1024


def load_trust_bundle(pem: bytes) -> list[x509.Certificate]:
    """The CA certificates of a trust bundle (one PEM certificate or several, in order);
    :class:`PKIError` unless 1..``MAX_TRUSTED_CAS`` CA certificates."""
    if not isinstance(pem, bytes | bytearray):
        raise PKIError(f"a trust bundle must be PEM bytes, not {type(pem).__name__}")
    if len(pem) > MAX_BUNDLE_BYTES:
        raise PKIError(f"a trust bundle is at most {MAX_BUNDLE_BYTES} bytes, got {len(pem)}")
    try:
        certs = x509.load_pem_x509_certificates(bytes(pem))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"not a parseable PEM trust bundle: {exc}") from None
    if not 1 <= len(certs) <= MAX_TRUSTED_CAS:
        raise PKIError(
            f"a trust bundle holds 1 to {MAX_TRUSTED_CAS} CA certificates, got {len(certs)}"
        )
    for i, cert in enumerate(certs):
        if not _is_ca(cert):
            raise PKIError(f"trust bundle certificate {i + 1} is not a CA (BasicConstraints)")
    return certs


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _within(label: str, cert: x509.Certificate, moment: datetime) -> None:
    if moment < cert.not_valid_before_utc:
        raise PKIError(
            f"{label} is not valid until {cert.not_valid_before_utc.isoformat()}; "
            "check this machine's clock"
        )
    if moment > cert.not_valid_after_utc:
        raise PKIError(f"{label} expired at {cert.not_valid_after_utc.isoformat()}")


def verify_issued_by(cert_pem: bytes, ca_cert_pem: bytes, *, now: datetime | None = None) -> None:
    """Check that ``cert_pem`` was signed by a CA of ``ca_cert_pem`` (one CA certificate,
    or a trust bundle of several while the CA rotates) and that both are within their
    validity window."""
    cert = load_certificate(cert_pem)
    cas = load_trust_bundle(ca_cert_pem)
    moment = now or _now()
    issuer: x509.Certificate | None = None
    reasons: list[str] = []
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except InvalidSignature:
            reasons.append("signature does not verify")
            continue
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            reasons.append(str(exc)[:200])
            continue
        issuer = ca
        break
    if issuer is None:
        which = "this CA" if len(cas) == 1 else f"any of the {len(cas)} trusted CAs"
        raise PKIError(f"certificate was not issued by {which}: {'; '.join(reasons)}")
    _within("certificate", cert, moment)
    _within("CA certificate", issuer, moment)


def accept_trust_update(current_pem: bytes, offered_pem: bytes) -> bytes:
    """The trust bundle to hold after ``offered_pem`` came from an authenticated peer,
    normalized (each CA once, in the offered order).

    It must keep at least one CA of ``current_pem``: trust moves from CA to CA through an
    overlap, never by replacing everything at once (a peer that could do that could hand
    the node to a CA of its own). Every CA must be of the same cluster as the current ones.
    """
    current = load_trust_bundle(current_pem)
    offered = load_trust_bundle(offered_pem)
    known = {cert_fingerprint(_pem(c)) for c in current}
    clusters = {_organizational_unit(c) for c in current}
    seen: set[str] = set()
    kept: list[bytes] = []
    for ca in offered:
        if _organizational_unit(ca) not in clusters:
            raise PKIError(
                f"the offered trust bundle holds a CA of another cluster "
                f"({_organizational_unit(ca)!r}); refused"
            )
        fingerprint = cert_fingerprint(_pem(ca))
        if fingerprint not in seen:
            seen.add(fingerprint)
            kept.append(_pem(ca))
    if not seen & known:
        raise PKIError(
            "the offered trust bundle shares no CA with the one this node trusts: the "
            "cluster's CA was replaced without an overlap this node saw; enroll it again "
            "(`cloudlessctl token create --node <name>`)"
        )
    return b"".join(kept)


def _organizational_unit(cert: x509.Certificate) -> str:
    units = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(units[0].value) if units else ""


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
