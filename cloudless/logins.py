"""One-time login links for the browser: how a person gets into the Temporal UI.

Browsers carry no client certificate, so the front (``workers/front``) lets a browser in
with a session cookie, and a session begins with a login link:
``https://<front>/login?token=<JWT>``. The token is signed with the cluster's token key
(the enrollment key, under its own audience, so neither kind of token passes for the
other), names the user and role, and expires after minutes; the front accepts each token
once. Whoever can read the coordinator's key directory mints links (``cloudlessctl dev
up`` prints one, ``cloudlessctl ui login`` makes more).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import jwt

from cloudless.errors import CloudlessError
from cloudless.pki import is_dns_label
from cloudless.tokens import MAX_TOKEN_BYTES, TokenSigner, load_token_key

__all__ = [
    "LOGIN_AUDIENCE",
    "LOGIN_TTL",
    "LoginClaims",
    "LoginRefused",
    "LoginVerifier",
    "login_url",
    "mint_login",
    "mint_login_url",
]

LOGIN_AUDIENCE = "cloudless-ui-login"
LOGIN_TTL = timedelta(minutes=10)
MAX_LOGIN_TTL = timedelta(hours=1)
_ALGORITHM = "EdDSA"
_FIX = "ask for a new link with `cloudlessctl ui login`"


class LoginRefused(CloudlessError):
    """A login token that is malformed, foreign, expired or already used."""


@dataclass(frozen=True)
class LoginClaims:
    cluster: str
    user: str
    role: str
    jti: str
    expires_at: datetime


def mint_login(
    signer: TokenSigner,
    *,
    cluster: str,
    user: str,
    role: str,
    ttl: timedelta = LOGIN_TTL,
    now: datetime | None = None,
) -> str:
    """A login token for ``user`` with ``role`` in ``cluster``, valid for ``ttl``."""
    if not timedelta(seconds=1) <= ttl <= MAX_LOGIN_TTL:
        raise CloudlessError(f"a login link lives between 1 s and 1 h, got {ttl}")
    for what, value in (("cluster", cluster), ("user", user)):
        if not is_dns_label(value):
            raise CloudlessError(f"{what} name {value!r} is not a DNS-1123 label")
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    return signer.sign(
        {
            "aud": LOGIN_AUDIENCE,
            "cluster": cluster,
            "sub": user,
            "role": role,
            "jti": secrets.token_urlsafe(16),
            "iat": int(issued.timestamp()),
            "exp": int((issued + ttl).timestamp()),
        }
    )


def login_url(front_url: str, token: str) -> str:
    return f"{front_url.rstrip('/')}/login?token={quote(token, safe='')}"


def mint_login_url(
    key_dir: Path,
    front_url: str,
    *,
    cluster: str,
    user: str,
    role: str,
    ttl: timedelta = LOGIN_TTL,
) -> str:
    """A login link for the front at ``front_url``, signed with the token key in
    ``key_dir`` (the coordinator's state: :class:`PKIError` if it is not there)."""
    token = mint_login(TokenSigner.load(key_dir), cluster=cluster, user=user, role=role, ttl=ttl)
    return login_url(front_url, token)


class LoginVerifier:
    """Checks login tokens against the cluster's public token key; remembers used ones
    (until they expire) so each link logs in once."""

    def __init__(self, public_key_pem: bytes, cluster: str, *, limit: int = 10_000) -> None:
        self._key = load_token_key(public_key_pem)
        self._cluster = cluster
        self._limit = limit
        self._used: dict[str, datetime] = {}

    def verify(self, token: str, *, now: datetime | None = None) -> LoginClaims:
        """The claims of a valid, unused token (now used); :class:`LoginRefused` if not."""
        moment = now or datetime.now(UTC)
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise LoginRefused(f"the login link has no valid token; {_FIX}")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[_ALGORITHM],
                audience=LOGIN_AUDIENCE,
                options={"require": ["aud", "exp", "iat", "jti", "sub"], "verify_exp": False},
            )
        except jwt.InvalidTokenError as err:
            raise LoginRefused(f"the login link is not valid here ({err}); {_FIX}") from None
        exp, jti, user, role = claims["exp"], claims["jti"], claims["sub"], claims.get("role")
        if not (
            isinstance(exp, int)
            and isinstance(jti, str)
            and isinstance(user, str)
            and isinstance(role, str)
        ):
            raise LoginRefused(f"the login link's claims are malformed; {_FIX}")
        if claims.get("cluster") != self._cluster:
            raise LoginRefused(
                f"the login link is for cluster {claims.get('cluster')!r}, this is "
                f"{self._cluster!r}"
            )
        expires = datetime.fromtimestamp(exp, UTC)
        if expires <= moment:
            raise LoginRefused(f"the login link expired at {expires:%H:%M:%S} UTC; {_FIX}")
        self._used = {k: t for k, t in self._used.items() if t > moment}
        if jti in self._used:
            raise LoginRefused(f"the login link was already used; {_FIX}")
        if len(self._used) >= self._limit:
            raise LoginRefused("too many unexpired logins at once; try again in a few minutes")
        self._used[jti] = expires
        return LoginClaims(self._cluster, user, role, jti, expires)
