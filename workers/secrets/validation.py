"""What SecretsService checks in a request before anything reaches Temporal or transit."""

from __future__ import annotations

from collections.abc import Mapping

from cloudless.api import secrets_pb2
from cloudless.pki import is_dns_label
from cloudless.secrets.model import SecretRecord
from cloudless.spec import audience_problem, is_dns_subdomain, is_secret_key

#: Values (and key names) per secret. Not Kubernetes' 1 MiB: the sealed record travels to
#: Temporal as one payload, its values base64'd into JSON, sealed, and base64'd again
#: (x16/9), under the 1 MiB bound on one payload (cloudless.contracts.limits); 512 KiB
#: seals to ~910 KiB.
MAX_DATA_BYTES = 512 * 1024
MAX_AUDIENCES = 32


def ref_problems(namespace: str, name: str) -> list[str]:
    problems = []
    if not is_dns_label(namespace):
        problems.append(
            f"namespace {namespace!r} must be a DNS-1123 label (lower-case letters, digits, '-')"
        )
    if not is_dns_subdomain(name):
        problems.append(
            f"name {name!r} must be a DNS-1123 subdomain (dot-separated lower-case labels)"
        )
    return problems


def data_problems(data: Mapping[str, bytes]) -> list[str]:
    if not data:
        return ["data must hold at least one key (e.g. --data PASSWORD=...)"]
    problems = [
        f"data key {key!r} must be 1-253 letters, digits, '-', '_' or '.'"
        for key in data
        if not is_secret_key(key)
    ]
    size = sum(len(k) + len(v) for k, v in data.items())
    if size > MAX_DATA_BYTES:
        problems.append(
            f"data is {size} bytes, over the {MAX_DATA_BYTES}-byte limit; "
            "store large blobs elsewhere and keep their key here"
        )
    return problems


def audience_problems(audiences: list[str]) -> list[str]:
    if not audiences:
        return ["at least one audience is required (who may read it, e.g. --audience backend)"]
    if len(audiences) > MAX_AUDIENCES:
        return [f"at most {MAX_AUDIENCES} audiences, got {len(audiences)}"]
    if len(set(audiences)) != len(audiences):
        return ["audiences must be unique"]
    return [f"audience {p}" for a in audiences if (p := audience_problem(a))]


def metadata(rec: SecretRecord) -> secrets_pb2.SecretMetadata:
    """A record as the API shows it: everything but the ciphertext and wrapped key."""
    return secrets_pb2.SecretMetadata(
        namespace=rec.namespace,
        name=rec.name,
        version=rec.version,
        audiences=rec.audiences,
        immutable=rec.immutable,
        keys=rec.keys,
        created_at=rec.created_at,
        updated_at=rec.updated_at,
        expires_at=rec.expires_at,
        key_version=rec.key_version,
        created_by=rec.created_by,
    )
