"""The public surface of :mod:`cloudless.pki`: its ``__all__`` is pinned, so moving code
between its modules never drops a name importers rely on."""

from __future__ import annotations

import cloudless.pki

EXPECTED_EXPORTS = [
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


def test_all_is_pinned() -> None:
    assert cloudless.pki.__all__ == EXPECTED_EXPORTS


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from cloudless.pki import *", namespace)
    assert sorted(name for name in namespace if name != "__builtins__") == sorted(EXPECTED_EXPORTS)
