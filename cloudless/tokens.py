"""Enrollment tokens: short-lived EdDSA-signed JWTs that let a new node obtain a certificate.

An admin mints a token with ``cloudlessctl token create``; the agent presents it together with
a CSR. The token carries the cluster CA certificate, so a fresh agent can authenticate the
gateway from the token alone (kubeadm's discovery-hash idea, with the whole cert instead of a
hash). Only EdDSA/Ed25519 is accepted: one algorithm, no key-confusion attacks (``none``,
HS256 keyed with the public key), and tiny, fast signatures.

Verification is purely cryptographic and time based. PyJWT does the standard part of it
(signature, required claims, audience); this module checks the times (one rule, at the
clock or at a given instant, see :func:`expiry_error`), adds the Cloudless claims and words
every refusal for the person holding the token. Single use (``jti``) is enforced durably
by the enrollment workflow, not here.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cloudless.errors import EnrollmentError, PKIError
from cloudless.pki import (
    is_dns_label,
    load_trust_bundle,
    read_private_file,
    write_private_file,
    write_public_file,
)

__all__ = [
    "AUDIENCE",
    "CLOCK_LEEWAY",
    "DEFAULT_TTL",
    "MAX_TOKEN_BYTES",
    "MAX_TTL",
    "SIGNING_KEY_FILE",
    "SIGNING_PUB_FILE",
    "EnrollmentClaims",
    "TokenSigner",
    "TokenVerifier",
    "effective_leeway",
    "expiry_error",
    "load_token_key",
    "peek_ca_pem",
]

MAX_TTL = timedelta(hours=24)
DEFAULT_TTL = timedelta(hours=1)
AUDIENCE = "cloudless-enroll"
ALGORITHM = "EdDSA"
#: Tokens are pasted on command lines and sent before any trust exists; bound parser work.
MAX_TOKEN_BYTES = 8 * 1024
SIGNING_KEY_FILE = "enroll-signing.key"
SIGNING_PUB_FILE = "enroll-signing.pub"

_FIX = "mint a new one with `cloudlessctl token create`"
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")  # empty sig: alg none
_REQUIRED = ("aud", "cluster", "jti", "iat", "nbf", "exp", "ca")
_MAX_JTI = 128


def _utc(moment: datetime) -> datetime:
    """Normalize to aware UTC; naive datetimes are a bug (whose local time?), so refuse them."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("naive datetime; pass a timezone-aware (UTC) datetime")
    return moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _human(delta: timedelta) -> str:
    return f"{int(delta.total_seconds())}s"


def _expired(expires_at: datetime, now: datetime) -> str:
    ago = _human(max(now - expires_at, timedelta(0)))
    return f"token expired at {_iso(expires_at)} ({ago} ago); {_FIX}"


def _not_yet_valid(not_before: datetime, now: datetime) -> str:
    return (
        f"token is not valid until {_iso(not_before)} "
        f"(in {_human(max(not_before - now, timedelta(0)))}); check the clock on this machine"
    )


def _check_labels(labels: object, where: str) -> dict[str, str]:
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise EnrollmentError(f"{where}: labels must map strings to strings")
    return dict(labels)


#: Clock skew tolerated between the machine that minted a token and the one checking it (the
#: gateway's verifier and the enrollment workflow), for ``nbf`` and ``exp`` alike. Small, and
#: never more than the token's own lifetime (:func:`effective_leeway`): a token minted with
#: ``--ttl 1s`` is refused at most 1 s after it expires, a 1 h token at most 5 s after.
CLOCK_LEEWAY = timedelta(seconds=5)


def effective_leeway(
    issued_at: datetime, expires_at: datetime, leeway: timedelta = CLOCK_LEEWAY
) -> timedelta:
    """The skew allowance for a token valid from ``issued_at`` to ``expires_at``: ``leeway``
    capped at the token's own lifetime, so skew can never more than double how long a token
    works."""
    return max(timedelta(0), min(leeway, expires_at - issued_at))


