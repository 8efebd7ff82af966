"""Process configuration shared by the coordinator, agents and the CLI.

Every setting has a flag and an environment variable; defaults describe the embedded
single-machine stack that ``cloudlessctl dev up`` starts.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_TEMPORAL_ADDRESS = "CLOUDLESS_TEMPORAL_ADDRESS"
ENV_TEMPORAL_NAMESPACE = "CLOUDLESS_TEMPORAL_NAMESPACE"
ENV_CLUSTER = "CLOUDLESS_CLUSTER"
ENV_STATE_DIR = "CLOUDLESS_STATE_DIR"
ENV_GATEWAY = "CLOUDLESS_GATEWAY"
ENV_ADMIN_DIR = "CLOUDLESS_ADMIN_DIR"
ENV_SECRETS_ADDRESS = "CLOUDLESS_SECRETS_ADDRESS"

DEFAULT_TEMPORAL_ADDRESS = "127.0.0.1:7233"
DEFAULT_TEMPORAL_NAMESPACE = "default"
DEFAULT_CLUSTER = "dev"
DEFAULT_GATEWAY = "127.0.0.1:7443"  # enrollment (TLS, token-authenticated)
DEFAULT_AGENT_GATEWAY = "127.0.0.1:7444"  # agents' mutual-TLS endpoint (heartbeats)
DEFAULT_UI_LISTEN = "127.0.0.1:8233"  # the front's Temporal UI (HTTPS, behind a login)
DEFAULT_UI = f"https://{DEFAULT_UI_LISTEN}"


def temporal_address() -> str:
    return os.environ.get(ENV_TEMPORAL_ADDRESS, DEFAULT_TEMPORAL_ADDRESS)


def temporal_namespace() -> str:
    return os.environ.get(ENV_TEMPORAL_NAMESPACE, DEFAULT_TEMPORAL_NAMESPACE)


def cluster_name() -> str:
    return os.environ.get(ENV_CLUSTER, DEFAULT_CLUSTER)


def state_dir() -> Path:
    """Root of local state: ``.cloudless/`` in the working directory unless overridden."""
    return Path(os.environ.get(ENV_STATE_DIR, ".cloudless")).resolve()


def coordinator_dir(root: Path) -> Path:
    """Where the coordinator keeps the cluster CA, its certificates and signing key."""
    return root / "coordinator"


def admin_dir(root: Path) -> Path:
    """The local admin's client certificate for the mTLS services (``cloudlessctl``)."""
    return Path(os.environ.get(ENV_ADMIN_DIR) or root / "admin")


def secrets_address() -> str:
    """Where the SecretsService is served: the coordinator's mutual-TLS agent port."""
    return os.environ.get(ENV_SECRETS_ADDRESS, DEFAULT_AGENT_GATEWAY)


def agent_dir(root: Path, node_name: str) -> Path:
    return root / "agents" / node_name
