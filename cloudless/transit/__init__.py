"""The transit *client*: how every Cloudless process reaches a Vault-compatible transit API.

Cloudless talks to transit only through ``hvac`` (see :func:`transit_client`), so the
embedded ``cloudless-transit`` server (the top-level :mod:`transit` package) and a real
Vault or OpenBao are interchangeable. Design notes: ``docs/design/transit.md``.
"""

from __future__ import annotations

from cloudless.transit.client import DEFAULT_ADDR, transit_client, transit_mount

__all__ = ["DEFAULT_ADDR", "transit_client", "transit_mount"]