def expiry_error(
    expires_at: datetime,
    now: datetime,
    *,
    issued_at: datetime,
    leeway: timedelta = CLOCK_LEEWAY,
) -> str | None:
    """Why a token that expires at ``expires_at`` is expired at ``now``, or None.

    The one expiry rule, pure and deterministic: the verifier applies it at the clock (or
    an explicit instant) and the enrollment workflow at workflow time. A token is refused
    from ``expires_at + effective_leeway(issued_at, expires_at, leeway)`` on.
    """
    now, expires_at = _utc(now), _utc(expires_at)
    if now < expires_at + effective_leeway(_utc(issued_at), expires_at, leeway):
        return None
    return _expired(expires_at, now)


def binding_error(
    bound_name: str | None,
    bound_labels: Mapping[str, str],
    node_name: str,
    labels: Mapping[str, str],
) -> str | None:
    """Why a node may not use a token bound to ``bound_name``/``bound_labels``, or None.

    Pure and deterministic: the enrollment workflow calls it too.
    """
    problems: list[str] = []
    if bound_name is not None and node_name != bound_name:
        problems.append(f"token is bound to node {bound_name!r}, not {node_name!r}")
    for key, wanted in sorted(bound_labels.items()):
        if key not in labels:
            problems.append(
                f"token requires label {key}={wanted}, but the node has no {key!r} label"
            )
        elif labels[key] != wanted:
            problems.append(
                f"token requires label {key}={wanted}, but the node has {key}={labels[key]}"
            )
    return "; ".join(problems) or None


@dataclass(frozen=True)
class EnrollmentClaims:
    """The verified content of an enrollment token.

    ``labels`` is stored as a private copy of a plain dict (not a read-only proxy) so that
    the dataclass stays convertible by generic serializers such as Temporal's.
    """

    jti: str
    cluster: str
    issued_at: datetime
    expires_at: datetime
    node_name: str | None
    labels: Mapping[str, str] = field(hash=False)
    ca_pem: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", dict(self.labels))

    def binding_error(self, node_name: str, labels: Mapping[str, str]) -> str | None:
        """Why a node with this name and labels may not use the token, or None if it may."""
        return binding_error(self.node_name, self.labels, node_name, labels)

    def expiry_error(self, now: datetime, *, leeway: timedelta = timedelta(0)) -> str | None:
        """Why the token is expired at ``now`` (allowing ``leeway`` of clock skew, capped at
        the token's lifetime), or None. Pure: see the module's :func:`expiry_error`."""
        return expiry_error(self.expires_at, now, issued_at=self.issued_at, leeway=leeway)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (ISO-8601 timestamps) for workflow inputs and history."""
        return {
            "jti": self.jti,
            "cluster": self.cluster,
            "issued_at": _iso(self.issued_at),
            "expires_at": _iso(self.expires_at),
            "node_name": self.node_name,
            "labels": dict(self.labels),
            "ca_pem": self.ca_pem,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnrollmentClaims:
        """Inverse of :meth:`to_dict`; :class:`EnrollmentError` on a malformed mapping."""
        try:
            values = {
                "jti": data["jti"],
                "cluster": data["cluster"],
                "node_name": data.get("node_name"),
                "ca_pem": data["ca_pem"],
            }
            issued_at = _utc(datetime.fromisoformat(data["issued_at"]))
            expires_at = _utc(datetime.fromisoformat(data["expires_at"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise EnrollmentError(f"malformed enrollment claims: {exc!r}") from None
        if not all(isinstance(values[k], str) for k in ("jti", "cluster", "ca_pem")) or not (
            values["node_name"] is None or isinstance(values["node_name"], str)
        ):
            raise EnrollmentError("malformed enrollment claims: wrong field types")
        return cls(
            jti=values["jti"],
            cluster=values["cluster"],
            issued_at=issued_at,
            expires_at=expires_at,
            node_name=values["node_name"],
            labels=_check_labels(data.get("labels", {}), "malformed enrollment claims"),
            ca_pem=values["ca_pem"],
        )


def _check_ca_pem(value: object, what: str) -> str:
    """Ensure ``value`` is the cluster's trust bundle (one PEM CA certificate, or while the
    CA rotates the old and the new), so a token never carries an unusable CA."""
    if not isinstance(value, str):
        raise EnrollmentError(f"{what} must be the CA certificate as a PEM string")
    try:
        load_trust_bundle(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise EnrollmentError(f"{what} is not a PEM certificate (invalid text)") from None
    except PKIError as exc:
        raise EnrollmentError(f"{what} is not a PEM certificate: {exc}") from None
    return value


def _key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """Short stable id of the signing key, put in the JWT header to ease future key rotation."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:12]).decode().rstrip("=")


