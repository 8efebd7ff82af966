"""Who a certificate speaks for: a cluster, a role and a name, carried as the certificate's
single URI SAN ``cloudless://<cluster>/<role>/<name>``, so authorization never depends on
parsing free-form subject names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, TypeAlias, get_args

from cloudless.errors import PKIError

#: Machines (``node``, ``coordinator``) and people (:class:`cloudless.vocabulary.AccessRole`).
Role: TypeAlias = Literal["node", "coordinator", "viewer", "operator", "admin"]
_ROLES: frozenset[str] = frozenset(get_args(Role))

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_IDENTITY_URI = re.compile(r"cloudless://([^/]*)/([^/]*)/([^/]*)")


def is_dns_label(value: object) -> bool:
    """True if ``value`` is a DNS-1123 label (lowercase alnum and '-', 1-63 chars)."""
    return isinstance(value, str) and _DNS_LABEL.fullmatch(value) is not None


@dataclass(frozen=True)
class Identity:
    """Who a certificate speaks for; encoded as the certificate's single Cloudless URI SAN."""

    cluster: str
    role: Role
    name: str

    def __post_init__(self) -> None:
        if not is_dns_label(self.cluster):
            raise PKIError(
                f"cluster name {self.cluster!r} is not a DNS-1123 label "
                "(lowercase letters, digits and '-', at most 63 characters)"
            )
        if self.role not in _ROLES:
            raise PKIError(f"role {self.role!r} is not one of {', '.join(sorted(_ROLES))}")
        if not is_dns_label(self.name):
            raise PKIError(
                f"{self.role} name {self.name!r} is not a DNS-1123 label "
                "(lowercase letters, digits and '-', at most 63 characters)"
            )

    def uri(self) -> str:
        """The URI SAN value, ``cloudless://<cluster>/<role>/<name>``."""
        return f"cloudless://{self.cluster}/{self.role}/{self.name}"

    @classmethod
    def from_uri(cls, uri: str) -> Identity:
        """Parse a URI SAN; strict, so lookalike URIs cannot smuggle in another identity."""
        match = _IDENTITY_URI.fullmatch(uri) if isinstance(uri, str) else None
        if match is None:
            raise PKIError(
                f"malformed identity URI {uri!r}; expected cloudless://<cluster>/<role>/<name>"
            )
        cluster, role, name = match.groups()
        if role not in _ROLES:
            raise PKIError(f"identity URI {uri!r} has unknown role {role!r}")
        return cls(cluster=cluster, role=role, name=name)  # type: ignore[arg-type]
