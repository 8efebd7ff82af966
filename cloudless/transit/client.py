"""How every Cloudless process connects to transit: an ``hvac.Client`` from Vault's env vars.

Only the standard Vault variables are read, so the same configuration works for the
embedded ``cloudless-transit`` and for a real Vault or OpenBao cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import hvac

from cloudless.errors import ConfigError, PKIError
from cloudless.pki import read_private_file

DEFAULT_ADDR = "http://127.0.0.1:8200"
DEFAULT_MOUNT = "transit"
ENV_MOUNT = "CLOUDLESS_TRANSIT_MOUNT"


def transit_client(addr: str | None = None, token: str | None = None) -> hvac.Client:
    """An ``hvac.Client`` for ``addr``/``token``, else ``VAULT_ADDR``/``VAULT_TOKEN``.

    ``VAULT_CACERT`` (a CA bundle) and ``VAULT_SKIP_VERIFY`` are honoured as the Vault CLI
    does. A missing token is an error here rather than a confusing 403 on first use.
    """
    url = addr or os.environ.get("VAULT_ADDR") or DEFAULT_ADDR
    secret = token or os.environ.get("VAULT_TOKEN")
    if not secret:
        raise ConfigError(
            "no transit token: set VAULT_TOKEN (for cloudless-transit, the content of its "
            "root-token file) or pass token="
        )
    verify: bool | str = True
    if os.environ.get("VAULT_CACERT"):
        verify = os.environ["VAULT_CACERT"]
    if os.environ.get("VAULT_SKIP_VERIFY", "").lower() in ("1", "true", "yes"):
        verify = False
    return hvac.Client(url=url, token=secret, verify=verify)


def transit_mount() -> str:
    """The transit mount path (``CLOUDLESS_TRANSIT_MOUNT``, default ``transit``)."""
    return os.environ.get(ENV_MOUNT, DEFAULT_MOUNT).strip("/") or DEFAULT_MOUNT


# ----------------------------------------------------------------------- discovery

#: Layout of the embedded server under the state dir (``cloudless-transit``'s defaults):
#: ``<state>/transit/`` is its data dir, holding ``root-token`` (0600) and ``address``
#: (the URL it listens on, written at start so other local processes can find it).
TRANSIT_SUBDIR = "transit"
ROOT_TOKEN_FILE = "root-token"
ADDRESS_FILE = "address"


@dataclass(frozen=True)
class TransitSettings:
    """Where transit is and how to authenticate; ``source`` says where they came from."""

    addr: str
    token: str = field(repr=False)
    source: str

    def client(self) -> hvac.Client:
        return transit_client(self.addr, self.token)


def transit_settings(state_dir: Path | None = None) -> TransitSettings | None:
    """Transit for this process: ``VAULT_TOKEN`` (+ ``VAULT_ADDR``) first, else the embedded
    server's files under ``state_dir/transit/``; None when neither is there.

    ``VAULT_ADDR`` without ``VAULT_TOKEN`` is an error: silently falling back to another
    transit would encrypt with keys the operator did not mean.
    """
    token = os.environ.get("VAULT_TOKEN")
    if token:
        return TransitSettings(os.environ.get("VAULT_ADDR") or DEFAULT_ADDR, token, "VAULT_TOKEN")
    if os.environ.get("VAULT_ADDR"):
        raise ConfigError("VAULT_ADDR is set but VAULT_TOKEN is not; set both or neither")
    return embedded_transit_settings(state_dir) if state_dir is not None else None


def embedded_transit_settings(state_dir: Path) -> TransitSettings | None:
    """The embedded server under ``state_dir/transit/`` (its root token and the address it
    published at start), whatever the environment says; None if it never ran there."""
    directory = Path(state_dir) / TRANSIT_SUBDIR
    token_path, address_path = directory / ROOT_TOKEN_FILE, directory / ADDRESS_FILE
    if not (token_path.exists() and address_path.exists()):
        return None
    try:
        token = read_private_file(token_path).decode().strip()
        addr = address_path.read_text().strip()
    except (PKIError, OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot use the embedded transit in {directory}: {err}") from err
    if not token or not addr:
        return None
    return TransitSettings(addr, token, str(directory))
