"""Runtime drivers: how an agent turns a replica spec into a container or a process.

Every driver implements :class:`~agent.runtime.base.RuntimeDriver` and registers by name
with its capabilities in :mod:`agent.runtime.registry`. ``exec`` works on every POSIX
device; ``docker`` is offered only when an engine answers, so an agent advertises exactly
the runtimes it can honour.
"""

from __future__ import annotations

from pathlib import Path

from agent.runtime.base import RuntimeDriver
from agent.runtime.docker import DEFAULT_SECRET_SHELL, DockerDriver
from agent.runtime.exec import ExecDriver
from agent.runtime.registry import (
    DriverCapabilities,
    DriverContext,
    capabilities,
    register,
    registered,
)
from agent.runtime.registry import detect_drivers as _detect
from cloudless.vocabulary import RuntimeName

__all__ = [
    "DockerDriver",
    "DriverCapabilities",
    "DriverContext",
    "ExecDriver",
    "capabilities",
    "detect_drivers",
    "register",
    "registered",
]

register(
    RuntimeName.EXEC,
    lambda ctx: ExecDriver(ctx.node_id, ctx.state_dir),
    DriverCapabilities(needs_image=False, secret_env_as_file=False),
)
register(
    RuntimeName.DOCKER,
    lambda ctx: DockerDriver(
        ctx.node_id, base_url=ctx.docker_base_url, secret_shell=ctx.secret_shell
    ),
    DriverCapabilities(needs_image=True, secret_env_as_file=True),
)


async def detect_drivers(
    node_id: str,
    state_dir: Path,
    docker_base_url: str | None = None,
    *,
    secret_shell: Path = DEFAULT_SECRET_SHELL,
) -> dict[str, RuntimeDriver]:
    """The registered drivers usable on this node, keyed by name (see the registry)."""
    return await _detect(DriverContext(node_id, Path(state_dir), docker_base_url, secret_shell))
