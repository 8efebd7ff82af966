"""Private keys and certificate signing requests: generating them (agents and the
coordinator's own identities), and the checks a CSR passes before the CA signs it (size,
parse, key policy, self-signature).
"""

from __future__ import annotations

from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from cloudless.errors import PKIError
from cloudless.pki.certificates import cert_key_id, public_key_id

#: Upper bound on a CSR we are willing to parse; real ones are < 2 KiB. Bounds parser work
#: on input that arrives from not-yet-trusted agents.
MAX_CSR_BYTES = 16 * 1024

_MIN_RSA_BITS = 2048
_MAX_RSA_BITS = 8192
_ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)

_SignKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


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


def check_renewal_csr(csr_pem: bytes, current_cert_pem: bytes) -> str:
    """Validate a renewal's CSR (as :func:`check_csr`) and that it is for a NEW key, not
    the one of ``current_cert_pem`` (the caller's certificate); returns the new key's id
    (:func:`~cloudless.pki.certificates.public_key_id`).

    A renewal that kept the key would extend the life of a key that may have leaked.
    """
    key_id = public_key_id(_load_csr(csr_pem).public_key())
    if key_id == cert_key_id(current_cert_pem):
        raise PKIError(
            "the CSR is for the key of the certificate being renewed; a renewal needs a "
            "new key (generate one per renewal)"
        )
    return key_id
