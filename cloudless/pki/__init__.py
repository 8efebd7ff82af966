"""Cluster certificate authority and certificate helpers.

Every Cloudless process authenticates with mTLS certificates issued by one per-cluster CA
(DESIGN.md section 4). Identity lives in a single URI SAN, ``cloudless://<cluster>/<role>/<name>``,
so authorization never depends on parsing free-form subject names.

Keys are EC P-256 and signatures SHA-256: small, fast, and accepted by every TLS stack we use
(gRPC/BoringSSL, aioquic). Private material is written atomically with mode 0600 from the
moment the file exists, so a crash or a concurrent reader never sees a partial or readable key.

Import from the package (``from cloudless.pki import CertificateAuthority``). The modules:

* :mod:`~cloudless.pki.authority`: ``CertificateAuthority`` (bootstrap or load the CA,
  sign CSRs with the names and usages it chooses).
* :mod:`~cloudless.pki.identity`: ``Identity`` (the URI SAN) and ``Role``.
* :mod:`~cloudless.pki.csr`: private keys and CSRs: ``generate_private_key_pem``,
  ``make_csr``, and ``check_csr``, the key policy a CSR passes before it is signed
  (``check_renewal_csr`` also requires a key other than the certificate's being renewed).
* :mod:`~cloudless.pki.certificates`: reading certificates: ``load_certificate``,
  ``verify_issued_by``, ``identity_from_cert``, ``cert_fingerprint``, ``cert_not_after``,
  ``cert_not_before``, ``cert_serial``, ``cert_key_id``/``public_key_id`` (which key).
* :mod:`~cloudless.pki.files`: files holding key material (``write_private_file``,
  ``write_public_file``, ``read_private_file``), used for every secret kept on disk.
"""

from __future__ import annotations

from cloudless.pki.authority import CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority
from cloudless.pki.certificates import (
    accept_trust_update,
    cert_fingerprint,
    cert_key_id,
    cert_not_after,
    cert_not_before,
    cert_serial,
    identity_from_cert,
    load_certificate,
    load_trust_bundle,
    public_key_id,
    verify_issued_by,
)
from cloudless.pki.csr import check_csr, check_renewal_csr, generate_private_key_pem, make_csr
from cloudless.pki.files import read_private_file, write_private_file, write_public_file
from cloudless.pki.identity import Identity, Role, is_dns_label

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CertificateAuthority",
    "Identity",
    "Role",
    "accept_trust_update",
    "cert_fingerprint",
    "cert_key_id",
    "cert_not_after",
    "cert_not_before",
    "cert_serial",
    "check_csr",
    "check_renewal_csr",
    "generate_private_key_pem",
    "identity_from_cert",
    "is_dns_label",
    "load_certificate",
    "load_trust_bundle",
    "make_csr",
    "public_key_id",
    "read_private_file",
    "verify_issued_by",
    "write_private_file",
    "write_public_file",
]
