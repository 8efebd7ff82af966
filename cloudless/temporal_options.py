"""Command-line options for reaching Temporal (:mod:`cloudless.clientconfig`), declared once
for every process that connects (``cloudlessctl``, the coordinator), so a flag and its help
read the same everywhere.

Every option defaults to None (not given) and declares no ``envvar``: the environment and
a config file's context are applied by :func:`cloudless.clientconfig.resolve`, which needs
to know what the command line itself said (flag > environment > context > default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cloudless import clientconfig as cc
from cloudless import config

__all__ = [
    "TemporalAddress",
    "TemporalApiKeyFile",
    "TemporalNamespace",
    "TemporalTLSCA",
    "TemporalTLSCert",
    "TemporalTLSKey",
    "TemporalTLSOnOff",
    "TemporalTLSServerName",
]

TemporalAddress = Annotated[
    str | None,
    typer.Option(
        help=f"Temporal frontend host:port; env {config.ENV_TEMPORAL_ADDRESS}; default "
        f"{config.DEFAULT_TEMPORAL_ADDRESS}."
    ),
]
TemporalNamespace = Annotated[
    str | None,
    typer.Option(
        help=f"Temporal namespace; env {config.ENV_TEMPORAL_NAMESPACE}; default "
        f"{config.DEFAULT_TEMPORAL_NAMESPACE}."
    ),
]
TemporalTLSOnOff = Annotated[
    bool | None,
    typer.Option(
        "--temporal-tls/--no-temporal-tls",
        help=f"TLS to Temporal, or not; env {cc.ENV_TEMPORAL_TLS}; default on with TLS "
        "material or an API key.",
    ),
]
TemporalTLSCA = Annotated[
    Path | None,
    typer.Option(
        help=f"PEM CA for Temporal's certificate (default: system CAs); env "
        f"{cc.ENV_TEMPORAL_TLS_CA}."
    ),
]
TemporalTLSCert = Annotated[
    Path | None,
    typer.Option(
        help=f"PEM client certificate (mutual TLS, with the key); env {cc.ENV_TEMPORAL_TLS_CERT}."
    ),
]
TemporalTLSKey = Annotated[
    Path | None,
    typer.Option(help=f"PEM client key, mode 0600; env {cc.ENV_TEMPORAL_TLS_KEY}."),
]
TemporalTLSServerName = Annotated[
    str | None,
    typer.Option(
        help=f"Name Temporal's certificate must carry; env {cc.ENV_TEMPORAL_TLS_SERVER_NAME}; "
        "default the address's host."
    ),
]
TemporalApiKeyFile = Annotated[
    Path | None,
    typer.Option(
        help=f"File (mode 0600) with a Temporal Cloud API key; env "
        f"{cc.ENV_TEMPORAL_API_KEY_FILE} (or {cc.ENV_TEMPORAL_API_KEY}: the key)."
    ),
]
