"""How every Cloudless process connects to transit: an ``hvac.Client`` from Vault's env vars.

Only the standard Vault variables are read, so the same configuration works for the
embedded ``cloudless-transit`` and for a real Vault or OpenBao cluster.
"""

from __future__ import annotations

import os

import hvac

from cloudless.errors import ConfigError

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
