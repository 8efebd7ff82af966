"""Runtime drivers: how an agent turns a replica spec into a container or a process.

``exec`` works on every POSIX device; ``docker`` is offered only when an engine answers,
so an agent advertises exactly the runtimes it can honour.
"""

from __future__ import annotations

from pathlib import Path

from agent.runtime.base import RuntimeDriver
from agent.runtime.docker import DEFAULT_SECRET_SHELL, DockerDriver
from agent.runtime.exec import ExecDriver

__all__ = ["DockerDriver", "ExecDriver", "build_drivers", "detect_drivers"]


async def detect_drivers(
    node_id: str,
    state_dir: Path,
    docker_base_url: str | None = None,
    *,
    secret_shell: Path = DEFAULT_SECRET_SHELL,
) -> dict[str, RuntimeDriver]:
    """The drivers usable on this node, keyed by name.

    ``exec`` is always included; ``docker`` only if its engine answers a ping now (an
    engine that appears later needs an agent restart, which keeps the advertised runtime
    set stable for the scheduler).
    """
    drivers: dict[str, RuntimeDriver] = {"exec": ExecDriver(node_id, Path(state_dir))}
    docker = DockerDriver(node_id, base_url=docker_base_url, secret_shell=secret_shell)
    if await docker.available():
        drivers["docker"] = docker
    else:
        await docker.close()
    return drivers


#: Same as :func:`detect_drivers` (a coroutine: probing the engine is I/O).
build_drivers = detect_drivers
