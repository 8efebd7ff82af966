"""cloudless.logins: one-time, short-lived, cluster-bound links into the Temporal UI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudless.errors import CloudlessError
from cloudless.logins import LoginRefused, LoginVerifier, login_url, mint_login
from cloudless.pki import CertificateAuthority
from cloudless.tokens import TokenSigner

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.fixture
def signer(tmp_path: Path) -> TokenSigner:
    return TokenSigner.load_or_create(tmp_path)


def test_a_link_logs_in_once(signer: TokenSigner) -> None:
    verifier = LoginVerifier(signer.public_key_pem(), "dev")
    token = mint_login(signer, cluster="dev", user="ada", role="admin", now=NOW)
    claims = verifier.verify(token, now=NOW + timedelta(minutes=1))
    assert (claims.user, claims.role, claims.cluster) == ("ada", "admin", "dev")
    with pytest.raises(LoginRefused, match="already used"):
        verifier.verify(token, now=NOW + timedelta(minutes=2))


def test_expired_foreign_and_forged_links_are_refused(signer: TokenSigner, tmp_path: Path) -> None:
    verifier = LoginVerifier(signer.public_key_pem(), "dev")
    token = mint_login(signer, cluster="dev", user="ada", role="admin", now=NOW)
    with pytest.raises(LoginRefused, match="expired"):
        verifier.verify(token, now=NOW + timedelta(minutes=11))
    other = mint_login(signer, cluster="prod", user="ada", role="admin", now=NOW)
    with pytest.raises(LoginRefused, match="cluster 'prod'"):
        verifier.verify(other, now=NOW)
    stranger = TokenSigner.load_or_create(tmp_path / "other")
    forged = mint_login(stranger, cluster="dev", user="ada", role="admin", now=NOW)
    with pytest.raises(LoginRefused, match="not valid here"):
        verifier.verify(forged, now=NOW)
    for junk in ("", "a.b.c", "x" * 10_000):
        with pytest.raises(LoginRefused):
            verifier.verify(junk, now=NOW)


def test_an_enrollment_token_is_not_a_login(signer: TokenSigner, tmp_path: Path) -> None:
    """Same key, different audiences: neither kind of token passes for the other."""
    ca = CertificateAuthority.bootstrap(tmp_path / "ca", "dev")
    enrollment, _ = signer.mint(cluster="dev", ca_pem=ca.cert_pem.decode(), now=datetime.now(UTC))
    with pytest.raises(LoginRefused, match="not valid here"):
        LoginVerifier(signer.public_key_pem(), "dev").verify(enrollment)
    with pytest.raises(ValueError, match="audience"):
        signer.sign({"aud": "cloudless-enroll", "sub": "x"})


def test_minting_checks_its_inputs(signer: TokenSigner) -> None:
    with pytest.raises(CloudlessError, match="between 1 s and 1 h"):
        mint_login(signer, cluster="dev", user="ada", role="admin", ttl=timedelta(days=1))
    with pytest.raises(CloudlessError, match="DNS-1123"):
        mint_login(signer, cluster="dev", user="Ada Lovelace", role="admin")


def test_the_link_quotes_the_token() -> None:
    assert login_url("https://h:1/", "a+b") == "https://h:1/login?token=a%2Bb"
