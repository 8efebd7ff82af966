"""Runtime drivers register here by name, with what they can do.

Adding a runtime is one module and one :func:`register` call (see
``docs/design/architecture.md``): the agent offers every registered driver whose
``available()`` says yes, and the agent's checks read a driver's :class:`DriverCapabilities`
instead of comparing runtime names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.runtime.base import RuntimeDriver
from cloudless.errors import RuntimeDriverError


@dataclass(frozen=True)
class DriverCapabilities:
    """What a runtime driver does with a replica spec, declared once per driver."""

    #: Replicas run from an image (``container.image`` is required).
    needs_image: bool
    #: Secret env values reach the replica through a tmpfs file its entrypoint loads,
    #: never through the engine's own environment (which an engine may persist).
    secret_env_as_file: bool


@dataclass(frozen=True)
class DriverContext:
    """What a driver factory may use to build its driver on this node."""

    node_id: str
    state_dir: Path
    docker_base_url: str | None
    secret_shell: Path


DriverFactory = Callable[[DriverContext], RuntimeDriver]


@dataclass(frozen=True)
class Registration:
    name: str
    factory: DriverFactory
    capabilities: DriverCapabilities


_REGISTRY: dict[str, Registration] = {}


def register(name: str, factory: DriverFactory, capabilities: DriverCapabilities) -> None:
    """Make a driver available under ``name`` (agents list their drivers in registration order)."""
    if name in _REGISTRY:
        raise ValueError(f"runtime driver {name!r} is registered twice")
    _REGISTRY[name] = Registration(name, factory, capabilities)


def registered() -> tuple[str, ...]:
    """Every registered runtime name, in registration order."""
    return tuple(_REGISTRY)


def capabilities(name: str) -> DriverCapabilities:
    """The capabilities of runtime ``name``; :class:`RuntimeDriverError` if unknown."""
    found = _REGISTRY.get(name)
    if found is None:
        known = ", ".join(_REGISTRY) or "none"
        raise RuntimeDriverError(f"unknown runtime {name!r}; registered runtimes: {known}")
    return found.capabilities


async def detect_drivers(context: DriverContext) -> dict[str, RuntimeDriver]:
    """The registered drivers usable on this node now, keyed by name.

    A driver whose ``available()`` is false is closed and left out (an engine that
    appears later needs an agent restart, which keeps the advertised runtime set stable
    for the scheduler).
    """
    drivers: dict[str, RuntimeDriver] = {}
    for reg in _REGISTRY.values():
        driver = reg.factory(context)
        if await driver.available():
            drivers[reg.name] = driver
        else:
            await driver.close()
    return drivers
