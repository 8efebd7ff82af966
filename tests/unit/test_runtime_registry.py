"""The runtime driver registry: one entry per vocabulary runtime, capabilities by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.runtime import capabilities, registered
from agent.runtime.base import RuntimeDriver
from agent.runtime.registry import DriverCapabilities, DriverContext, Registration
from agent.runtime.registry import detect_drivers as detect
from cloudless.errors import RuntimeDriverError
from cloudless.vocabulary import RUNTIMES


def test_every_vocabulary_runtime_has_one_driver() -> None:
    assert sorted(registered()) == sorted(RUNTIMES)


def test_capabilities_are_declared_per_driver() -> None:
    assert capabilities("docker") == DriverCapabilities(needs_image=True, secret_env_as_file=True)
    assert capabilities("exec") == DriverCapabilities(needs_image=False, secret_env_as_file=False)
    with pytest.raises(RuntimeDriverError, match="unknown runtime 'kata'; registered runtimes"):
        capabilities("kata")


class _Fake:
    def __init__(self, name: str, up: bool) -> None:
        self.name, self.up, self.closed = name, up, False

    async def available(self) -> bool:
        return self.up

    async def close(self) -> None:
        self.closed = True


async def test_detect_offers_available_drivers_and_closes_the_rest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    made: dict[str, _Fake] = {}

    def factory(name: str, up: bool) -> Registration:
        def build(_ctx: DriverContext) -> RuntimeDriver:
            made[name] = _Fake(name, up)
            return made[name]  # type: ignore[return-value]  # a partial stand-in

        return Registration(name, build, DriverCapabilities(False, False))

    monkeypatch.setattr(
        "agent.runtime.registry._REGISTRY",
        {"up": factory("up", True), "down": factory("down", False)},
    )
    found = await detect(DriverContext("n1", tmp_path, None, tmp_path / "busybox"))
    assert list(found) == ["up"]
    assert made["down"].closed and not made["up"].closed
