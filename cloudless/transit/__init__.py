"""Transit: Vault-compatible encryption as a service for Cloudless.

Cloudless code never calls the keyring directly; it talks to a transit server through
``hvac`` (see :func:`cloudless.transit.client.transit_client`), so the embedded
``cloudless-transit`` server (:mod:`cloudless.transit.server`, keyring in
:mod:`cloudless.transit.keyring`) and a real Vault or OpenBao are interchangeable.
Design notes: ``docs/design/transit.md``.
"""

from __future__ import annotations

from cloudless.transit.client import DEFAULT_ADDR, transit_client, transit_mount

__all__ = ["DEFAULT_ADDR", "transit_client", "transit_mount"]