def _public_pem(public_key: ed25519.Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class TokenSigner:
    """Holds the cluster's Ed25519 enrollment signing key (coordinator side only)."""

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._key = private_key
        self._kid = _key_id(private_key.public_key())

    def __repr__(self) -> str:
        return f"TokenSigner(kid={self._kid!r})"

    @classmethod
    def load_or_create(cls, directory: Path) -> TokenSigner:
        """Load ``enroll-signing.key`` or create it (0600, never overwriting a concurrent one).

        The ``.pub`` file is derived data and is (re)written whenever it is missing or stale.
        """
        directory = Path(directory)
        key_path = directory / SIGNING_KEY_FILE
        if not key_path.exists():
            pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            # If another process wins the creation race, use its key.
            with contextlib.suppress(FileExistsError):
                write_private_file(key_path, pem, overwrite=False)
        signer = cls.load(directory)
        pub_path = directory / SIGNING_PUB_FILE
        try:
            current = pub_path.read_bytes()
        except OSError:
            current = b""
        if current != signer.public_key_pem():
            write_public_file(pub_path, signer.public_key_pem())
        return signer

    @classmethod
    def load(cls, directory: Path) -> TokenSigner:
        """Load an existing signing key; :class:`PKIError` if missing, unreadable or too open."""
        key_path = Path(directory) / SIGNING_KEY_FILE
        data = read_private_file(key_path)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise PKIError(f"{key_path} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise PKIError(f"{key_path} holds a {type(key).__name__}; expected Ed25519")
        return cls(key)

    def public_key_pem(self) -> bytes:
        """The verification key, for :class:`TokenVerifier`."""
        return _public_pem(self._key.public_key())

    def sign(self, payload: Mapping[str, Any]) -> str:
        """Sign other claims with this key (login links: ``cloudless.logins``). Each kind
        of token has its own audience, so one kind is never accepted as another."""
        if not isinstance(payload.get("aud"), str) or payload["aud"] == AUDIENCE:
            raise ValueError("sign() needs a token audience of its own (not enrollment's)")
        return jwt.encode(dict(payload), self._key, algorithm=ALGORITHM, headers={"kid": self._kid})

    def mint(
        self,
        *,
        cluster: str,
        ca_pem: str,
        ttl: timedelta = DEFAULT_TTL,
        node_name: str | None = None,
        labels: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> tuple[str, EnrollmentClaims]:
        """Sign a new token; returns it with the claims exactly as a verifier will see them."""
        if not timedelta(seconds=1) <= ttl <= MAX_TTL:
            raise EnrollmentError(
                f"token TTL must be between 1s and {MAX_TTL.total_seconds() / 3600:g}h, "
                f"got {ttl}; long-lived enrollment tokens are a standing credential"
            )
        if not is_dns_label(cluster):
            raise EnrollmentError(f"cluster name {cluster!r} is not a DNS-1123 label")
        if node_name is not None and not is_dns_label(node_name):
            raise EnrollmentError(f"node name {node_name!r} is not a DNS-1123 label")
        bound_labels = _check_labels(labels or {}, "mint")
        _check_ca_pem(ca_pem, "ca_pem")

        # JWT times are whole seconds; truncate so the returned claims equal the verified ones.
        issued_at = _utc(now or datetime.now(UTC)).replace(microsecond=0)
        expires_at = issued_at + timedelta(seconds=int(ttl.total_seconds()))
        claims = EnrollmentClaims(
            jti=secrets.token_urlsafe(16),
            cluster=cluster,
            issued_at=issued_at,
            expires_at=expires_at,
            node_name=node_name,
            labels=bound_labels,
            ca_pem=ca_pem,
        )
        payload: dict[str, Any] = {
            "aud": AUDIENCE,
            "cluster": cluster,
            "jti": claims.jti,
            "iat": int(issued_at.timestamp()),
            "nbf": int(issued_at.timestamp()),
            "exp": int(expires_at.timestamp()),
            "ca": ca_pem,
        }
        if node_name is not None:
            payload["node"] = node_name
        if bound_labels:
            payload["labels"] = bound_labels
        token = jwt.encode(payload, self._key, algorithm=ALGORITHM, headers={"kid": self._kid})
        if len(token) > MAX_TOKEN_BYTES:
            raise EnrollmentError(
                f"token would be {len(token)} bytes, over the {MAX_TOKEN_BYTES}-byte limit; "
                "bind fewer or shorter labels"
            )
        return token, claims


def _split(token: str | bytes) -> str:
    """Cheap structural checks before any JSON or crypto work."""
    if isinstance(token, bytes | bytearray):
        try:
            token = bytes(token).decode("ascii")
        except UnicodeDecodeError:
            raise EnrollmentError("malformed token: not a JWT (non-ASCII bytes)") from None
    if not isinstance(token, str):
        raise EnrollmentError(f"malformed token: expected a string, got {type(token).__name__}")
    token = token.strip()
    if len(token) > MAX_TOKEN_BYTES:
        raise EnrollmentError(
            f"malformed token: {len(token)} bytes is larger than the {MAX_TOKEN_BYTES}-byte limit"
        )
    if not _JWT_SHAPE.fullmatch(token):
        raise EnrollmentError(
            "malformed token: not a JWT (expected three base64url parts separated by '.'); "
            "copy the whole output of `cloudlessctl token create`"
        )
    return token


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise EnrollmentError("malformed token: payload is not JSON") from None
    if not isinstance(value, dict):
        raise EnrollmentError("malformed token: payload is not a JSON object")
    return value


def _timestamp(payload: Mapping[str, Any], name: str) -> datetime:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise EnrollmentError(f"malformed token: claim {name!r} must be an integer timestamp")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise EnrollmentError(f"malformed token: claim {name!r} is out of range") from None


def load_token_key(public_key_pem: bytes) -> ed25519.Ed25519PublicKey:
    """The cluster's public token key (enrollment and login tokens); :class:`PKIError`
    if it is not an Ed25519 public key in PEM."""
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"the token public key is not a PEM public key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise PKIError(f"the token public key is {type(key).__name__}; expected Ed25519")
    return key


class TokenVerifier:
    """Checks enrollment tokens against one cluster's public enrollment key."""

    def __init__(
        self, public_key_pem: bytes, cluster: str, *, leeway: timedelta = CLOCK_LEEWAY
    ) -> None:
        key = load_token_key(public_key_pem)
        if not is_dns_label(cluster):
            raise PKIError(f"cluster name {cluster!r} is not a DNS-1123 label")
        if leeway < timedelta(0):
            raise ValueError("leeway must not be negative")
        self._key = key
        self._cluster = cluster
        self._leeway = leeway

    def verify(self, token: str | bytes, *, now: datetime | None = None) -> EnrollmentClaims:
        """Return the claims of a valid token; :class:`EnrollmentError` saying why otherwise.

        PyJWT checks the signature (Ed25519 only), that every required claim is present
        and the audience; this method then checks the Cloudless claims (cluster, lifetime,
        types) and the times: ``nbf``/``iat`` and ``exp``, each with this verifier's leeway
        capped at the token's lifetime (:func:`effective_leeway`). A refusal keeps this
        module's wording whichever check made it. A token with several faults is refused
        for the first one found.

        ``now`` evaluates the token at that instant instead of the clock (tests, replays).
        PyJWT's own time checks are off (it cannot be given an instant, jpadilla/pyjwt#921,
        nor a leeway that depends on the token): the time rule is this module's, the same
        at the clock, at an explicit ``now`` and in the enrollment workflow.
        """
        text = _split(token)
        try:
            header = jwt.get_unverified_header(text)
        except jwt.PyJWTError as exc:
            raise EnrollmentError(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise EnrollmentError(
                f"token uses algorithm {alg!r}; only {ALGORITHM} (Ed25519) tokens are accepted"
            )
        moment = _utc(now or datetime.now(UTC))
        try:
            payload = jwt.decode(
                text,
                self._key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                options={
                    "require": list(_REQUIRED),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise self._refusal(text, exc) from None
        claims, not_before = self._claims(payload)
        leeway = effective_leeway(claims.issued_at, claims.expires_at, self._leeway)
        if moment + leeway < not_before:
            raise EnrollmentError(_not_yet_valid(not_before, moment))
        error = claims.expiry_error(moment, leeway=self._leeway)
        if error is not None:
            raise EnrollmentError(error)
        return claims

    def _refusal(self, text: str, exc: jwt.PyJWTError) -> EnrollmentError:
        """Say why PyJWT refused ``text``, in this module's words."""
        if isinstance(exc, jwt.InvalidSignatureError):
            return EnrollmentError(
                "token signature does not verify against this cluster's enrollment key "
                "(forged, altered, or minted for another cluster)"
            )
        try:
            # Claims are checked after the signature: if it verifies, the payload is
            # authentic and worth explaining; if not, the token is malformed.
            raw = jwt.PyJWS().decode(text, self._key, algorithms=[ALGORITHM])
        except jwt.PyJWTError:
            return EnrollmentError(f"malformed token: {exc}")
        payload = _json_object(raw)
        if isinstance(exc, jwt.MissingRequiredClaimError):
            # PyJWT names the first; list them all, so one new token fixes everything.
            missing = [name for name in _REQUIRED if payload.get(name) is None]
            return EnrollmentError(f"token is missing required claim(s): {', '.join(missing)}")
        if isinstance(exc, jwt.InvalidAudienceError):
            return EnrollmentError(
                f"token audience is {payload['aud']!r}, not {AUDIENCE!r}; "
                "it is not an enrollment token"
            )
        return EnrollmentError(f"malformed token: {exc}")

    def _claims(self, payload: dict[str, Any]) -> tuple[EnrollmentClaims, datetime]:
        """Check the Cloudless claims of a payload PyJWT accepted (or explains a refusal
        of); returns the claims and when the token becomes valid."""
        if payload["cluster"] != self._cluster:
            raise EnrollmentError(
                f"token is for cluster {payload['cluster']!r}, not {self._cluster!r}"
            )
        jti = payload["jti"]
        if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI:
            raise EnrollmentError("malformed token: claim 'jti' must be a non-empty string")
        issued_at = _timestamp(payload, "iat")
        not_before = _timestamp(payload, "nbf")
        expires_at = _timestamp(payload, "exp")
        if expires_at <= issued_at:
            raise EnrollmentError("malformed token: 'exp' is not after 'iat'")
        if expires_at - issued_at > MAX_TTL:
            raise EnrollmentError(
                f"token lifetime {expires_at - issued_at} exceeds the maximum of {MAX_TTL}; {_FIX}"
            )
        node = payload.get("node")
        if node is not None and not isinstance(node, str):
            raise EnrollmentError("malformed token: claim 'node' must be a string")
        ca = payload["ca"]
        if not isinstance(ca, str):
            raise EnrollmentError("malformed token: claim 'ca' must be a PEM string")
        claims = EnrollmentClaims(
            jti=jti,
            cluster=self._cluster,
            issued_at=issued_at,
            expires_at=expires_at,
            node_name=node,
            labels=_check_labels(payload.get("labels", {}), "malformed token"),
            ca_pem=ca,
        )
        return claims, max(issued_at, not_before)


def peek_ca_pem(token: str | bytes) -> str:
    """Read the ``ca`` claim WITHOUT verifying the token.

    A brand-new agent trusts nothing yet; the token (received out of band from an admin) is
    its trust root. It pins this CA for the TLS connection on which the coordinator then
    verifies the token for real.
    """
    text = _split(token)
    try:
        raw = jwt.PyJWS().decode(text, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise EnrollmentError(f"malformed token: {exc}") from None
    ca = _json_object(raw).get("ca")
    if ca is None:
        raise EnrollmentError("token carries no 'ca' claim; mint it with a current cloudlessctl")
    return _check_ca_pem(ca, "token's 'ca' claim")
