"""``cloudlessctl`` run in-process against a :class:`LocalCluster`, for tests.

Typer's :class:`~typer.testing.CliRunner` runs the real command (no interpreter start) and
captures its output and exit code. The CLI runs its own event loop, so async tests call
:func:`ctl`, which runs it in a thread; :func:`run_ctl` is the same, synchronous.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence

from typer.testing import CliRunner, Result

from cloudless.cli.main import app
from cloudless.clientconfig import ENV_CONFIG
from cloudless.testing.cluster import LocalCluster

#: The terminal width the CLI sees: wide, so tables and error panels do not wrap.
COLUMNS = "250"


def ctl_args(cluster: LocalCluster) -> list[str]:
    """The global options that point ``cloudlessctl`` at ``cluster``: its Temporal frontend,
    its cluster name and its state dir (which locates transit, hence the payload codec)."""
    return [
        "--temporal-address", cluster.client.service_client.config.target_host,
        "--cluster", cluster.cluster,
        "--state-dir", str(cluster.root),
    ]  # fmt: skip


def invoke_ctl(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Result:
    """``cloudlessctl *argv`` in-process, global options included (for a stack that is not a
    :class:`LocalCluster`); ``env`` is set on top of the wide ``COLUMNS``.

    No operator config file applies (``CLOUDLESS_CONFIG`` is an empty file unless ``env``
    or ``--config`` names one): a ``~/.cloudless/config.yaml`` on the machine running the
    tests must not send them to its current context."""
    base = {"COLUMNS": COLUMNS, ENV_CONFIG: os.devnull}
    return CliRunner().invoke(app, list(argv), env={**base, **(env or {})})


def run_ctl(cluster: LocalCluster, *args: str, env: Mapping[str, str] | None = None) -> Result:
    """``cloudlessctl *args`` against ``cluster``, in-process (blocks: not on an event loop)."""
    return invoke_ctl([*ctl_args(cluster), *args], env)


async def ctl(cluster: LocalCluster, *args: str, env: Mapping[str, str] | None = None) -> Result:
    """:func:`run_ctl` in a thread."""
    return await asyncio.to_thread(run_ctl, cluster, *args, env=env)
