"""People with certificates: issuing a user's bundle, and the context that uses it.

``cloudlessctl user create NAME --role viewer|operator|admin`` runs where the cluster CA
is (the coordinator's state dir, like ``kubeadm kubeconfig user``): it issues a client
certificate whose identity carries the role (``cloudless://<cluster>/<role>/<name>``),
records it in the ledger (``cluster/<name>``, so revocation knows its serial) and writes a
bundle: key, certificate, CA and a ``config.yaml`` with one context for the cluster's
front. The holder points ``cloudlessctl`` at it (``--config``, ``CLOUDLESS_CONFIG``, or
merges the context into their own file).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import yaml

from cloudless.clientconfig import front_context_document
from cloudless.errors import CloudlessError
from cloudless.pki import (
    CertificateAuthority,
    Identity,
    cert_not_after,
    cert_serial,
    write_private_file,
    write_public_file,
)
from cloudless.tls import CA_FILE, CERT_FILE, KEY_FILE
from cloudless.vocabulary import AccessRole

#: A person's certificate lives shorter than a machine's: renewal is a new bundle.
DEFAULT_USER_VALIDITY = timedelta(days=90)
MAX_USER_VALIDITY = timedelta(days=366)
BUNDLE_CONFIG = "config.yaml"


@dataclass(frozen=True)
class IssuedUser:
    name: str
    role: AccessRole
    serial: str
    not_after: datetime
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes


def issue_user(
    ca: CertificateAuthority,
    cluster: str,
    name: str,
    role: AccessRole,
    validity: timedelta = DEFAULT_USER_VALIDITY,
) -> IssuedUser:
    """A key and a client certificate (no server use) for ``name`` with ``role``."""
    if not timedelta(minutes=1) <= validity <= MAX_USER_VALIDITY:
        raise CloudlessError(
            f"a user certificate lives between 1 minute and {MAX_USER_VALIDITY.days} days, "
            f"got {validity}"
        )
    key_pem, cert_pem = ca.issue(
        Identity(cluster=cluster, role=role.value, name=name),
        validity=validity,
        server=False,
        client=True,
    )
    return IssuedUser(
        name, role, cert_serial(cert_pem), cert_not_after(cert_pem), key_pem, cert_pem, ca.cert_pem
    )


def write_bundle(directory: Path, user: IssuedUser, cluster: str, front: str) -> Path:
    """The user's files (key 0600, in a 0700 directory) and a config with one context,
    ``<cluster>-<name>``, for the front at ``front`` (host:port). Refuses to overwrite."""
    if directory.exists() and any(directory.iterdir()):
        raise CloudlessError(f"{directory} exists and is not empty; choose another --out")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    write_private_file(directory / KEY_FILE, user.key_pem, overwrite=False)
    write_public_file(directory / CERT_FILE, user.cert_pem, overwrite=False)
    write_public_file(directory / CA_FILE, user.ca_pem, overwrite=False)
    # Relative paths: resolved against the config file's directory, so the bundle moves.
    document = front_context_document(f"{cluster}-{user.name}", cluster, front, ".")
    path = directory / BUNDLE_CONFIG
    write_private_file(path, yaml.safe_dump(document, sort_keys=False).encode(), overwrite=False)
    return path
