"""The global options of ``cloudlessctl`` (set by the top-level callback, read by commands).

A module of its own so sub-command modules can read them without importing
``cloudless.cli.main``, which runs as ``__main__`` under ``python -m`` (a second import
would see a fresh, default copy).
"""

from __future__ import annotations

from pathlib import Path

from cloudless import config
from cloudless.clientconfig import ClientFlags, ClientSettings


class Settings:
    temporal_address: str = config.DEFAULT_TEMPORAL_ADDRESS
    temporal_namespace: str = config.DEFAULT_TEMPORAL_NAMESPACE
    cluster: str = config.DEFAULT_CLUSTER
    state_dir: Path = Path(".cloudless")
    #: ``--insecure-plaintext-payloads``: talk to Temporal without the payload codec.
    insecure_plaintext_payloads: bool = False
    #: The global options as given (None: not given), for commands that resolve them
    #: themselves (``config``).
    flags: ClientFlags = ClientFlags()
    #: The effective connection settings (flags > environment > context > defaults); None
    #: until the callback resolved them (not for ``config`` commands).
    client: ClientSettings | None = None


settings = Settings()
