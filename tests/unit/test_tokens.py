"""Enrollment tokens: minted and verified with real Ed25519 keys, attacked by hand."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudless.errors import EnrollmentError, PKIError
from cloudless.pki import CertificateAuthority
from cloudless.tokens import (
    AUDIENCE,
    CLOCK_LEEWAY,
    MAX_TTL,
    EnrollmentClaims,
    TokenSigner,
    TokenVerifier,
    effective_leeway,
    expiry_error,
    peek_ca_pem,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    ca = CertificateAuthority.bootstrap(tmp_path_factory.mktemp("ca"), "prod")
    return ca.cert_pem.decode()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def signer(keys: Path) -> TokenSigner:
    return TokenSigner.load_or_create(keys)


@pytest.fixture
def verifier(signer: TokenSigner) -> TokenVerifier:
    return TokenVerifier(signer.public_key_pem(), "prod")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _payload(ca_pem: str, **overrides: Any) -> dict[str, Any]:
    iat = int(NOW.timestamp())
    payload: dict[str, Any] = {
        "aud": AUDIENCE,
        "cluster": "prod",
        "jti": "handmade",
        "iat": iat,
        "nbf": iat,
        "exp": iat + 600,
        "ca": ca_pem,
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def _sign_raw(keys: Path, payload: dict[str, Any]) -> str:
    """Sign an arbitrary payload with the cluster's real key (a compromised-minter scenario)."""
    key = serialization.load_pem_private_key((keys / "enroll-signing.key").read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return jwt.encode(payload, key, algorithm="EdDSA")


# --------------------------------------------------------------------------- key files


def test_signing_key_files_and_idempotence(keys: Path, signer: TokenSigner) -> None:
    assert stat.S_IMODE((keys / "enroll-signing.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "enroll-signing.pub").stat().st_mode) == 0o644
    assert (keys / "enroll-signing.pub").read_bytes() == signer.public_key_pem()
    assert TokenSigner.load_or_create(keys).public_key_pem() == signer.public_key_pem()
    assert TokenSigner.load(keys).public_key_pem() == signer.public_key_pem()
    (keys / "enroll-signing.pub").unlink()
    TokenSigner.load_or_create(keys)
    assert (keys / "enroll-signing.pub").read_bytes() == signer.public_key_pem()


def test_open_signing_key_is_refused(keys: Path, signer: TokenSigner) -> None:
    (keys / "enroll-signing.key").chmod(0o644)
    with pytest.raises(PKIError, match="chmod 600"):
        TokenSigner.load(keys)


def test_load_without_key(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="does not exist"):
        TokenSigner.load(tmp_path)


def test_verifier_rejects_non_ed25519_key() -> None:
    with pytest.raises(PKIError):
        TokenVerifier(b"garbage", "prod")


# --------------------------------------------------------------------------- round trip


def test_mint_verify_round_trip(signer: TokenSigner, verifier: TokenVerifier, ca_pem: str) -> None:
    token, claims = signer.mint(
        cluster="prod",
        ca_pem=ca_pem,
        ttl=timedelta(minutes=10),
        node_name="edge-1",
        labels={"zone": "eu-west", "arch": "arm64"},
        now=NOW.replace(microsecond=123),
    )
    verified = verifier.verify(token, now=NOW + timedelta(minutes=5))
    assert verified == claims
    assert verified.issued_at == NOW
    assert verified.expires_at == NOW + timedelta(minutes=10)
    assert verified.node_name == "edge-1"
    assert dict(verified.labels) == {"zone": "eu-west", "arch": "arm64"}
    assert verified.ca_pem == ca_pem
    assert len(verified.jti) >= 22  # 128 bits, url-safe base64
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    # Passing through Temporal: JSON and back.
    assert EnrollmentClaims.from_dict(json.loads(json.dumps(verified.to_dict()))) == verified
    # Whitespace from copy/paste is tolerated.
    assert verifier.verify(f"  {token}\n", now=NOW) == claims


def test_jti_is_unique(signer: TokenSigner, ca_pem: str) -> None:
    jtis = {signer.mint(cluster="prod", ca_pem=ca_pem)[1].jti for _ in range(50)}
    assert len(jtis) == 50


def test_default_now_is_the_clock(
    signer: TokenSigner, verifier: TokenVerifier, ca_pem: str
) -> None:
    token, claims = signer.mint(cluster="prod", ca_pem=ca_pem)
    assert verifier.verify(token) == claims
    assert claims.node_name is None and dict(claims.labels) == {}


# --------------------------------------------------------------------------- time


def test_expired_token(signer: TokenSigner, verifier: TokenVerifier, ca_pem: str) -> None:
    token, _ = signer.mint(cluster="prod", ca_pem=ca_pem, ttl=timedelta(hours=1), now=NOW)
    with pytest.raises(EnrollmentError, match="expired") as err:
        verifier.verify(token, now=NOW + timedelta(hours=2))
    message = str(err.value)
    assert "2030-01-02T04:04:05Z" in message
    assert "3600s ago" in message
    assert "cloudlessctl token create" in message


def test_expired_with_real_clock(signer: TokenSigner, verifier: TokenVerifier, ca_pem: str) -> None:
    past = datetime.now(UTC) - timedelta(days=2)
    token, _ = signer.mint(cluster="prod", ca_pem=ca_pem, now=past)
    with pytest.raises(EnrollmentError, match="expired"):
        verifier.verify(token)


def test_leeway_absorbs_small_skew(
    signer: TokenSigner, verifier: TokenVerifier, ca_pem: str
) -> None:
    assert timedelta(seconds=5) == CLOCK_LEEWAY  # documented in enrollment-and-pki.md
    token, _ = signer.mint(cluster="prod", ca_pem=ca_pem, ttl=timedelta(minutes=1), now=NOW)
    verifier.verify(token, now=NOW + timedelta(seconds=64))  # 4 s late, within 5 s leeway
    verifier.verify(token, now=NOW - timedelta(seconds=4))  # our clock 4 s behind
    with pytest.raises(EnrollmentError, match=r"expired .*\(5s ago\)"):
        verifier.verify(token, now=NOW + timedelta(seconds=65))
    with pytest.raises(EnrollmentError, match="not valid until"):
        verifier.verify(token, now=NOW - timedelta(seconds=6))
    strict = TokenVerifier(signer.public_key_pem(), "prod", leeway=timedelta(0))
    with pytest.raises(EnrollmentError, match="expired"):
        strict.verify(token, now=NOW + timedelta(seconds=60))


@pytest.mark.parametrize("leeway", [CLOCK_LEEWAY, timedelta(minutes=30)])
def test_one_second_token_is_refused_one_second_after_expiry(
    signer: TokenSigner, ca_pem: str, leeway: timedelta
) -> None:
    """Issue 10: a `--ttl 1s` token worked for ~31 s. The leeway is capped at the token's
    own lifetime, whatever the verifier is configured with."""
    verifier = TokenVerifier(signer.public_key_pem(), "prod", leeway=leeway)
    token, claims = signer.mint(cluster="prod", ca_pem=ca_pem, ttl=timedelta(seconds=1), now=NOW)
    assert claims.expires_at == NOW + timedelta(seconds=1)
    assert verifier.verify(token, now=NOW + timedelta(milliseconds=1999)) == claims
    for late in (timedelta(seconds=2), timedelta(seconds=3), timedelta(seconds=30)):
        with pytest.raises(EnrollmentError, match=r"token expired at 2030-01-02T03:04:06Z"):
            verifier.verify(token, now=NOW + late)
    # Not-before likewise: one second of skew, not five, for a one-second token.
    with pytest.raises(EnrollmentError, match="not valid until"):
        verifier.verify(token, now=NOW - timedelta(seconds=2))


def test_time_at_the_clock_follows_the_same_rule(
    signer: TokenSigner, verifier: TokenVerifier, ca_pem: str
) -> None:
    """Without ``now`` the same time rule runs at the clock; the words are ours."""
    real = datetime.now(UTC)
    early, _ = signer.mint(cluster="prod", ca_pem=ca_pem, now=real + timedelta(minutes=5))
    with pytest.raises(EnrollmentError, match=r"not valid until .* check the clock"):
        verifier.verify(early)
    skewed, claims = signer.mint(cluster="prod", ca_pem=ca_pem, now=real + timedelta(seconds=3))
    assert verifier.verify(skewed) == claims  # 3 s ahead of us: within the leeway
    late, claims = signer.mint(
        cluster="prod", ca_pem=ca_pem, ttl=timedelta(minutes=1), now=real - timedelta(seconds=62)
    )
    assert verifier.verify(late) == claims  # expired 2 s ago: within the leeway
    strict = TokenVerifier(signer.public_key_pem(), "prod", leeway=timedelta(0))
    with pytest.raises(EnrollmentError, match=r"token expired at .* \(\d+s ago\); mint a new"):
        strict.verify(late)
    gone, _ = signer.mint(
        cluster="prod", ca_pem=ca_pem, ttl=timedelta(minutes=1), now=real - timedelta(seconds=70)
    )
    with pytest.raises(EnrollmentError, match=r"token expired at .* \(1\ds ago\)"):
        verifier.verify(gone)  # expired 10 s ago: beyond the leeway
    second, _ = signer.mint(
        cluster="prod", ca_pem=ca_pem, ttl=timedelta(seconds=1), now=real - timedelta(seconds=3)
    )
    with pytest.raises(EnrollmentError, match="token expired at"):
        verifier.verify(second)  # a 1 s token, expired ~2 s ago


def test_effective_leeway_is_capped_at_the_lifetime() -> None:
    assert effective_leeway(NOW, NOW + timedelta(hours=1)) == CLOCK_LEEWAY
    assert effective_leeway(NOW, NOW + timedelta(seconds=1)) == timedelta(seconds=1)
    assert effective_leeway(NOW, NOW + timedelta(seconds=2), timedelta(hours=1)) == timedelta(
        seconds=2
    )
    assert effective_leeway(NOW, NOW - timedelta(seconds=1)) == timedelta(0)
    one = NOW + timedelta(seconds=1)
    assert expiry_error(one, NOW + timedelta(milliseconds=1999), issued_at=NOW) is None
    assert expiry_error(one, NOW + timedelta(seconds=2), issued_at=NOW) is not None


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "something-else"}, "token audience is 'something-else', not 'cloudless-enroll'"),
        ({"exp": None, "ca": None}, r"missing required claim\(s\): exp, ca$"),
        ({"exp": True}, "claim 'exp' must be an integer timestamp"),
        ({"nbf": "soon"}, "claim 'nbf' must be an integer timestamp"),
        ({"cluster": "staging"}, "cluster 'staging', not 'prod'"),
    ],
)
def test_bad_claims_at_the_clock_keep_their_words(
    keys: Path, verifier: TokenVerifier, ca_pem: str, overrides: dict[str, Any], reason: str
) -> None:
    iat = int(datetime.now(UTC).timestamp())
    payload = _payload(ca_pem, iat=iat, nbf=iat, exp=iat + 600)
    payload.update(overrides)
    token = _sign_raw(keys, {k: v for k, v in payload.items() if v is not None})
    with pytest.raises(EnrollmentError, match=reason):
        verifier.verify(token)


