"""Access tokens for secrets: short-lived, audience-bound, optionally use-limited JWTs.

Only coordinators mint and verify them, so they are HMAC-SHA256 (HS256) under a
cluster-wide 256-bit key kept next to the CA (0600): a signature costs microseconds,
which matters on the GetSecret path. The algorithm is pinned; there is no ``none`` and no
asymmetric confusion. Minting is not a durable write: use counts and revocations live in
the secret's workflow (see docs/design/secrets.md).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from cloudless.errors import SecretError
from cloudless.pki import read_private_file, write_private_file
from cloudless.spec import audience_problem

KEY_FILE = "secrets-token.key"
ALGORITHM = "HS256"
DEFAULT_TTL = 3600.0
MAX_TTL = 24 * 3600.0
MAX_TOKEN_BYTES = 4096
_VERIFIED_CACHE = 4096


@dataclass(frozen=True)
class AccessClaims:
    token_id: str
    cluster: str
    namespace: str
    name: str
    audience: str
    subject: str  # identity URI the token is bound to; "" = any authenticated caller
    issued_at: float
    expires_at: float
    max_uses: int  # 0: unlimited

    @property
    def scope(self) -> str:
        return f"{self.namespace}/{self.name}"


def load_or_create_key(directory: Path) -> bytes:
    """The cluster's token key (created once, never overwritten by a concurrent start)."""
    path = Path(directory) / KEY_FILE
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            write_private_file(path, secrets.token_bytes(32), overwrite=False)
    key = read_private_file(path)
    if len(key) < 32:
        raise SecretError(f"{path} holds {len(key)} bytes; expected 32", "INTERNAL")
    return key


class AccessTokens:
    """Mints and verifies access tokens for one cluster."""

    def __init__(self, key: bytes, cluster: str) -> None:
        self._key = key
        self._cluster = cluster
        self._verified: OrderedDict[str, AccessClaims] = OrderedDict()

    def __repr__(self) -> str:
        return f"AccessTokens(cluster={self._cluster!r})"

    def mint(
        self,
        *,
        namespace: str,
        name: str,
        audience: str,
        subject: str = "",
        ttl: float = 0.0,
        max_uses: int = 0,
        now: float | None = None,
    ) -> tuple[str, AccessClaims]:
        ttl = ttl or DEFAULT_TTL
        if not 1.0 <= ttl <= MAX_TTL:
            raise SecretError(
                f"token TTL must be between 1s and 24h, got {ttl:g}s; "
                "use short-lived tokens and mint new ones"
            )
        if max_uses < 0:
            raise SecretError(f"max_uses must be >= 0 (0 = unlimited), got {max_uses}")
        problem = audience_problem(audience)
        if problem:
            raise SecretError(f"audience {problem}")
        issued = int(now if now is not None else time.time())
        claims = AccessClaims(
            # Hex: an id is typed on command lines, where a leading "-" reads as an option.
            token_id=secrets.token_hex(12),
            cluster=self._cluster,
            namespace=namespace,
            name=name,
            audience=audience,
            subject=subject,
            issued_at=float(issued),
            expires_at=float(issued + int(ttl)),
            max_uses=max_uses,
        )
        payload: dict[str, Any] = {
            "iss": self._cluster,
            "aud": audience,
            "scope": claims.scope,
            "jti": claims.token_id,
            "iat": issued,
            "nbf": issued,
            "exp": int(claims.expires_at),
        }
        if subject:
            payload["sub"] = subject
        if max_uses:
            payload["mu"] = max_uses
        return jwt.encode(payload, self._key, algorithm=ALGORITHM), claims

    def verify(self, token: str, *, now: float | None = None) -> AccessClaims:
        """Signature, issuer and time checks; scope/audience/subject are the caller's job."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            self._verified[token] = claims
            if len(self._verified) > _VERIFIED_CACHE:
                self._verified.popitem(last=False)
        moment = now if now is not None else time.time()
        if moment >= claims.expires_at:
            raise SecretError(
                f"access token {claims.token_id} expired "
                f"{moment - claims.expires_at:.0f}s ago; mint a new one",
                "UNAUTHENTICATED",
            )
        return claims

    def _decode(self, token: str) -> AccessClaims:
        if not token:
            raise SecretError("an access token is required", "UNAUTHENTICATED")
        if len(token) > MAX_TOKEN_BYTES:
            raise SecretError("access token is too large", "UNAUTHENTICATED")
        try:
            payload = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=self._cluster,
                options={
                    "verify_aud": False,
                    "verify_exp": False,  # checked on every use, cached or not
                    "require": ["iss", "aud", "scope", "jti", "iat", "exp"],
                },
            )
        except jwt.InvalidIssuerError:
            raise SecretError(
                f"access token was not issued by cluster {self._cluster}", "UNAUTHENTICATED"
            ) from None
        except jwt.InvalidTokenError as err:
            raise SecretError(f"invalid access token: {err}", "UNAUTHENTICATED") from None
        scope, audience = payload["scope"], payload["aud"]
        if not isinstance(scope, str) or scope.count("/") != 1:
            raise SecretError("access token has a malformed scope", "UNAUTHENTICATED")
        if not isinstance(audience, str):
            raise SecretError("access token audience must be one string", "UNAUTHENTICATED")
        namespace, name = scope.split("/")
        max_uses = payload.get("mu", 0)
        if not isinstance(max_uses, int) or max_uses < 0:
            raise SecretError("access token has a malformed use limit", "UNAUTHENTICATED")
        return AccessClaims(
            token_id=str(payload["jti"]),
            cluster=self._cluster,
            namespace=namespace,
            name=name,
            audience=audience,
            subject=str(payload.get("sub", "")),
            issued_at=float(payload["iat"]),
            expires_at=float(payload["exp"]),
            max_uses=max_uses,
        )
