"""``tls.peer_identity``: the identity of an RPC's verified client certificate, parsed once
per certificate and then served from a bounded cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloudless import pki, tls
from cloudless.pki import CertificateAuthority, Identity


class Context:
    """What gRPC hands a handler: only the auth context matters here."""

    def __init__(self, pems: list[bytes] | None) -> None:
        self._auth = {} if pems is None else {"x509_pem_cert": pems}

    def auth_context(self) -> dict[str, Any]:
        return self._auth


def test_peer_identity_is_parsed_once_per_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = CertificateAuthority.bootstrap(tmp_path, "dev")
    who = Identity(cluster="dev", role="node", name="n-1")
    _, cert = ca.issue(who)
    parsed: list[bytes] = []
    real = pki.identity_from_cert

    def counting(pem: bytes) -> Identity:
        parsed.append(pem)
        return real(pem)

    monkeypatch.setattr(tls, "identity_from_cert", counting)
    for _ in range(3):
        assert tls.peer_identity(Context([cert])) == who  # type: ignore[arg-type]
    assert parsed == [cert]
    assert tls.peer_identity(Context(None)) is None  # type: ignore[arg-type]
    assert tls.peer_identity(Context([])) is None  # type: ignore[arg-type]
    assert tls.peer_identity(Context([b"not a certificate"])) is None  # type: ignore[arg-type]


def test_peer_identity_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls, "IDENTITY_CACHE_SIZE", 2)
    monkeypatch.setattr(tls, "_identities", {})
    ca = CertificateAuthority.bootstrap(tmp_path, "dev")
    certs = [ca.issue(Identity(cluster="dev", role="node", name=f"n-{i}"))[1] for i in range(4)]
    for i, cert in enumerate(certs):
        assert tls.peer_identity(Context([cert])).name == f"n-{i}"  # type: ignore[arg-type,union-attr]
    assert list(tls._identities) == certs[2:]