def test_expiry_error_is_pure(signer: TokenSigner, ca_pem: str) -> None:
    _, claims = signer.mint(cluster="prod", ca_pem=ca_pem, ttl=timedelta(hours=1), now=NOW)
    assert claims.expiry_error(NOW) is None
    assert claims.expiry_error(NOW + timedelta(minutes=59)) is None
    message = claims.expiry_error(NOW + timedelta(hours=1, seconds=5))
    assert message is not None and "expired" in message and "(5s ago)" in message
    # A leeway never stretches a token beyond twice its lifetime.
    _, short = signer.mint(cluster="prod", ca_pem=ca_pem, ttl=timedelta(seconds=1), now=NOW)
    assert short.expiry_error(NOW + timedelta(seconds=2), leeway=timedelta(minutes=1))
    with pytest.raises(ValueError, match="naive"):
        claims.expiry_error(datetime(2030, 1, 1))


@pytest.mark.parametrize("ttl", [timedelta(hours=24, seconds=1), timedelta(days=7), timedelta(0)])
def test_bad_ttl_is_refused_at_mint(signer: TokenSigner, ca_pem: str, ttl: timedelta) -> None:
    with pytest.raises(EnrollmentError, match="TTL"):
        signer.mint(cluster="prod", ca_pem=ca_pem, ttl=ttl)


def test_max_ttl_is_allowed(signer: TokenSigner, verifier: TokenVerifier, ca_pem: str) -> None:
    token, _ = signer.mint(cluster="prod", ca_pem=ca_pem, ttl=MAX_TTL, now=NOW)
    verifier.verify(token, now=NOW)


def test_overlong_lifetime_is_refused_even_if_signed(
    keys: Path, verifier: TokenVerifier, ca_pem: str
) -> None:
    iat = int(NOW.timestamp())
    token = _sign_raw(keys, _payload(ca_pem, exp=iat + 48 * 3600))
    with pytest.raises(EnrollmentError, match="exceeds the maximum"):
        verifier.verify(token, now=NOW)


# --------------------------------------------------------------------------- forgery


def test_token_from_another_signer_is_refused(
    tmp_path: Path, verifier: TokenVerifier, ca_pem: str
) -> None:
    intruder = TokenSigner.load_or_create(tmp_path / "intruder")
    token, _ = intruder.mint(cluster="prod", ca_pem=ca_pem, now=NOW)
    with pytest.raises(EnrollmentError, match="signature does not verify"):
        verifier.verify(token, now=NOW)


def test_tampered_payload_is_refused(
    signer: TokenSigner, verifier: TokenVerifier, ca_pem: str
) -> None:
    token, _ = signer.mint(cluster="prod", ca_pem=ca_pem, node_name="edge-1", now=NOW)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["node"] = "edge-2"
    forged = ".".join([header, _b64(json.dumps(claims).encode()), signature])
    with pytest.raises(EnrollmentError, match="signature"):
        verifier.verify(forged, now=NOW)
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    with pytest.raises(EnrollmentError):
        verifier.verify(flipped, now=NOW)


def test_alg_none_is_refused(verifier: TokenVerifier, ca_pem: str) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = _b64(json.dumps(_payload(ca_pem)).encode())
    for token in (f"{header}.{body}.", f"{header}.{body}.{_b64(b'sig')}"):
        with pytest.raises(EnrollmentError, match="algorithm 'none'"):
            verifier.verify(token, now=NOW)


def test_hs256_keyed_with_public_key_is_refused(
    signer: TokenSigner, verifier: TokenVerifier, ca_pem: str
) -> None:
    """The classic key-confusion attack: HMAC keyed with the (public) verification key."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(_payload(ca_pem)).encode())
    mac = hmac.new(signer.public_key_pem(), f"{header}.{body}".encode(), hashlib.sha256)
    with pytest.raises(EnrollmentError, match="algorithm 'HS256'"):
        verifier.verify(f"{header}.{body}.{_b64(mac.digest())}", now=NOW)


def test_wrong_cluster_is_refused(signer: TokenSigner, ca_pem: str) -> None:
    token, _ = signer.mint(cluster="staging", ca_pem=ca_pem, now=NOW)
    verifier = TokenVerifier(signer.public_key_pem(), "prod")
    with pytest.raises(EnrollmentError, match="cluster 'staging', not 'prod'"):
        verifier.verify(token, now=NOW)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "something-else"}, "audience"),
        ({"jti": None}, "missing required claim.*jti"),
        ({"exp": None, "ca": None}, "missing required claim.*exp, ca"),
        ({"iat": "yesterday"}, "integer timestamp"),
        ({"exp": True}, "integer timestamp"),
        ({"exp": 10**20}, "out of range"),
        ({"jti": ""}, "jti"),
        ({"labels": {"zone": 1}}, "labels"),
        ({"node": 7}, "node"),
        ({"ca": 42}, "'ca'"),
    ],
)
def test_bad_claims_are_refused(
    keys: Path, verifier: TokenVerifier, ca_pem: str, overrides: dict[str, Any], reason: str
) -> None:
    token = _sign_raw(keys, _payload(ca_pem, **overrides))
    with pytest.raises(EnrollmentError, match=reason):
        verifier.verify(token, now=NOW)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "not a JWT"),
        ("hello", "not a JWT"),
        ("a.b", "not a JWT"),
        ("a.b.c.d", "not a JWT"),
        ("x" * 9000, "larger than"),
        ("e30.e30.", "algorithm None"),
        ("!!!.e30.e30", "not a JWT"),
    ],
)
def test_malformed_tokens(verifier: TokenVerifier, token: str, reason: str) -> None:
    with pytest.raises(EnrollmentError, match=reason):
        verifier.verify(token, now=NOW)


def test_mint_validates_inputs(signer: TokenSigner, ca_pem: str) -> None:
    with pytest.raises(EnrollmentError, match="cluster name"):
        signer.mint(cluster="Prod!", ca_pem=ca_pem)
    with pytest.raises(EnrollmentError, match="node name"):
        signer.mint(cluster="prod", ca_pem=ca_pem, node_name="Edge_1")
    with pytest.raises(EnrollmentError, match="PEM certificate"):
        signer.mint(cluster="prod", ca_pem="not a cert")
    with pytest.raises(EnrollmentError, match="over the 8192-byte limit"):
        signer.mint(cluster="prod", ca_pem=ca_pem, labels={"big": "x" * 8000})


# --------------------------------------------------------------------------- binding


def test_binding_error(signer: TokenSigner, ca_pem: str) -> None:
    _, bound = signer.mint(
        cluster="prod", ca_pem=ca_pem, node_name="edge-1", labels={"zone": "eu-west"}
    )
    assert bound.binding_error("edge-1", {"zone": "eu-west", "extra": "ok"}) is None
    assert bound.binding_error("edge-2", {"zone": "eu-west"}) == (
        "token is bound to node 'edge-1', not 'edge-2'"
    )
    missing = bound.binding_error("edge-1", {})
    assert missing is not None and "zone=eu-west" in missing and "no 'zone' label" in missing
    wrong = bound.binding_error("edge-1", {"zone": "us-east"})
    assert wrong is not None and "has zone=us-east" in wrong
    both = bound.binding_error("edge-9", {"zone": "us-east"})
    assert both is not None and "edge-9" in both and "us-east" in both

    _, unbound = signer.mint(cluster="prod", ca_pem=ca_pem)
    assert unbound.binding_error("anything", {}) is None


def test_claims_from_malformed_dict() -> None:
    with pytest.raises(EnrollmentError, match="malformed"):
        EnrollmentClaims.from_dict({"jti": "x"})


# --------------------------------------------------------------------------- peek


def test_peek_ca_pem(signer: TokenSigner, ca_pem: str, tmp_path: Path) -> None:
    token, _ = signer.mint(cluster="prod", ca_pem=ca_pem, now=NOW)
    assert peek_ca_pem(token) == ca_pem
    # Unverified by design: works for an expired or foreign token too.
    foreign, _ = TokenSigner.load_or_create(tmp_path / "other").mint(
        cluster="x", ca_pem=ca_pem, now=NOW - timedelta(days=30)
    )
    assert peek_ca_pem(foreign) == ca_pem


def test_peek_ca_pem_refuses_missing_or_bad_ca(
    keys: Path, signer: TokenSigner, ca_pem: str
) -> None:
    with pytest.raises(EnrollmentError, match="no 'ca' claim"):
        peek_ca_pem(_sign_raw(keys, _payload(ca_pem, ca=None)))
    with pytest.raises(EnrollmentError, match="not a PEM certificate"):
        peek_ca_pem(_sign_raw(keys, _payload(ca_pem, ca="-----BEGIN CERTIFICATE-----\nx")))
    with pytest.raises(EnrollmentError, match="not a JWT"):
        peek_ca_pem("garbage")


# --------------------------------------------------------------------------- fuzz

_FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_only_raise_enrollment_error(verifier: TokenVerifier, data: bytes) -> None:
    for candidate in (data, data.decode("latin-1"), _b64(data), ".".join([_b64(data)] * 3)):
        with pytest.raises(EnrollmentError):
            verifier.verify(candidate, now=NOW)
        with pytest.raises(EnrollmentError):
            peek_ca_pem(candidate)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@_FUZZ
@given(
    overrides=st.dictionaries(
        st.sampled_from(["aud", "cluster", "jti", "iat", "nbf", "exp", "ca", "node", "labels"]),
        _json,
        max_size=4,
    )
)
def test_validly_signed_junk_only_raises_enrollment_error(
    keys: Path, verifier: TokenVerifier, ca_pem: str, overrides: dict[str, Any]
) -> None:
    """Claims are checked after the signature, so fuzz them behind a genuine signature."""
    token = _sign_raw(keys, {**_payload(ca_pem), **overrides})
    try:
        claims = verifier.verify(token, now=NOW)
    except EnrollmentError:
        return
    assert claims.cluster == "prod"
